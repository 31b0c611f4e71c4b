"""Training on the store: the reader never yields a test speaker, fold-level mask/centroids/inner split ignore
the test fold, a 2-worker Ray Train run learns and writes a loadable checkpoint, and a killed run resumes.

Runs on a synthetic corpus (tests/synthetic.py) and the tiny random-init HuBERT, so it needs no ../shared."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from ray_ser.analysis import saliency_store as ss
from ray_ser.analysis.clusters import ensure_centroids
from ray_ser.store.core import Store
from ray_ser.train.checkpoints import fold_checkpoints, load_fold_model
from ray_ser.train.config import TrainConfig
from ray_ser.train.driver import run
from ray_ser.train.plan import planned_fold, resolve_assignment

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("local_ray")  # Ray Data reads and Ray Train fits in this process


def small_cfg(uri: str, **kw) -> TrainConfig:
    base = dict(store=uri, model="tiny", layer=1, epochs=2, batch_size=8, cpus_per_worker=0.5, patience=5,
                conv_channels=32, gru_hidden=32, embed_dim=16)
    return TrainConfig(**{**base, **kw})


def test_reader_yields_no_test_speaker_and_joins_labels(synth_store):
    from ray_ser.train.reader import frames_dataset

    cfg = small_cfg(synth_store, keep_ratio=0.6, n_clusters=4)
    a = resolve_assignment(cfg, Store(cfg.store))
    assert a.description.startswith("loso") and len(a.fold_ids) == 6
    plan, labels, centroids = planned_fold(cfg, Store(cfg.store), a, 2)
    test_spk = set(a.speakers_of(2))
    speaker = dict(zip(a.utt_ids, a.speakers))
    assert not {speaker[u] for u in plan.inner + plan.val} & test_spk
    assert not {speaker[u] for u in plan.inner} & {speaker[u] for u in plan.val}
    assert plan.input_dim == 19 and len(plan.keep) == 19  # 0.6 of 32 dims
    mask = np.zeros(32, bool)
    mask[plan.keep] = True
    ds = frames_dataset(Store(synth_store), "tiny", 1, plan.inner, labels, conditions=["clean", "5dB"], mask=mask,
                        centroids=centroids)
    rows = ds.take_all()
    assert len(rows) == 2 * len(plan.inner)
    assert {speaker[r["utt_id"]] for r in rows}.isdisjoint(test_spk)
    first = rows[0]
    assert first["x"].shape == (first["n_frames"], 19) and first["x"].dtype == np.float16
    assert first["frame_ids"].shape == (first["n_frames"],) and 0 <= first["frame_ids"].min() and first["frame_ids"].max() < 4
    cat = labels.rows[first["utt_id"]]["label"]
    assert labels.categories[first["label_index"]] == cat and first["pdf"][first["label_index"]] == pytest.approx(0.8)


def _scramble(uri: str, utts: list[str]) -> None:
    """Replace the vectors and frames of ``utts`` by noise and shuffle their labels, in place."""
    store = Store(uri)
    table = store.embeddings("tiny")
    where = "utt_id IN (" + ", ".join(f"'{u}'" for u in utts) + ")"
    rows = table.to_lance().to_table(filter=where)
    rng = np.random.default_rng(5)
    noise = pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(rows.num_rows * 32).astype(np.float32) * 9), 32)
    frames = rows.column("frames").combine_chunks()
    inner = frames.flatten()
    fnoise = pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(len(inner) * 32).astype(np.float16) * 9), 32)
    rows = rows.set_column(rows.column_names.index("mean"), "mean", noise)
    rows = rows.set_column(rows.column_names.index("frames"), "frames", pa.ListArray.from_arrays(frames.offsets, fnoise))
    table.delete(where)
    table.add(rows.cast(table.schema))
    m = store.open("manifest__synth")
    t = m.to_arrow()
    labels = t.column("label").to_pylist()
    idx = [i for i, u in enumerate(t.column("utt_id").to_pylist()) if u in set(utts)]
    shuffled = [labels[i] for i in rng.permutation(idx)]
    for i, lab in zip(idx, shuffled):
        labels[i] = lab
    m.merge_insert("utt_id").when_matched_update_all().execute(t.set_column(t.column_names.index("label"), "label",
                                                                          pa.array(labels, pa.string())))


def test_fold_mask_centroids_and_split_ignore_the_test_fold(synth_store, tmp_path):
    cfg = small_cfg(synth_store, keep_ratio=0.6)
    a = resolve_assignment(cfg, Store(cfg.store))
    before = planned_fold(cfg, Store(cfg.store), a, 3)[0]
    cents = ensure_centroids(synth_store, "tiny", 1, 4, a, 3)
    copy = str(tmp_path / "store")
    shutil.copytree(synth_store, copy)
    _scramble(copy, a.test_utts(3))
    df = ss.compute_saliency(copy, "tiny", "clean", folds="auto", mis=False, info=(info := {}))
    assert info["assignment"].id == a.id  # LOSO folds depend on speakers only
    ss.write_saliency(copy, df, ss.layer_ranking(df), info["assignment"])
    shutil.rmtree(Path(copy) / "centroids__tiny.lance", ignore_errors=True)
    shutil.rmtree(Path(copy) / "fold_plans__tiny.lance", ignore_errors=True)  # rebuilt from the scrambled copy
    after = planned_fold(small_cfg(copy, keep_ratio=0.6), Store(copy), a, 3)[0]
    assert (after.inner, after.val, after.keep) == (before.inner, before.val, before.keep)
    np.testing.assert_array_equal(ensure_centroids(copy, "tiny", 1, 4, a, 3), cents)
    # ...while fold 0's mask, which saw fold 3's speakers, moves
    ccs0 = [ss.read_saliency(u, "tiny", fold=0, layer=1, fold_id=a.id)["ccs"].to_numpy() for u in (synth_store, copy)]
    assert not np.allclose(*ccs0)


def test_two_worker_run_learns_and_writes_a_loadable_checkpoint(synth_store, tmp_path):
    import torch

    from ray_ser.train.reader import collate, frames_dataset, load_labels

    out = tmp_path / "run"
    cfg = small_cfg(synth_store, epochs=6, num_workers=2, lr=3e-3, adv_weight=0.01, pooling="attention")
    summaries = run(cfg, Store(cfg.store), "0", out)
    assert [s["fold"] for s in summaries] == [0]
    epochs = pl.read_parquet(out / "epochs.parquet")
    assert epochs.columns == ["fold", "epoch", "split", "metric", "value"]
    loss = epochs.filter((pl.col("split") == "train") & (pl.col("metric") == "loss")).sort("epoch")["value"].to_list()
    assert len(loss) == 6 and min(loss[-2:]) < loss[0]
    assert {"loss", "uar"} <= set(epochs.filter(pl.col("split") == "val")["metric"].to_list())
    assert any((out / "tensorboard" / "fold_0").glob("events.out.tfevents.*"))
    path = fold_checkpoints(out)[0]
    fm = load_fold_model(path)
    assert fm.plan.fold == 0 and fm.plan.layer == 1 and fm.plan.n_domains == 4
    assert fm.plan.fold_id == resolve_assignment(cfg, Store(cfg.store)).id
    labels = load_labels(synth_store, fm.plan.test)
    batch = frames_dataset(Store(synth_store), "tiny", 1, fm.plan.test, labels).take_batch(64, batch_format="numpy")
    x = collate(batch)
    with torch.no_grad():
        probs = torch.softmax(fm.module(x["x"], x["lengths"])["logits"], -1)
    assert probs.shape == (len(fm.plan.test), 3) and torch.allclose(probs.sum(-1), torch.ones(len(fm.plan.test)))
    again = run(cfg, Store(cfg.store), "0", out)  # finished folds are not retrained
    assert again[0].get("skipped") is True


def test_killed_run_resumes_from_its_last_checkpoint(synth_store, tmp_path):
    """The train job killed (its process group, Ray with it) at Ray Train's first recorded checkpoint, then run
    again (here, in this process's Ray): every epoch once."""
    from ray_ser.jobs import train as job

    out = tmp_path / "run"
    # a checkpoint every epoch, so the kill lands mid-run; small_cfg's model widths (the job's defaults are 8x wider)
    every_epoch = tmp_path / "every_epoch.json"
    every_epoch.write_text(json.dumps({"checkpoint_every_s": 0, "conv_channels": 32, "gru_hidden": 32, "embed_dim": 16}))
    flags = ["--store", synth_store, "--model", "tiny", "--out", str(out), "--folds", "1", "--layer", "1", "--epochs",
             "4", "--patience", "50", "--batch-size", "8", "--cpus-per-worker", "0.5", "--no-test-report", "--config",
             str(every_epoch)]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "train.py"), *flags], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    while time.time() < deadline and not registered_checkpoints(out) and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # at the first checkpoint Ray Train recorded: the kill lands mid-run
    proc.wait()
    assert registered_checkpoints(out), "no epoch checkpoint before the kill"
    assert not fold_checkpoints(out), "the run finished before the kill"
    assert [s["fold"] for s in job.main(flags)] == [1]
    info = json.loads((fold_checkpoints(out)[1] / "config.json").read_text())
    assert info["epochs_run"] == 4
    epochs = pl.read_parquet(out / "epochs.parquet").filter((pl.col("split") == "train") & (pl.col("metric") == "loss"))
    assert sorted(epochs["epoch"].to_list()) == list(range(4))  # every epoch once: resumed, not restarted or repeated


