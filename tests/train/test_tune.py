"""Tune search on a tiny synthetic store: trials table, TensorBoard files, best config into the train job,
resume after a kill (a pooled model's search), no read of an outer test speaker (the reader logs what it is asked
for), and a pooled model's trials scored on the pooled path as on the frame path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ray_ser.train.config import TrainConfig
from ray_ser.train.plan import resolve_assignment
from ray_ser.train.reader import READ_LOG_ENV
from ray_ser.store import Store

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ["trial_id", "layer", "keep_ratio", "n_clusters", "adv_weight", "lr", "pooling", "target", "val_uar",
            "epochs", "status", "seconds"]


def tune_args(store: str, out: Path, *extra: str, samples: int = 2) -> list[str]:
    return [sys.executable, str(ROOT / "jobs" / "tune.py"), "--store", store, "--model", "tiny", "--out", str(out),
            "--num-samples", str(samples), "--max-epochs", "2", "--grace-period", "1", "--held-out-folds", "0,1",
            "--search-folds", "2",
            "--batch-size", "8", "--seed", "3", *extra]


def run_job(args: list[str], env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def test_search_writes_trials_tensorboard_and_a_config_the_train_job_takes(synth_store, tmp_path):
    out = tmp_path / "search"
    log = tmp_path / "reads.txt"
    env = {**os.environ, READ_LOG_ENV: str(log), "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    # one search fold a trial (the mean over two is checked by the pooled search's tests below); two trials, at once
    run_job(tune_args(synth_store, out, "--search-folds", "1"), env)
    trials = pl.read_parquet(out / "trials.parquet")
    assert trials.height == 2 and set(CONTRACT) <= set(trials.columns)
    assert trials["val_uar"].null_count() == 0 and trials["status"].to_list() == ["TERMINATED"] * 2
    assert set(trials["layer"].to_list()) <= {0, 1, 2}
    assert trials["val_uar"].to_list() == sorted(trials["val_uar"].to_list(), reverse=True)
    events = list((out / "search").rglob("events.out.tfevents.*"))
    assert len(events) >= 2  # one per trial
    # the search never read a speaker of the held-out folds, on which the chosen config is then scored
    a = resolve_assignment(TrainConfig(store=synth_store, model="tiny"), Store(synth_store))
    read = set(log.read_text().split())
    assert read and not read & set(a.test_utts(0) + a.test_utts(1))
    search = json.loads((out / "search.json").read_text())
    assert search["held_out_folds"] == [0, 1] and len(search["search_folds"]) == 1
    # the layer prior (pool speakers only) orders every layer; the first trial starts at its best layer with
    # the base configuration's other values
    prior = search["layer_prior"]
    assert sorted(prior["layer_order"]) == [0, 1, 2] and prior["layers_searched"] == prior["layer_order"][:3]
    base = TrainConfig(store=synth_store, model="tiny")
    first = trials.filter((pl.col("layer") == prior["layer_order"][0]) & (pl.col("keep_ratio") == 1.0)
                          & (pl.col("adv_weight") == 0.0) & pl.col("n_clusters").is_null()
                          & (pl.col("pooling") == base.pooling) & (pl.col("lr") - base.lr).abs().lt(1e-12))
    assert first.height == 1
    # best_config.json is a TrainConfig the train job takes as is
    best = json.loads((out / "best_config.json").read_text())
    cfg = TrainConfig(**best)
    top = trials.row(0, named=True)
    assert (cfg.layer, cfg.keep_ratio, cfg.pooling, cfg.target) == (top["layer"], top["keep_ratio"], top["pooling"], top["target"])
    assert cfg.n_clusters == (top["n_clusters"] or 0)
    train = run_job([sys.executable, str(ROOT / "jobs" / "train.py"), "--config", str(out / "best_config.json"),
                     "--out", str(tmp_path / "train"), "--folds", "1", "--epochs", "1", "--cpus-per-worker", "0.5"], env)
    assert "fold 1 test UAR" in train.stdout
    saved = json.loads(next((tmp_path / "train").glob("fold_1/best/config.json")).read_text())["train"]
    flags = ("epochs", "cpus_per_worker", "outer_folds")  # the flags given on top of --config win
    assert {k: v for k, v in saved.items() if k not in flags} == {k: v for k, v in cfg.model_dump().items() if k not in flags}
    assert (saved["epochs"], saved["cpus_per_worker"], saved["outer_folds"]) == (1, 0.5, "1")


def test_killed_search_resumes_with_all_trials(synth_store, tmp_path):
    """A linear model's search (the pooled path: mean frames read once per search, trials fitted in memory)."""
    out = tmp_path / "search"
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    # 20 epochs a trial (the first one runs them all: nothing to stop it against), so the kill at a trial's second
    # epoch lands mid-search however fast a pooled epoch is
    args = tune_args(synth_store, out, "--max-concurrent", "1", "--arch", "mlp", "--max-epochs", "20", samples=4)
    proc = subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600

    def finished() -> int:
        n = 0
        for result in (out / "search").glob("*/result.json"):
            lines = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
            n += any(r.get("done") or r.get("training_iteration", 0) >= 2 for r in lines)
        return n

    while time.time() < deadline and finished() < 1 and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert finished() >= 1 and not (out / "trials.parquet").exists()
    run_job(args + ["--resume"], env)
    trials = pl.read_parquet(out / "trials.parquet")
    assert trials.height == 4 and trials["val_uar"].null_count() == 0
    assert len(list((out / "search").rglob("events.out.tfevents.*"))) >= 4
    assert len(list((out / "search").rglob("trial_state.pt"))) == 4  # each trial's last checkpoint


