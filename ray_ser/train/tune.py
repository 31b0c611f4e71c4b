"""Ray Tune search over layer, saliency keep-ratio, frame-cluster count, adversarial weight, learning rate,
pooling and target, scored on INNER validation speakers only.

Honest by construction: the speakers of the **held-out folds** (default: the first three outer folds) are never
read by any trial. The search works on the remaining speakers (the *pool*, ``FoldAssignment.without``): each
trial trains one model per search fold of the pool (fitted on its inner training speakers, scored on
its inner validation speakers, with a mask and centroids fitted on that pool fold's training speakers only),
one epoch of every fold per Tune iteration, and reports the mean validation score (UAR, or mean CCC for
dimensional corpora), so ASHA can stop a bad trial after a few epochs; Optuna's TPE proposes the next
configuration. The chosen configuration is then trained on the held-out folds by ``jobs/train.py --config
best_config.json --folds <held out>`` and scored by ``jobs/evaluate.py``: that is the reported number, on
speakers that neither trained nor selected it. (Scoring it on other folds would reuse speakers the search
tuned on.)

Resources: a trial asks for ``cpus_per_trial`` (fractional) and at most ``max_concurrent`` run at once, so
Ray Data's read tasks always find a CPU (on a 2-CPU node: 0.5 CPU a trial, 2 trials).

A pooled model (:func:`ray_ser.train.pooled.pooled_model`) searches on the pooled path: the mean frames of every
layer a trial can pick are read once per search and put in the object store once, and each trial fits its folds on
them in memory (:func:`ray_ser.train.pooled.fold_sources`), without a dataset plan or shard cache per trial.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import polars as pl

from ray_ser.store import Store
from ray_ser.train.config import TrainConfig
from ray_ser.train.loop import EpochRunner
from ray_ser.train import state_io
from ray_ser.analysis.fold_plans import named_layers
from ray_ser.train.plan import fold_datasets, plan_fold, prepare_plans, resolve_assignment
from ray_ser.train.pooled import fold_sources, pooled_model

log = logging.getLogger(__name__)

SEARCHED = ("layer", "keep_ratio", "n_clusters", "adv_weight", "lr", "pooling", "target", "layer_mix")
KEEP_RATIOS = (1.0, 0.8, 0.6, 0.4)
CLUSTER_COUNTS = (0, 50, 100, 150)
"""0 = frame-cluster head off ("none")."""
ADV_WEIGHTS = (0.0, 0.01, 0.1)
POOLINGS = ("attention", "mean", "last")
TARGETS = ("pdf", "onehot")
STATE_FILE = "trial_state.pt"


@dataclass
class SearchOptions:
    """The search's budget and resources; ``base`` holds the fixed part of every trial's TrainConfig."""

    base: TrainConfig
    num_samples: int = 16
    max_epochs: int = 12
    grace_period: int = 2
    time_budget_s: float | None = None
    seed: int = 0
    held_out_folds: Sequence[int] | None = None
    """Outer folds whose speakers the search never reads (None: the first three); report on these."""
    search_folds: int = 2
    """Folds of the pool each trial trains and validates on (its score is their mean)."""
    cpus_per_trial: float = 0.5
    max_concurrent: int = 2
    layers: Sequence[int] | None = None
    """Layers to search; None: the ``top_layers`` best by the layer prior."""
    top_layers: int = 3
    """With ``layers`` None: search the this-many layers the prior ranks first (0: every stored layer)."""
    layer_mix: str = "none"
    """none: the searched layer alone; learned: every trial mixes every stored layer (``base.layer_mix``); search:
    ``layer_mix`` (none or learned) is searched beside the layer (a learned trial ignores its layer)."""
    name: str = "search"
    reuse_actors: bool = True
    """Run a new trial in a finished trial's process (Tune's ``reuse_actors``): no torch/LanceDB import per trial;
    :func:`trainable` keeps no state between calls (seeds, plans, checkpoints and folders are the trial's own)."""


def search_space(layers: Sequence[int], layer_mix: str = "none") -> dict:
    """The Tune search space (categorical choices and a log-uniform learning rate); ``layer_mix`` search adds the
    learned mix of every layer as a choice beside the single layer."""
    from ray import tune

    mix = {"layer_mix": tune.choice(["none", "learned"])} if layer_mix == "search" else {}
    return {**mix, "layer": tune.choice(list(layers)), "keep_ratio": tune.choice(list(KEEP_RATIOS)),
            "n_clusters": tune.choice(list(CLUSTER_COUNTS)), "adv_weight": tune.choice(list(ADV_WEIGHTS)),
            "lr": tune.loguniform(1e-4, 3e-3), "pooling": tune.choice(list(POOLINGS)), "target": tune.choice(list(TARGETS))}


def layer_prior(opts: SearchOptions, store: Store, held_out: Sequence[int]) -> tuple[list[int], list[int]]:
    """(layers to search, every stored layer best first) from the pipeline's layer criterion
    (:func:`ray_ser.analysis.layer_selection.layer_prior`) on the pool's speakers only, so no held-out speaker
    is scored; ``opts.layers`` overrides the searched set (the order is still reported)."""
    from ray_ser.analysis.layer_selection import layer_prior as prior

    order = prior(store, opts.base.model, resolve_assignment(opts.base, store).without(held_out))
    if opts.layers is not None:
        return [k for k in order if k in set(opts.layers)] or list(opts.layers), order
    return (order[:opts.top_layers] if opts.top_layers else order), order


def first_point(opts: SearchOptions, layer: int) -> dict:
    """The search's first trial: the prior's layer with the base configuration's other values (the
    sampler's start), snapped onto the search space's choices."""
    base = opts.base
    snap = lambda v, choices: min(choices, key=lambda c: abs(c - v))  # noqa: E731
    return {"layer": layer, "keep_ratio": snap(base.keep_ratio, KEEP_RATIOS),
            "n_clusters": base.n_clusters if base.n_clusters in CLUSTER_COUNTS else 0,
            "adv_weight": snap(base.adv_weight, ADV_WEIGHTS), "lr": min(max(base.lr, 1e-4), 3e-3),
            "pooling": base.pooling if base.pooling in POOLINGS else POOLINGS[0],
            "target": base.target if base.target in TARGETS else TARGETS[0],
            **({"layer_mix": "none"} if opts.layer_mix == "search" else {})}


def trial_config(base: dict, params: dict) -> TrainConfig:
    """A trial's TrainConfig: the base with the searched parameters (an MLP cannot take a cluster head; a learned
    mix reads every layer, unmasked)."""
    params = {k: params[k] for k in SEARCHED if params.get(k) is not None}
    if params.get("layer_mix", base.get("layer_mix")) == "learned":  # the mix reads every layer, not the searched one
        params.pop("layer", None)
        params.update(layer=None, layers=base.get("layers") or "all", keep_ratio=1.0)
    elif "layer" in params:  # the searched layer is the trial's only input layer (a base's layer list would override it)
        params["layers"] = []
    cfg = TrainConfig(**{**base, **params})
    if cfg.arch == "mlp" and cfg.n_clusters:
        cfg.n_clusters = 0
    return cfg


def trainable(config: dict, store: Store, storage: dict | None = None, pooled=None) -> None:
    """Tune function trainable: one :class:`EpochRunner` per search fold, one epoch of each per iteration,
    reporting the mean inner-validation score with a checkpoint of every runner's state. Everything a trial holds
    is built here (a reused actor calls it afresh per trial; each runner seeds torch). ``store``: the search's
    Store (it pickles as its URI and storage options and reconnects once per trial); ``storage``: the driver's
    storage options (a trial on another node has no credentials of its own); ``pooled``: the search's
    :class:`~ray_ser.train.reader.PooledFrames` (a pooled model's trial trains on them in memory)."""
    import ray.tune
    import torch

    from ray_ser import storage as storage_options

    storage_options.restore(storage)

    cfg = trial_config(config["base"], config)
    # a trial is scored on each search fold's inner validation speakers: one inner split, no refit
    cfg = cfg.model_copy(update={"epochs": int(config["max_epochs"]), "inner_folds": 1, "refit": False})
    torch.set_num_threads(1)
    pool = resolve_assignment(cfg, store).without(config["held_out"])
    states = {}
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            states = state_io.load(Path(d) / STATE_FILE)
    prepare_plans(cfg, store, pool, config["search_folds"])  # the trial's plans (its layer, mask, clusters), at its entry
    runners = {}
    for fold in config["search_folds"]:
        plan, labels, centroids = plan_fold(cfg, store, pool, fold)
        if pooled is not None and pooled_model(cfg):
            data = fold_sources(cfg, plan, labels, pooled)
        else:
            data = fold_datasets(cfg, store, plan, labels, centroids)
        runners[fold] = EpochRunner(cfg, plan, data["train"], data["val"], state=states.get(fold))
    while not all(r.done for r in runners.values()):
        t0 = time.perf_counter()
        for r in runners.values():
            if not r.done:
                r.run_epoch()
        # a fold stopped early by its patience keeps contributing its last score
        score = sum(r.last_score for r in runners.values()) / len(runners)
        metrics = {config["metric"]: float(score), "epoch": max(r.epoch for r in runners.values()) - 1,
                   "seconds_per_epoch": time.perf_counter() - t0}
        with tempfile.TemporaryDirectory() as d:
            state_io.save({f: r.state() for f, r in runners.items()}, Path(d) / STATE_FILE)
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(d))