def registered_checkpoints(out: Path) -> list:
    """The checkpoints Ray Train's snapshot of fold 1's run records (written, whole, once a checkpoint is
    registered: what a resumed run starts from); none while it is absent or being written."""
    for snap in (out / "ray_train").glob("fold_1-*/checkpoint_manager_snapshot.json"):
        try:
            return json.loads(snap.read_text()).get("checkpoint_results") or []
        except (OSError, ValueError):
            return []
    return []


def test_several_layers_are_read_side_by_side(synth_store):
    from ray_ser.train.reader import frame_stats, frames_dataset

    cfg = small_cfg(synth_store, layers=[1, 2], keep_ratio=0.6, arch="mlp", mlp_hidden=0)
    a = resolve_assignment(cfg, Store(cfg.store))
    plan, labels, _ = planned_fold(cfg, Store(cfg.store), a, 2)
    assert plan.read_layers == [1, 2] and plan.input_dim == 2 * 19 and len(plan.norm_mean) == 38
    one = {l: ss.saliency_mask(synth_store, "tiny", l, 0.6, fold=2, fold_id=a.id) for l in (1, 2)}
    assert plan.keep == np.flatnonzero(one[1]).tolist() + (np.flatnonzero(one[2]) + 32).tolist()
    utts = plan.val
    both = {(r["utt_id"], r["condition"]): r for r in
            frames_dataset(Store(synth_store), "tiny", [1, 2], utts, labels, conditions=["clean", "5dB"]).take_all()}
    assert len(both) == 2 * len(utts)
    for layer, lo in ((1, 0), (2, 32)):
        for r in frames_dataset(Store(synth_store), "tiny", layer, utts, labels, conditions=["clean", "5dB"]).take_all():
            got = both[(r["utt_id"], r["condition"])]
            np.testing.assert_array_equal(got["x"][:, lo:lo + 32], r["x"])
            assert got["label_index"] == r["label_index"] and got["n_frames"] == r["n_frames"]
    mean, std = frame_stats(synth_store, "tiny", [1, 2], plan.inner)
    for layer, lo in ((1, 0), (2, 32)):
        m1, s1 = frame_stats(synth_store, "tiny", layer, plan.inner)
        np.testing.assert_array_equal(mean[lo:lo + 32], m1)
        np.testing.assert_array_equal(std[lo:lo + 32], s1)
    with pytest.raises(ValueError, match="one layer's k-means"):
        planned_fold(small_cfg(synth_store, layers=[1, 2], n_clusters=4), Store(synth_store), a, 2)
    # no layer named: the fold's K best layers on its training speakers, in layer order
    from ray_ser.analysis.layer_selection import ranked_layers

    auto = planned_fold(small_cfg(synth_store, layer=None, auto_layers=2), Store(synth_store), a, 2)[0]
    assert auto.read_layers == sorted(ranked_layers(synth_store, "tiny", a, [2], k=2)[0][2]) and auto.input_dim == 64


