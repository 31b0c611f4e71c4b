"""The Ray Train driver: one TorchTrainer run per outer fold (resumed from its last checkpoint after a kill),
the per-epoch table of a run, and :func:`run` over the folds of a config."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from ray_ser import console, storage
from ray_ser.redaction import redact
from ray_ser.corpora.folds import FoldAssignment
from ray_ser.store import Store
from ray_ser.storage import arrow_filesystem, join, local_log_dir, run_path, write_parquet
from ray_ser.train.checkpoints import (
    FINAL,
    final_checkpoint,
    fold_checkpoints,
    fold_dir,
    layer_weights,
    write_best,
    write_layer_weights,
)
from ray_ser.train.config import TrainConfig
from ray_ser.train.loop import final_state, load_state, train_loop_per_worker
from ray_ser.train.plan import (
    fold_datasets,
    plan_fold,
    prepare_plans,
    resolve_assignment,
    select_folds,
)

if TYPE_CHECKING:  # polars is only needed where tables are written, not in a worker's loop
    import polars as pl

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"
"""``DIR/fold_<f>/progress.json``: the epoch a fold's rank-0 worker is at (:func:`ray_ser.train.loop.write_progress`),
read by the driver's progress bar while the fold trains; removed when it ends."""


# ---- the driver -------------------------------------------------------------------------------------
def run_folder(out_dir):
    """A run folder: an absolute local path, or the object-store location of a URI (never a local folder named
    ``s3:``)."""
    out = run_path(out_dir)
    return out.resolve() if isinstance(out, Path) else out


def progress_file(out_dir, fold: int) -> Path:
    """Where rank 0 writes the fold's progress for the driver's bar: the run folder on this machine's disk; for a
    run folder on an object store, the driver's local log folder (workers on other nodes then write none)."""
    base = fold_dir(out_dir, fold) if isinstance(out_dir, Path) else local_log_dir(out_dir) / fold_dir(out_dir, fold).name
    return base / PROGRESS_FILE


def config_hash(cfg: TrainConfig) -> str:
    """8 hex digits naming a configuration: a Ray Train run resumes only a run of the same configuration."""
    import hashlib

    return hashlib.sha1(json.dumps(defining(cfg.model_dump()), sort_keys=True).encode()).hexdigest()[:8]


RUNTIME_FIELDS = ("cache_mb", "checkpoint_every_s", "outer_folds", "final", "device", "pooled", "fold_slots")
"""TrainConfig fields that change how a run is executed, not what it learns (a resumed run may change them; which
folds a run trains and whether it adds a final model do not change any fold's model; ``device`` auto never was part
of a run's identity either, since it followed the cluster)."""


LATER_DEFAULTS = {"layer_mix": "none"}
"""TrainConfig fields added after runs were made, at the value that trains what those runs trained: left out of a
run's identity at that value, so a finished or interrupted run of before is still the same run."""


def defining(config: dict) -> dict:
    """A config dict without its runtime-only fields: what two runs must share to be the same run."""
    return {k: v for k, v in config.items()
            if k not in RUNTIME_FIELDS and not (k in LATER_DEFAULTS and LATER_DEFAULTS[k] == v)}


GPU_HINT = ("Set train.device: cpu (--device cpu), add a GPU node, or give the cluster's autoscaler a node type with "
            "GPUs (docs/cluster.md)")


def _scaling(cfg: TrainConfig):
    """Ray Train's workers: one GPU each when ``cfg.device`` resolves to gpu (alive or to be added by the
    autoscaler), checked against the cluster's nodes and node types first (refused when none could hold one)."""
    from ray.train import ScalingConfig

    from ray_ser import cluster_resources as cr

    use_gpu = cr.wants_gpu(cfg.device)
    per_worker = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    cr.place(per_worker, f"each Ray Train worker (train.device {cfg.device})", GPU_HINT if use_gpu else "")
    return ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu, resources_per_worker=per_worker)