def trial_dirname(trial) -> str:
    """Short trial folder names (Tune's default spells out every parameter, the whole base config included)."""
    return f"trial_{trial.trial_id}"


def _fixed(opts: SearchOptions, held_out: Sequence[int], folds: Sequence[int], metric: str) -> dict:
    return {"base": opts.base.model_dump(), "max_epochs": opts.max_epochs, "held_out": list(held_out),
            "search_folds": list(folds), "metric": metric}


def plan_search(opts: SearchOptions, store: Store) -> tuple[list[int], list[int]]:
    """(held-out outer folds, pool folds a trial trains on)."""
    assignment = resolve_assignment(opts.base, store)
    held_out = list(opts.held_out_folds) if opts.held_out_folds is not None else assignment.fold_ids[:3]
    pool = assignment.without(held_out)
    if len(pool.fold_ids) < 2:
        raise ValueError(f"holding out folds {held_out} leaves {len(pool.fold_ids)} fold(s) to search on")
    return held_out, pool.fold_ids[:max(1, opts.search_folds)]


def metric_name(opts: SearchOptions, store: Store) -> str:
    """``val_uar`` for categorical corpora, ``val_ccc`` (mean over A/V/D) for dimensional ones."""
    from ray_ser.train.reader import load_labels

    a = resolve_assignment(opts.base, store)
    labels = load_labels(store, list(a.utt_ids)[:200])
    return "val_uar" if any(r.get("label") for r in labels.rows.values()) else "val_ccc"