def test_refit_trains_on_every_training_speaker_for_the_selected_epochs(synth_store, tmp_path):
    from ray_ser.evaluate.predict import predict_fold

    out = tmp_path / "run"
    cfg = small_cfg(synth_store, layer=None, layers=[1, 2], arch="mlp", mlp_hidden=0, epochs=5, patience=2,
                    lr=3e-3, refit=True, spec_augment=False)
    summary = run(cfg, Store(cfg.store), "0", out)[0]
    info = json.loads((fold_checkpoints(out)[0] / "config.json").read_text())
    assert info["refit_epochs"] == info["best_epoch"] + 1 == summary["refit_epochs"]
    assert info["epochs_run"] == summary["epochs"] >= info["best_epoch"] + 1
    epochs = pl.read_parquet(out / "epochs.parquet")
    refit = epochs.filter((pl.col("split") == "refit") & (pl.col("metric") == "loss"))
    assert sorted(refit["epoch"].to_list()) == list(range(info["refit_epochs"]))
    assert epochs.filter(pl.col("split") == "train")["epoch"].max() == info["epochs_run"] - 1
    fm = load_fold_model(fold_checkpoints(out)[0])
    assert fm.plan.read_layers == [1, 2] and fm.plan.layers == [1, 2]
    pred = predict_fold(Store(synth_store), fold_checkpoints(out)[0])
    assert set(pred["utt_id"].to_list()) == set(fm.plan.test)