def _torch_config():
    """Ray Train's torch backend: its default (NCCL on GPUs), gloo under the test-only fake-GPU switch, whose GPUs
    have no device for NCCL."""
    from ray.train.torch import TorchConfig

    from ray_ser.cluster_resources import fake_gpus

    return TorchConfig(backend="gloo") if fake_gpus() else None


def _fake_gpu_loop(config: dict) -> None:
    """The worker loop under the test-only fake-GPU switch: Ray assigned a GPU that has no device, so Ray Train's
    device (``ray.train.torch.get_device``, ``prepare_model``) is made the CPU before the loop starts."""
    from ray.air._internal import device_manager

    device_manager._torch_device_manager = device_manager.CPUTorchDeviceManager()
    train_loop_per_worker(config)


@contextlib.contextmanager
def watch_progress(path: Path, on_change: Callable[[dict], None] | None, interval: float = 1.0) -> Iterator[None]:
    """While the block runs, a thread calls ``on_change`` with the JSON in ``path`` each time it changes."""
    if on_change is None:
        yield
        return
    stop = threading.Event()

    def poll() -> None:
        last = None
        while not stop.wait(interval):
            try:
                text = path.read_text()
                if text != last:
                    last = text
                    on_change(json.loads(text))
            except (OSError, ValueError):  # not written yet, or being replaced
                continue

    thread = threading.Thread(target=poll, name="ray_ser-fold-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def epoch_note(fold: int, progress: dict) -> str:
    """The fold bar's postfix: ``fold 3: epoch 5/30`` (``inner 2/3``, ``refit`` when in those phases)."""
    phase, where = progress.get("phase"), ""
    if phase == "cv" and progress.get("inner_fold") is not None and progress.get("inner_folds"):
        where = f"inner {progress['inner_fold'] + 1}/{progress['inner_folds']} "
    elif phase == "refit":
        where = "refit "
    name = "final" if fold == FINAL else f"fold {fold}"
    return f"{name}: {where}epoch {progress.get('epoch')}/{progress.get('epochs')}"


def train_fold(cfg: TrainConfig, store: Store, assignment: FoldAssignment, fold: int, out_dir: str | os.PathLike,
               on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train outer ``fold`` on ``store`` with Ray Train (resuming its run if one was interrupted) and write its
    best checkpoint; returns the fold's summary (best epoch and validation score, seconds, layer). ``on_epoch`` gets
    the fold's progress (phase, epoch, epochs) while it trains, when its workers share this machine's disk. The
    workers open no store (they read the fold's Ray Datasets, whose read tasks get the table's URI and the store's
    storage options)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    out_dir = run_folder(out_dir)
    t0 = time.perf_counter()
    plan, labels, centroids = plan_fold(cfg, store, assignment, fold)
    datasets = fold_datasets(cfg, store, plan, labels, centroids)
    name = fold_dir(out_dir, fold).name
    progress = progress_file(out_dir, fold)
    progress.parent.mkdir(parents=True, exist_ok=True)
    progress.unlink(missing_ok=True)
    filesystem, storage_path = arrow_filesystem(join(out_dir, "ray_train"))
    from ray_ser.cluster_resources import fake_gpus

    trainer = TorchTrainer(
        _fake_gpu_loop if fake_gpus() else train_loop_per_worker,
        torch_config=_torch_config(),
        train_loop_config={"cfg": cfg.model_dump(), "plan": plan.to_dict(), "datasets": sorted(datasets),
                           "tb_dir": join(out_dir, "tensorboard", name), "progress_file": str(progress),
                           "storage": storage.snapshot()},
        scaling_config=_scaling(cfg),
        run_config=RunConfig(name=f"{name}-{config_hash(cfg)}", storage_path=storage_path,
                             storage_filesystem=filesystem, checkpoint_config=CheckpointConfig(num_to_keep=1),
                             failure_config=FailureConfig(max_failures=2)),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[n for n in ("train", "refit") if n in datasets]),
    )
    with watch_progress(progress, on_epoch):
        result = trainer.fit()
    progress.unlink(missing_ok=True)
    if result.checkpoint is None:
        raise RuntimeError(f"fold {fold}: training reported no checkpoint ({result.error})")
    with result.checkpoint.as_directory() as d:
        state = final_state(load_state(d))
    write_best(out_dir, cfg, plan, state)
    write_parquet(epochs_frame(state["history"]), fold_dir(out_dir, fold) / "epochs.parquet")
    compute = (result.metrics or {}).get("compute_s")
    return fold_summary(cfg, plan, state, time.perf_counter() - t0, **({} if compute is None else {"compute_s": compute}))


def train_pooled_folds(jobs: Sequence[tuple[int, TrainConfig]], store: Store, assignment: FoldAssignment,
                       out_dir: str | os.PathLike) -> Iterator[dict]:
    """Train the (fold, config) ``jobs`` of a pooled model (:mod:`ray_ser.train.pooled`): plan every fold, read the
    mean frames they need from ``store`` in one pass (the tasks get those frames, not the store), then fit each fold as a Ray task of ``cpus_per_worker`` CPUs (several at
    once as the cluster allows); yields each fold's summary in ``jobs`` order, its checkpoint written, as
    :func:`train_fold` returns it (plus ``compute_s``: the fold's epochs; ``read_s``: the shared read)."""
    import ray

    from ray_ser import cluster_resources as cr
    from ray_ser.train.pooled import fit_pooled
    from ray_ser.train.reader import PooledFrames

    out_dir = run_folder(out_dir)
    t0 = time.perf_counter()
    planned = [(fold, fold_cfg, *plan_fold(fold_cfg, store, assignment, fold)) for fold, fold_cfg in jobs]
    if not planned:
        return
    cfg = jobs[0][1]
    read_layers = sorted({l for _, _, plan, _, _ in planned for l in plan.read_layers})
    utts = sorted({u for _, _, plan, _, _ in planned for u in [*plan.inner, *plan.val]})
    conditions = sorted({"clean", *(c for _, fold_cfg, *_ in planned for c in fold_cfg.conditions)})
    t_read = time.perf_counter()
    pooled = PooledFrames.read(store, cfg.model, read_layers, utts, conditions)
    read_s = time.perf_counter() - t_read
    log.info("pooled path: mean frames of %d utterances x %s x layers %s read in %.1f s", len(utts), conditions,
             read_layers, read_s)
    use_gpu = cr.wants_gpu(cfg.device)
    per_task = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    cr.place(per_task, f"each fold's training task (train.device {cfg.device})", GPU_HINT if use_gpu else "")
    task = ray.remote(fit_pooled).options(num_cpus=cfg.cpus_per_worker, num_gpus=1 if use_gpu else 0,
                                          max_retries=2)
    pooled_ref = ray.put(pooled)  # once in the object store; each task takes its fold's rows from it
    started = {}
    for fold, fold_cfg, plan, labels, _ in planned:
        name = fold_dir(out_dir, fold).name
        started[fold] = (time.perf_counter(), task.remote(
            fold_cfg.model_dump(), plan.to_dict(), labels, pooled_ref,
            join(out_dir, "tensorboard", name), storage.snapshot(), use_gpu))
    for fold, fold_cfg, plan, _, _ in planned:
        t_fold, ref = started[fold]
        state = ray.get(ref)
        write_best(out_dir, fold_cfg, plan, state)
        write_parquet(epochs_frame(state["history"]), fold_dir(out_dir, fold) / "epochs.parquet")
        yield fold_summary(fold_cfg, plan, state, state["compute_s"], compute_s=state["compute_s"], read_s=read_s,
                           planned_s=t_read - t0, waited_s=time.perf_counter() - t_fold)


def fold_summary(cfg: TrainConfig, plan, state: dict, seconds: float, **extra) -> dict:
    """A trained fold's summary (best epoch and validation score, seconds, layers, sizes)."""
    epochs_run = state.get("selected", state)["epoch"]
    return {"fold": plan.fold, "layer": plan.layer, "layers": plan.read_layers, "best_epoch": state["best_epoch"],
            "best_val_score": state["best_score"], "epochs": epochs_run, "refit_epochs": state.get("refit_epochs"),
            "hit_cap": hit_cap(cfg, state["best_epoch"], epochs_run), "val_metric": val_metric(plan.model_cfg),
            "seconds": seconds, "n_train": len(plan.inner), "n_val": len(plan.val), "n_test": len(plan.test),
            "corpus_counts": plan.corpus_counts, "corpus_dims": plan.corpus_dims,
            "layer_weights": layer_weights(plan, state["best_model"]), **extra}


def fold_slots(cfg: TrainConfig, folds: int) -> int:
    """How many folds' Ray Train runs go at once on the frame path: as many as the cluster's CPUs hold with one CPU
    left for Ray Data's read tasks (``num_workers`` x ``cpus_per_worker`` each; at most ``cfg.fold_slots`` when set,
    1: one after another); never more than the folds."""
    import ray

    if folds < 2 or cfg.fold_slots == 1 or not ray.is_initialized():
        return 1
    free = float(ray.cluster_resources().get("CPU", 1)) - 1.0
    fit = int(free // (cfg.num_workers * cfg.cpus_per_worker)) if free > 0 else 1
    return max(1, min(folds, fit, cfg.fold_slots or folds))


def hit_cap(cfg: TrainConfig, best_epoch: int, epochs_run: int) -> bool:
    """Whether a fold's selection ran into its epoch budget (``cfg.epochs``) while still improving: it stopped at
    the budget, not on patience, its best epoch among the last ``cfg.patience`` (a longer budget might have found a
    better one; training until the curve is flat means a budget that patience, not the cap, ends)."""
    return int(epochs_run) >= cfg.epochs and int(best_epoch) >= int(epochs_run) - cfg.patience


def val_metric(model_cfg: dict) -> str:
    """What a fold's validation score is (:func:`ray_ser.train.loop._val_score`): UAR with a categorical head, else
    the mean CCC of the dimensions present."""
    if model_cfg.get("n_classes"):
        return "UAR"
    return "mean CCC" if model_cfg.get("n_dims") else "score"


def epochs_frame(rows: list[dict]) -> pl.DataFrame:
    """History rows as the contract's epochs table (fold, epoch, split, metric, value)."""
    import polars as pl

    return pl.DataFrame(rows, schema={"fold": pl.Int32, "epoch": pl.Int32, "split": pl.Utf8, "metric": pl.Utf8,
                                      "value": pl.Float64})


def collect_epochs(out_dir: str | os.PathLike) -> pl.DataFrame:
    """``DIR/epochs.parquet`` from the folds' own tables (fold, epoch, split, metric, value)."""
    import polars as pl

    out = run_path(out_dir)
    found = [*sorted(out.glob("fold_*/epochs.parquet"), key=str), *out.glob("final/epochs.parquet")]
    parts = [pl.read_parquet(p.read_bytes()) for p in found]
    df = pl.concat(parts) if parts else epochs_frame([])
    df = df.sort(["fold", "epoch", "split", "metric"])
    write_parquet(df, out / "epochs.parquet")
    return df


def final_config(cfg: TrainConfig) -> TrainConfig:
    """The final model's config: the epoch count by ``final_inner_folds`` inner folds of speakers or by the training
    corpora (``final_selection``; one inner split when the training copies are not clean alone), then a refit on
    every training speaker."""
    clean = cfg.conditions == ["clean"]
    # with final_selection corpora the inner folds are the training corpora (one corpus alone: speaker folds)
    k = (max(cfg.final_inner_folds, 2) if cfg.final_selection == "corpora" else cfg.final_inner_folds) if clean else 1
    if not clean and (cfg.final_inner_folds > 1 or cfg.final_selection == "corpora"):
        log.info("final model: training copies %s, so one inner validation split chooses its epochs", cfg.conditions)
    return cfg.model_copy(update={"refit": True, "inner_folds": k})


def run(cfg: TrainConfig, store: Store, folds: str | Sequence[int] | None, out_dir: str | os.PathLike,
        on_fold: Callable[[dict], None] | None = None) -> list[dict]:
    """Train every requested outer fold (``folds``; None: ``cfg.outer_folds``) on ``store`` (the one ``cfg.store``
    names, opened once by the caller) and, with ``cfg.final``, the final
    model on all speakers into ``out_dir`` (anything with a finished best checkpoint of the same configuration is
    skipped), then write ``epochs.parquet`` and ``run.json`` (with what the label set kept and left out)."""
    from ray_ser.corpora.label_sets import SetReport

    out_dir = run_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = SetReport(list(cfg.label_set or []))
    assignment = resolve_assignment(cfg, store, report=report)
    if cfg.label_set is not None:
        console.say(report.line())
    summaries = []
    done = fold_checkpoints(out_dir)
    if final_checkpoint(out_dir) is not None:
        done[FINAL] = final_checkpoint(out_dir)
    spec = cfg.outer_folds if folds is None else folds
    wanted = [] if isinstance(spec, str) and spec.strip().lower() == "none" else select_folds(spec, assignment)
    if cfg.final:
        wanted.append(FINAL)
    jobs = [(fold, cfg if fold != FINAL else final_config(cfg)) for fold in wanted]
    todo = [(fold, fold_cfg) for fold, fold_cfg in jobs if not (fold in done and defining(
        json.loads((done[fold] / "config.json").read_text())["train"]) == defining(fold_cfg.model_dump()))]
    for fold_cfg in {id(c): c for _, c in todo}.values():  # the plans the run lacks, built once here (analysis)
        prepare_plans(fold_cfg, store, assignment, [fold for fold, c in todo if c is fold_cfg])
    bar = console.progress(len(wanted), "train folds", "fold")  # the postfix: the fold training and its epoch
    from ray_ser.train.pooled import pooled_model

    pooled = train_pooled_folds(todo, store, assignment, out_dir) if pooled_model(cfg) and todo else None
    if pooled is not None:
        bar.set_postfix_str(f"{len(todo)} pooled fold(s), {cfg.cpus_per_worker:g} CPU each")
    running, slots = {}, fold_slots(cfg, len(todo)) if pooled is None else 1
    if slots > 1:  # frame path: several folds' Ray Train runs at once, one driver thread each
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(slots, thread_name_prefix="ray_ser-fold")
        running = {fold: pool.submit(train_fold, fold_cfg, store, assignment, fold, out_dir,
                                     on_epoch=lambda p, f=fold: bar.set_postfix_str(epoch_note(f, p)))
                   for fold, fold_cfg in todo}
        pool.shutdown(wait=False)
    for fold, fold_cfg in jobs:
        label = "final" if fold == FINAL else f"fold {fold}"
        if pooled is None:
            bar.set_postfix_str(label)
        if fold not in {f for f, _ in todo}:
            log.info("%s already trained: %s", label, done[fold])
            info = json.loads((done[fold] / "config.json").read_text())
            summary = {"fold": fold, "layer": info["plan"]["layer"],
                       "layers": info["plan"].get("layers") or [info["plan"]["layer"]], "best_epoch": info["best_epoch"],
                       "best_val_score": info["best_val_score"], "epochs": info["epochs_run"], "seconds": 0.0,
                       "skipped": True, "hit_cap": hit_cap(fold_cfg, info["best_epoch"], info["epochs_run"]),
                       "val_metric": val_metric(info["plan"].get("model_cfg", {})),
                       "layer_weights": info.get("layer_weights")}
        elif pooled is not None:
            summary = next(pooled)
        elif fold in running:
            summary = running[fold].result()
        else:
            summary = train_fold(fold_cfg, store, assignment, fold, out_dir,
                                 on_epoch=lambda p, f=fold: bar.set_postfix_str(epoch_note(f, p)))
        summaries.append(summary)
        bar.update(1)
        if on_fold is not None:
            with bar.external_write_mode():  # the caller's result lines print above the bar, not through it
                on_fold(summary)
    bar.close()
    collect_epochs(out_dir)
    write_layer_weights(out_dir, summaries)
    (out_dir / "run.json").write_text(json.dumps({"config": redact(cfg.model_dump()), "fold_id": assignment.id,
                                                  "folds": assignment.description, "label_set": report.to_dict(),
                                                  "summaries": summaries}, indent=1))
    return summaries