def pooled_reads(opts: SearchOptions, store: Store, layers: Sequence[int], held_out: Sequence[int], folds: Sequence[int]):
    """The mean frames a pooled model's search reads once (every layer a trial can pick, the search folds' inner
    training and validation utterances, the training conditions and clean), or None for a frame-path model."""
    from ray_ser.train.reader import PooledFrames

    base = opts.base.model_dump()
    cfg = trial_config(base, {"layer": layers[0]} if layers else {})
    if not pooled_model(cfg):
        return None
    read = set() if opts.layer_mix == "learned" else {int(k) for k in layers}
    if opts.layer_mix != "none":
        read |= set(named_layers(trial_config(base, {"layer_mix": "learned"}).plan_spec()))
    pool = resolve_assignment(cfg, store).without(held_out)
    utts = sorted({u for f in folds for part in pool.inner_split(f, cfg.inner_share, cfg.seed) for u in part})
    conditions = sorted({"clean", *cfg.conditions})
    t0 = time.perf_counter()
    reads = PooledFrames.read(store, cfg.model, sorted(read), utts, conditions)
    log.info("pooled path: mean frames of %d utterances x %s x layers %s read once in %.1f s", len(utts), conditions,
             sorted(read), time.perf_counter() - t0)
    return reads


def run_search(opts: SearchOptions, store: Store, out_dir: str | Path, resume: bool = False):
    """Run (or ``resume``) the search over ``store`` (the one ``opts.base.store`` names) into ``out_dir``; writes ``trials.parquet`` and ``best_config.json``."""
    from ray import tune
    from ray.tune.logger import TBXLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from ray_ser import console
    from ray_ser.train.tune_progress import TrialProgress

    console.quiet_libraries()  # optuna's import gave it a console handler
    from ray_ser.storage import arrow_filesystem, join, snapshot
    from ray_ser.train.driver import run_folder

    out_dir = run_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    filesystem, storage_path = arrow_filesystem(out_dir)
    held_out, folds = plan_search(opts, store)
    layers, order = layer_prior(opts, store, held_out)
    log.info("layer prior (pool speakers only): %s; searching layers %s", order, layers)
    metric = metric_name(opts, store)
    pooled = pooled_reads(opts, store, layers, held_out, folds)  # with_parameters puts it in the object store once
    fn = tune.with_resources(tune.with_parameters(trainable, store=store, storage=snapshot(), pooled=pooled),
                             {"CPU": opts.cpus_per_trial})
    path = join(storage_path, opts.name)
    if resume and tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        tuner = tune.Tuner.restore(path, trainable=fn, resume_errored=True, storage_filesystem=filesystem)
    else:
        searcher = ConcurrencyLimiter(OptunaSearch(metric=metric, mode="max", seed=opts.seed,
                                                   points_to_evaluate=[first_point(opts, layers[0])]),
                                      max_concurrent=opts.max_concurrent)
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=opts.max_epochs,
                                  grace_period=min(opts.grace_period, opts.max_epochs), reduction_factor=2)
        tuner = tune.Tuner(
            fn,
            param_space={**search_space(layers, opts.layer_mix), **_fixed(opts, held_out, folds, metric)},
            tune_config=tune.TuneConfig(metric=metric, mode="max", search_alg=searcher, scheduler=scheduler,
                                        num_samples=opts.num_samples, time_budget_s=opts.time_budget_s,
                                        max_concurrent_trials=opts.max_concurrent, reuse_actors=opts.reuse_actors,
                                        trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname),
            run_config=tune.RunConfig(name=opts.name, storage_path=storage_path, storage_filesystem=filesystem,
                                      callbacks=[TBXLoggerCallback(), TrialProgress(metric, opts.num_samples)],
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                      verbose=None if console.is_verbose() else 0),  # quiet: the trials bar instead
        )
    results = tuner.fit()
    trials = trials_table(results, metric)
    write_outputs(trials, opts, metric, out_dir, held_out, folds, {"layer_order": order, "layers_searched": layers})
    return trials