def test_refit_resumes_in_its_own_phase(synth_store):
    from ray_ser.train.loop import fit_fold
    from ray_ser.train.plan import fold_datasets

    cfg = small_cfg(synth_store, arch="mlp", mlp_hidden=0, epochs=4, patience=10, refit=True, spec_augment=False)
    plan, labels, centroids = planned_fold(cfg, Store(cfg.store), resolve_assignment(cfg, Store(cfg.store)), 0)
    data = fold_datasets(cfg, Store(cfg.store), plan, labels, centroids)
    states: list[dict] = []

    class Killed(Exception):
        pass

    def report_then_die(metrics, state):
        states.append(state)
        if state["phase"] == "refit":
            raise Killed  # the first refit epoch is checkpointed, then the worker dies

    with pytest.raises(Killed):
        fit_fold(cfg, plan, data["train"], data["val"], report_then_die, refit_source=data["refit"])
    assert [s["phase"] for s in states] == ["select"] * 4 + ["refit"]
    last = states[-1]
    final = fit_fold(cfg, plan, data["train"], data["val"], lambda m, s: states.append(s), refit_source=data["refit"],
                     state=last)
    selected = last["selected"]
    assert final["refit_epochs"] == selected["best_epoch"] + 1 and final["best_epoch"] == selected["best_epoch"]
    refit_epochs = [r["epoch"] for r in final["history"] if r["split"] == "refit" and r["metric"] == "loss"]
    assert refit_epochs == list(range(selected["best_epoch"] + 1))  # resumed after epoch 0, nothing repeated
    assert len([r for r in final["history"] if r["split"] == "train" and r["metric"] == "loss"]) == 4


def test_fold_datasets_are_lazy_plans_that_read_exactly_their_fold(synth_store):
    """No fold is materialised on the driver or in the object store (at MSP-Podcast's size a fold's frames are
    tens of GB): each split is a plan the training workers stream, and it reads its speakers' rows and nothing else."""
    from ray.data.dataset import MaterializedDataset

    from ray_ser.train.plan import fold_datasets

    cfg = small_cfg(synth_store, arch="mlp", mlp_hidden=0, refit=True, conditions=["clean", "5dB"])
    plan, labels, centroids = planned_fold(cfg, Store(cfg.store), resolve_assignment(cfg, Store(cfg.store)), 1)
    data = fold_datasets(cfg, Store(cfg.store), plan, labels, centroids)
    assert set(data) == {"train", "val", "refit"}
    assert not any(isinstance(ds, MaterializedDataset) for ds in data.values())
    keys = lambda ds: sorted((r["utt_id"], r["condition"]) for r in ds.select_columns(["utt_id", "condition"]).iter_rows())  # noqa: E731
    assert keys(data["train"]) == sorted((u, c) for u in plan.inner for c in ("clean", "5dB"))
    assert keys(data["val"]) == sorted((u, "clean") for u in plan.val)
    assert keys(data["refit"]) == sorted((u, c) for u in [*plan.inner, *plan.val] for c in ("clean", "5dB"))