def trial_pids(search: Path) -> list[int]:
    """The process id each trial of a search ran in (Tune fills ``pid`` into every result)."""
    return [json.loads(r.read_text().splitlines()[0])["pid"] for r in sorted(search.glob("trial_*/result.json"))]


@pytest.mark.usefixtures("local_ray")
def test_a_pooled_search_scores_its_trials_as_the_frame_path_does(synth_store, tmp_path, caplog):
    """Same seed and configs: a linear model's trials give the same inner-validation UAR, epoch by epoch, on the
    pooled path (mean frames read once per search) as on the frame path (a dataset and shard cache per trial), and
    a trial run in a reused actor (the one before it ran in that process) as in a fresh one."""
    from ray_ser.train.tune import SearchOptions, run_search

    base = TrainConfig(store=synth_store, model="tiny", arch="mlp", mlp_hidden=0, spec_augment=False, batch_size=8,
                       seed=3)
    trials, pids = {}, {}
    caplog.set_level("INFO", logger="ray_ser.train.tune")
    for pooled, reuse in ((True, True), (True, False), (False, True)):
        opts = SearchOptions(base.model_copy(update={"pooled": pooled}), num_samples=2, max_epochs=2,
                             grace_period=2, seed=3, held_out_folds=[0, 1], search_folds=2, layers=[1, 2],
                             max_concurrent=1, reuse_actors=reuse)
        out = tmp_path / f"{pooled}_{reuse}"
        trials[pooled, reuse] = run_search(opts, Store(opts.base.store), out).sort("lr")
        pids[pooled, reuse] = trial_pids(out / "search")
    assert sum("read once" in r.getMessage() for r in caplog.records) == 2  # the pooled searches only
    # one process ran both trials of a reusing search; a fresh search started one per trial
    assert len(pids[True, True]) == 2 and len(set(pids[True, True])) == 1 and len(set(pids[True, False])) == 2
    params = ["layer", "keep_ratio", "lr", "pooling", "target"]
    ref = trials[True, True]
    assert ref.height == 2
    for other in ((True, False), (False, True)):
        assert ref.select(params).equals(trials[other].select(params))
        for col in ("val_uar", "val_uar_last", "best_epoch"):
            np.testing.assert_allclose(ref[col].to_numpy(), trials[other][col].to_numpy(), atol=1e-6)


def test_a_trials_searched_layer_replaces_the_base_layer_list():
    from ray_ser.train.tune import trial_config

    base = TrainConfig(store="s", layers=[2, 3, 4], arch="mlp", n_clusters=0).model_dump()
    cfg = trial_config(base, {"layer": 1, "keep_ratio": 0.8, "n_clusters": 50})
    assert (cfg.layer, cfg.layers, cfg.keep_ratio, cfg.n_clusters) == (1, [], 0.8, 0)  # an MLP takes no cluster head
    assert trial_config(base, {"keep_ratio": 0.8}).layers == [2, 3, 4]


def test_the_layer_mix_is_a_choice_beside_the_searched_layer():
    from ray import tune

    from ray_ser.train.tune import SearchOptions, first_point, search_space, trial_config

    space = search_space([3, 5], "search")
    assert isinstance(space["layer_mix"], tune.search.sample.Categorical)
    assert space["layer_mix"].categories == ["none", "learned"] and "layer_mix" not in search_space([3, 5])
    assert first_point(SearchOptions(TrainConfig(store="s"), layer_mix="search"), 3)["layer_mix"] == "none"
    base = TrainConfig(store="s", arch="tcgru").model_dump()
    mixed = trial_config(base, {"layer": 3, "layer_mix": "learned", "keep_ratio": 0.6, "n_clusters": 50})
    # a learned trial mixes every stored layer, whole (no mask); its cluster head predicts one layer's ids
    assert (mixed.layer_mix, mixed.layer, mixed.layers, mixed.keep_ratio, mixed.n_clusters) == ("learned", None, "all",
                                                                                                1.0, 50)
    single = trial_config(base, {"layer": 3, "layer_mix": "none", "keep_ratio": 0.6, "n_clusters": 50})
    assert (single.layer_mix, single.layer, single.layers, single.keep_ratio, single.n_clusters) == ("none", 3, [],
                                                                                                    0.6, 50)
    fixed = TrainConfig(store="s", layer_mix="learned").model_dump()  # --layer-mix learned: every trial mixes
    assert trial_config(fixed, {"layer": 3, "layer_mix": None}).layers == "all"