def trials_table(results, metric: str) -> pl.DataFrame:
    """One row per trial: every searched parameter, the metric's best and last value, epochs, status, seconds."""
    rows = []
    for r in results:
        cfg = r.config or {}
        df = r.metrics_dataframe
        best = last = None
        best_epoch = epochs = 0
        if df is not None and metric in df.columns and len(df):
            values = df[metric].tolist()
            last = float(values[-1])
            i = max(range(len(values)), key=values.__getitem__)
            best, best_epoch, epochs = float(values[i]), int(df["epoch"].iloc[i]) + 1, len(values)
        rows.append({
            "trial_id": (r.metrics or {}).get("trial_id") or Path(r.path).name,
            **{k: cfg.get(k) for k in SEARCHED},
            metric: best, f"{metric}_last": last, "best_epoch": best_epoch, "epochs": epochs,
            "status": "ERROR" if r.error else ("TERMINATED" if epochs else "NO_RESULT"),  # NO_RESULT: budget ended first
            "seconds": float((r.metrics or {}).get("time_total_s") or 0.0),
        })
    df = pl.DataFrame(rows, schema_overrides={"layer": pl.Int32, "keep_ratio": pl.Float64, "n_clusters": pl.Int32,
                                              "adv_weight": pl.Float64, "lr": pl.Float64, "pooling": pl.Utf8,
                                              "target": pl.Utf8, "layer_mix": pl.Utf8, metric: pl.Float64, f"{metric}_last": pl.Float64,
                                              "best_epoch": pl.Int32, "epochs": pl.Int32, "status": pl.Utf8,
                                              "seconds": pl.Float64})
    df = df.with_columns(pl.when(pl.col("n_clusters") == 0).then(None).otherwise(pl.col("n_clusters")).alias("n_clusters"))
    return df.sort(metric, descending=True, nulls_last=True)


def write_outputs(trials: pl.DataFrame, opts: SearchOptions, metric: str, out_dir: Path, held_out: Sequence[int],
                  folds: Sequence[int], prior: dict | None = None) -> dict:
    """``trials.parquet`` and ``best_config.json`` (a TrainConfig that jobs/train.py --config takes as is)."""
    from ray_ser.storage import run_path, write_parquet

    out_dir = run_path(out_dir)
    write_parquet(trials, out_dir / "trials.parquet")
    ok = trials.filter(pl.col(metric).is_not_null())
    if ok.height == 0:
        raise RuntimeError(f"no trial reported {metric}: see {out_dir / opts.name}")
    best = ok.row(0, named=True)
    params = {k: best.get(k) for k in SEARCHED}
    params["n_clusters"] = params["n_clusters"] or 0
    cfg = trial_config(opts.base.model_dump(), params)
    cfg.epochs = max(cfg.epochs, opts.max_epochs)
    text = json.dumps(cfg.model_dump(), indent=1)
    (out_dir / "best_config.json").write_text(text)
    (out_dir / "search.json").write_text(json.dumps({"metric": metric, "held_out_folds": list(held_out), "search_folds": list(folds), "best": best,
                                                     "num_samples": opts.num_samples, "max_epochs": opts.max_epochs,
                                                     "layer_prior": prior},
                                                    indent=1, default=str))
    return json.loads(text)