def test_train_job_flags_override_the_config_file(tmp_path):
    from ray_ser.jobs import train as job

    cfg_file = tmp_path / "best_config.json"
    cfg_file.write_text(json.dumps({"layers": [2, 3], "mlp_hidden": 0, "refit": True}))
    parse = lambda *a: job.build_config(["--out", "x", "--config", str(cfg_file), *a])[0].train  # noqa: E731
    assert parse().layers == [2, 3] and parse().refit is True
    one = parse("--layer", "1", "--no-refit")
    assert (one.layer, one.layers, one.refit, one.mlp_hidden) == (1, [], False, 0)
    assert parse("--layers", "1,4", "--auto-layers", "2").layers == [1, 4]


def test_inner_folds_choose_the_epoch_count_on_the_mean_validation_curve(synth_store, tmp_path):
    from ray_ser.evaluate.predict import predict_fold

    out = tmp_path / "run"
    cfg = small_cfg(synth_store, arch="mlp", mlp_hidden=0, epochs=4, lr=3e-3, spec_augment=False, inner_folds=3)
    assert cfg.refit  # cross-validation only chooses an epoch count: the refit uses it
    plan = planned_fold(cfg, Store(cfg.store), resolve_assignment(cfg, Store(cfg.store)), 0)[0]
    pool = [*plan.inner, *plan.val]
    assert len(plan.cv_val) == 3 and sorted(u for part in plan.cv_val for u in part) == sorted(pool)
    summary = run(cfg, Store(cfg.store), "0", out)[0]
    epochs = pl.read_parquet(out / "epochs.parquet")
    uar = epochs.filter(pl.col("metric") == "uar")
    per_fold = uar.filter(pl.col("split").str.starts_with("val_r"))
    assert sorted(per_fold["split"].unique().to_list()) == ["val_r0", "val_r1", "val_r2"]
    assert per_fold.group_by("split").len()["len"].to_list() == [4, 4, 4]  # every inner fold runs every epoch
    mean = per_fold.group_by("epoch").agg(pl.col("value").mean()).sort("epoch")["value"].to_numpy()
    val = uar.filter(pl.col("split") == "val").sort("epoch")["value"].to_numpy()
    np.testing.assert_allclose(val, mean)
    info = json.loads((fold_checkpoints(out)[0] / "config.json").read_text())
    assert info["best_epoch"] == summary["best_epoch"] == int(np.argmax(mean))
    assert info["refit_epochs"] == info["best_epoch"] + 1 and info["best_val_score"] == pytest.approx(mean.max())
    refit = epochs.filter((pl.col("split") == "refit") & (pl.col("metric") == "loss"))
    assert refit["epoch"].to_list() == list(range(info["refit_epochs"]))
    pred = predict_fold(Store(synth_store), fold_checkpoints(out)[0])
    assert set(pred["utt_id"].to_list()) == set(plan.test)


def test_inner_folds_are_speaker_disjoint_and_resume_inside_an_inner_fold(synth_store):
    from ray_ser.train.loop import fit_fold
    from ray_ser.train.plan import fold_datasets
    from ray_ser.train.reader import load_labels

    cfg = small_cfg(synth_store, arch="mlp", mlp_hidden=0, epochs=3, lr=3e-3, spec_augment=False, inner_folds=2)
    plan, labels, centroids = planned_fold(cfg, Store(cfg.store), resolve_assignment(cfg, Store(cfg.store)), 1)
    rows = load_labels(synth_store, [u for part in plan.cv_val for u in part]).rows
    spk = [{rows[u]["speaker"] for u in part} for part in plan.cv_val]
    assert not spk[0] & spk[1] and not set(plan.test) & {u for part in plan.cv_val for u in part}
    data = fold_datasets(cfg, Store(cfg.store), plan, labels, centroids)
    assert set(data) == {"pool", "refit"}
    states: list[dict] = []

    class Killed(Exception):
        pass

    def report_then_die(metrics, state):
        states.append(state)
        if state["phase"] == "cv" and state["cv"]["round"] == 1 and state["epoch"] == 2:
            raise Killed  # two epochs of the second inner fold are checkpointed, then the worker dies

    with pytest.raises(Killed):
        fit_fold(cfg, plan, None, None, report_then_die, refit_source=data["refit"], pool_source=data["pool"])
    assert [(s["phase"], s["cv"]["round"], s["epoch"]) for s in states] == [
        ("cv", 0, 1), ("cv", 0, 2), ("cv", 0, 3), ("cv", 1, 1), ("cv", 1, 2)]
    resumed = fit_fold(cfg, plan, None, None, lambda m, s: None, refit_source=data["refit"], pool_source=data["pool"],
                       state=states[-1])
    whole = fit_fold(cfg, plan, None, None, lambda m, s: None, refit_source=data["refit"], pool_source=data["pool"])
    assert resumed["selected"]["history"] == whole["selected"]["history"]  # nothing repeated, nothing lost
    assert resumed["best_epoch"] == whole["best_epoch"] and resumed["refit_epochs"] == whole["best_epoch"] + 1
    for k, v in whole["best_model"].items():
        np.testing.assert_allclose(resumed["best_model"][k].numpy(), v.numpy(), rtol=1e-5, atol=1e-6)


def test_inner_folds_need_clean_training_copies(synth_store):
    with pytest.raises(ValueError, match="multi-condition"):
        small_cfg(synth_store, inner_folds=3, conditions=["clean", "5dB"])


def test_standardised_mlp_pools_before_scaling_with_the_same_outputs():
    import torch

    from ray_ser.train.loop import build_fold_model
    from ray_ser.train.plan import FoldPlan

    D = 6
    model_cfg = {"input_dim": D, "arch": "mlp", "pooling": "mean", "conv_channels": 8, "gru_hidden": 8, "embed_dim": 4,
                 "mlp_hidden": 5, "dropout": 0.0, "n_classes": 3, "n_dims": 0, "n_domains": 0, "adv_weight": 0.0,
                 "n_clusters": 0}
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=D).tolist(), (rng.random(D) + 0.5).tolist()
    plan = FoldPlan(fold=0, fold_id="a", layer=1, inner=[], val=[], test=[], categories=["a", "b", "c"], keep=None,
                    input_dim=D, n_domains=0, domains=[], has_dims=False, model_cfg=model_cfg, norm_mean=mean,
                    norm_std=std)
    wrapped = build_fold_model(plan).eval()
    x, lengths = torch.randn(4, 7, D), torch.tensor([7, 3, 5, 1])
    scaled = (x - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(wrapped(x, lengths)["logits"], wrapped.net(scaled, lengths)["logits"])


def test_the_mlp_trains_on_cached_mean_frames_as_on_the_frames():
    from ray_ser.train.loop import EpochRunner, fit_epochs, shard_cache
    from ray_ser.train.reader import ShardCache
    from ray_ser.train.synthetic_fold import synthetic_fold

    cfg = TrainConfig(arch="mlp", mlp_hidden=8, epochs=3, batch_size=8, spec_augment=False, lr=3e-3, dropout=0.2)
    assert shard_cache(cfg).mean_frames and not shard_cache(cfg.model_copy(update={"spec_augment": True})).mean_frames
    assert not shard_cache(cfg.model_copy(update={"arch": "tcgru"})).mean_frames
    f = synthetic_fold(cfg, n_train=40, n_val=12, dim=6, frames=(3, 9), n_speakers=4, separation=0.5)
    runner = EpochRunner(cfg, f.plan, f.train, f.val)
    runner.run_epoch()
    cached = runner.caches["train"].rows
    assert {a.shape for a in cached["x"]} == {(1, 6)} and list(cached["n_frames"]) == list(f.train.rows["n_frames"])
    np.testing.assert_allclose(cached["x"][3][0], f.train.rows["x"][3].astype(np.float64).mean(0), rtol=1e-6)
    frames = {split: ShardCache(1 << 30) for split in ("train", "val")}
    a = fit_epochs(cfg, f.plan, f.train, f.val, lambda m, s: None)
    b = fit_epochs(cfg, f.plan, f.train, f.val, lambda m, s: None, caches=frames)
    assert [r["metric"] for r in a["history"]] == [r["metric"] for r in b["history"]]
    np.testing.assert_allclose([r["value"] for r in a["history"]], [r["value"] for r in b["history"]], rtol=1e-4,
                               atol=1e-6)
