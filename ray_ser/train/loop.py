"""The training loop of one fold, shared by Ray Train workers and Tune trials: epochs over the fold's frames,
early stopping on its inner validation speakers, an optional refit on all of its training speakers, and the
state a killed run resumes from.

- :class:`EpochRunner` runs one epoch at a time (training, validation, metrics); :func:`fit_epochs` loops it with
  early stopping; :func:`cross_validate` chooses the epoch count on k inner folds; :func:`fit_fold` selects, then
  refits (the validation speakers pick the epochs, then they train too);
- :func:`train_loop_per_worker` is what each Ray Train worker runs (:mod:`ray_ser.train.driver` starts it):
  it reads its shard of the fold's Ray Datasets and reports metrics and a checkpoint at most every
  ``checkpoint_every_s``.

What a fold trains on comes from its plan (:mod:`ray_ser.train.plan`); its best weights go to
:mod:`ray_ser.train.checkpoints`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ray_ser.corpora.manifest import DIMENSIONS
from ray_ser.train.config import TrainConfig
from ray_ser.train.plan import FoldPlan

log = logging.getLogger(__name__)


STATE_FILE = "state.pt"


def build_fold_model(plan: FoldPlan):
    """The fold's model; with the fold's scaler, wrapped so it standardises its input frames first
    ((x - mean) / std per dimension, kept as buffers next to the weights; the models mask padding)."""
    import torch
    from torch import nn

    from ray_ser.train.nn import ModelConfig, build_model
    from ray_ser.train.nn.models import MLPHead

    class Standardized(nn.Module):
        def __init__(self, net: nn.Module, mean, std):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
            self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

        def forward(self, x, lengths):
            if isinstance(self.net, MLPHead):  # the mean of standardised frames = the standardised mean frame
                return self.net.from_pooled((self.net.pool(x, lengths) - self.mean) / self.std)
            return self.net((x - self.mean) / self.std, lengths)

    net = build_model(ModelConfig.from_dict(plan.model_cfg))
    return net if plan.norm_mean is None else Standardized(net, plan.norm_mean, plan.norm_std)


# ---- the loop -------------------------------------------------------------------------------------
def _val_score(metrics: dict[str, float]) -> float:
    """The model-selection score: UAR when there are categories, else mean CCC."""
    if "uar" in metrics:
        return metrics["uar"]
    cccs = [v for k, v in metrics.items() if k.startswith("ccc_")]
    return float(np.mean(cccs)) if cccs else -metrics["loss"]


EVAL_ROWS = 4096
"""Rows per forward pass when a validation split is held as dense one-frame rows (the pooled path)."""


def evaluate_batches(model, batches: Iterator[dict], device, target: str,
                     loss_rows: int | None = None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(metrics, outputs) of ``model`` over collated batches: mean loss, UAR, CCC per dimension; outputs hold
    ``probs``, ``dims``, ``label_index``, ``dims_true``, ``dims_mask`` stacked in batch order. ``loss_rows``: the
    loss is the size-weighted mean of the losses of consecutive slices of this many rows (the training batch
    size), whatever the size of the batches passed through the model, so one large forward pass reports the loss
    that batches of that size would."""
    import torch
    from sklearn.metrics import balanced_accuracy_score

    from ray_ser.train.nn import ccc, multitask_loss

    model.eval()
    losses, weights, outs = [], [], {"probs": [], "dims": [], "label_index": [], "dims_true": [], "dims_mask": []}
    with torch.no_grad():
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(batch["x"], batch["lengths"])
            n = len(batch["lengths"])
            step = loss_rows or n
            for s in range(0, n, step):
                o, b = (out, batch) if step >= n else ({k: v[s:s + step] for k, v in out.items()},
                                                       {k: v[s:s + step] for k, v in batch.items()})
                loss, _ = multitask_loss(o, b, target="pdf" if target == "pdf" else "onehot", connect_all=False)
                losses.append(float(loss))
                weights.append(len(b["lengths"]))
            if "logits" in out:
                outs["probs"].append(torch.softmax(out["logits"].float(), -1))
            if "dims" in out:
                outs["dims"].append(out["dims"].float())
            outs["label_index"].append(batch["label_index"])
            outs["dims_true"].append(batch["dims"])
            outs["dims_mask"].append(batch["dims_mask"])
    stacked = {k: torch.cat(v).cpu().numpy() for k, v in outs.items() if v}  # one copy each, not one per batch
    metrics = {"loss": float(np.average(losses, weights=weights)) if losses else float("nan")}
    y = stacked.get("label_index")
    if "probs" in stacked and y is not None and (y >= 0).any():
        ok = y >= 0
        metrics["uar"] = float(balanced_accuracy_score(y[ok], stacked["probs"][ok].argmax(1)))
    if "dims" in stacked:
        for j, name in enumerate(DIMENSIONS):
            ok = stacked["dims_mask"][:, j]
            if ok.sum() > 1:
                metrics[f"ccc_{name}"] = float(ccc(torch.from_numpy(stacked["dims"][ok, j]),
                                                   torch.from_numpy(stacked["dims_true"][ok, j])))
    return metrics, stacked


def epoch_batches(source, cfg: TrainConfig, epoch: int, train: bool, device=None, cache=None,
                  only: frozenset | None = None, corpus_counts: dict[str, int] | None = None) -> Iterator[dict]:
    """Collated batches of a Ray Dataset or DataIterator: shuffled and length-bucketed for training (with the
    epoch's condition per utterance in multi-condition training), in order for evaluation. ``cache`` (a
    :class:`~ray_ser.train.reader.ShardCache`, kept across epochs) holds a small shard in memory after one read;
    ``only``: the utt_ids to keep (an inner fold's part of the shard); ``corpus_counts`` (training utterances per
    corpus) with ``cfg.balance == "corpus"``: the epoch's corpus-balanced draw (:func:`balanced_draw`)."""
    from ray_ser.train.reader import ShardCache, bucketed

    bs = cfg.batch_size
    cache = cache or ShardCache(0)
    if not train:
        for b in cache.chunks(source, bs, only=only, dense_rows=EVAL_ROWS):
            yield cache.collate(b, device)
        return
    rng = np.random.default_rng([cfg.seed, epoch])
    chunks = cache.chunks(source, bs * 8 * max(1, len(cfg.conditions)), rng, only=only)
    if cfg.balance == "corpus" and corpus_counts and len(corpus_counts) > 1:
        chunks = balanced_draw(chunks, corpus_counts, cfg.seed, epoch)
    for b in bucketed(chunks, bs, rng, epoch, cfg.seed, cfg.conditions):
        yield cache.collate(b, device)


def balanced_draw(chunks: Iterator[dict], corpus_counts: dict[str, int], seed: int, epoch: int) -> Iterator[dict]:
    """Corpus-balanced sampling: each row of corpus c is kept with probability (smallest corpus / c's size), by a
    fixed hash of (seed, epoch, utt_id), so every corpus gives the same number of utterances to an epoch in
    expectation, a different draw each epoch, the same on every worker and after a resume."""
    import zlib

    from ray_ser.train.reader import take_rows

    smallest = min(corpus_counts.values())
    share = {c: smallest / n for c, n in corpus_counts.items()}
    for chunk in chunks:
        draws = np.array([zlib.crc32(f"{seed}|{epoch}|{u}|balance".encode()) / 2 ** 32 for u in chunk["utt_id"]])
        keep = np.flatnonzero(draws < np.array([share.get(c, 1.0) for c in chunk["corpus"]]))
        if len(keep):
            yield take_rows(chunk, keep)


def shard_cache(cfg: TrainConfig):
    """A worker's in-memory cache of one split (``cfg.cache_mb``); it keeps only each row's mean frame when that
    is all the model sees (the MLP without SpecAugment, which masks frames before the mean)."""
    from ray_ser.train.reader import ShardCache

    return ShardCache(cfg.cache_mb * 2 ** 20, mean_frames=cfg.arch == "mlp" and not cfg.spec_augment)


class EpochRunner:
    """One fold's model, optimiser and early-stopping state, advanced one epoch at a time (Ray Train runs it to
    the end; a Tune trial interleaves several folds' runners). ``state()`` is everything needed to resume."""

    def __init__(self, cfg: TrainConfig, plan: FoldPlan, train_source, val_source, state: dict | None = None,
                 device=None, prepare: Callable | None = None, rank: int = 0, tb_dir: str | None = None,
                 train_split: str = "train", val_split: str = "val", caches: dict | None = None,
                 subsets: dict[str, frozenset] | None = None):
        import torch

        from ray_ser.train.nn import LossWeights, SpecAugment

        self.cfg, self.plan, self.train_source, self.val_source = cfg, plan, train_source, val_source
        self.train_split, self.val_split = train_split, val_split
        self.caches = caches or {split: shard_cache(cfg) for split in ("train", "val")}
        self.subsets = subsets or {}
        self.device = device or torch.device("cpu")
        torch.manual_seed(cfg.seed * 7919 + plan.fold + 17 * rank)
        self.net = build_fold_model(plan).to(self.device)
        self.model = prepare(self.net) if prepare else self.net
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.aug = SpecAugment(seed=cfg.seed + plan.fold) if cfg.spec_augment else None
        self.weights = LossWeights(domain=1.0, cluster=cfg.cluster_weight)
        self.st = {"epoch": 0, "best_score": -float("inf"), "best_epoch": -1, "best_model": None, "bad_epochs": 0,
                   "last_score": -float("inf"), "scores": [], "history": [], "best_temperature": None}
        if state:
            self.net.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            self.st.update({k: state[k] for k in self.st if k in state})
            if state.get("rng") is not None:  # dropout draws go on where they stopped: a resumed run is the same run
                torch.set_rng_state(state["rng"])
            if state.get("cuda_rng") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.writer = None
        if tb_dir and rank == 0:
            from ray_ser.train.events import EventWriter

            self.writer = EventWriter(tb_dir)

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return self.st["epoch"]

    @property
    def last_score(self) -> float:
        return self.st["last_score"]

    @property
    def done(self) -> bool:
        return self.st["epoch"] >= self.cfg.epochs or self.st["bad_epochs"] >= self.cfg.patience

    def run_epoch(self) -> dict:
        """Train one epoch, score the validation speakers, keep the best weights; returns the epoch's metrics."""
        import torch

        from ray_ser.train.nn import multitask_loss

        cfg, st, epoch = self.cfg, self.st, self.st["epoch"]
        t0 = time.perf_counter()
        self.model.train()
        if self.device.type == "cuda":
            # cuDNN's GRU keeps its own dropout state, outside the generator's saved state; torch re-seeds it from
            # the CUDA generator whenever that generator's state is set. Setting it at each epoch's start makes an
            # epoch's draws a function of the state a checkpoint holds, so a resumed run is the same run.
            torch.cuda.set_rng_state(torch.cuda.get_rng_state(self.device), self.device)
        if self.aug is not None:
            self.aug.manual_seed(cfg.seed * 100003 + self.plan.fold * 1009 + epoch)
        sums: dict[str, float] = {}
        n = 0
        for batch in epoch_batches(self.train_source, cfg, epoch, True, self.device, self.caches["train"],
                                   self.subsets.get("train"), self.plan.corpus_counts):
            if self.aug is not None:
                batch["x"] = self.aug.train()(batch["x"], batch["lengths"])
            out = self.model(batch["x"], batch["lengths"])
            loss, parts = multitask_loss(out, batch, target=cfg.target, weights=self.weights,
                                         connect_all=self.model is not self.net)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            b = len(batch["lengths"])
            n += b
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * b
        train_metrics = {("loss" if k == "total" else f"loss_{k}"): v / max(n, 1) for k, v in sums.items()}
        if self.val_source is None:  # refit: no validation speakers left, the last epoch is the model
            val_metrics, score = {}, float(epoch)
        else:
            val_metrics, val_out = evaluate_batches(
                self.net, epoch_batches(self.val_source, cfg, epoch, False, self.device, self.caches["val"],
                                        self.subsets.get("val")),
                self.device, cfg.target, loss_rows=cfg.batch_size)
            score = _val_score(val_metrics)
        if score > st["best_score"]:
            st.update(best_score=score, best_epoch=epoch, bad_epochs=0,
                      best_model={k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()})
            if self.val_source is not None and "probs" in val_out:  # the best epoch's temperature, on its val speakers
                from ray_ser.train.calibration import fit_temperature

                st["best_temperature"] = fit_temperature(val_out["probs"], val_out["label_index"])
        else:
            st["bad_epochs"] += 1
        st["epoch"], st["last_score"] = epoch + 1, score
        st["scores"] = [*st["scores"], score]
        for split, metrics in ((self.train_split, train_metrics), (self.val_split, val_metrics)):
            for name, value in metrics.items():
                st["history"].append({"fold": self.plan.fold, "epoch": epoch, "split": split, "metric": name,
                                      "value": float(value)})
                if self.writer is not None:
                    self.writer.add_scalar(f"{split}/{name}", value, epoch)
        if self.writer is not None:
            self.writer.flush()
        scores = {} if self.val_source is None else {"val_score": score, "best_val_score": st["best_score"]}
        return {"epoch": epoch, "fold": self.plan.fold, "seconds": time.perf_counter() - t0, **scores,
                "best_epoch": st["best_epoch"],
                **{f"train_{k}": v for k, v in train_metrics.items()}, **{f"val_{k}": v for k, v in val_metrics.items()}}

    def state(self) -> dict:
        import torch

        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {**self.st, "model": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                "optimizer": self.opt.state_dict(), "rng": torch.get_rng_state(), "cuda_rng": cuda}

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def fit_epochs(cfg: TrainConfig, plan: FoldPlan, train_source, val_source, report: Callable[[dict, dict], None],
               state: dict | None = None, **runner_options) -> dict:
    """Train ``plan``'s model for up to ``cfg.epochs`` epochs, early-stopping on the validation score after
    ``cfg.patience`` epochs without a gain; ``report(metrics, state)`` after every epoch with the full
    resumable state; ``state`` resumes. Returns the final state."""
    runner = EpochRunner(cfg, plan, train_source, val_source, state=state, **runner_options)
    while not runner.done:
        metrics = runner.run_epoch()
        report(metrics, runner.state())
    runner.close()
    return runner.state()


def refit_cfg(cfg: TrainConfig, selected: dict) -> TrainConfig:
    """The refit phase's config: as many epochs as the selection phase's best, no early stopping."""
    n = int(selected["best_epoch"]) + 1
    return cfg.model_copy(update={"epochs": n, "patience": n + 1})


def mean_curves(history: list[dict], rounds: int) -> list[dict]:
    """The inner folds' per-epoch metrics averaged over folds, as split "train"/"val" rows (an epoch counts
    only when every inner fold has it)."""
    groups: dict[tuple, list[float]] = {}
    for row in history:
        split = row["split"].rsplit("_r", 1)[0]
        groups.setdefault((row["fold"], row["epoch"], split, row["metric"]), []).append(row["value"])
    return [{"fold": f, "epoch": e, "split": sp, "metric": m, "value": float(np.mean(v))}
            for (f, e, sp, m), v in sorted(groups.items()) if len(v) == rounds]


def cross_validate(cfg: TrainConfig, plan: FoldPlan, pool_source, report: Callable[[dict, dict], None],
                   state: dict | None = None, **runner_options) -> dict:
    """The selection phase by inner cross-validation: for each of ``plan.cv_val``, a fresh model trained for all
    ``cfg.epochs`` epochs on the pool (all of the fold's training utterances) without that inner fold and scored
    on it; the epoch count is the argmax of the mean validation curve. Inner folds run one after another on
    the worker's whole pool without DDP (every worker computes the same curves; the refit uses all workers).
    Reported states carry ``cv`` (the inner fold running, finished curves and history), so a resumed run goes
    on inside the inner fold it was in. Returns the selection (best_epoch, best_score, epoch, history)."""
    if pool_source is None:
        raise ValueError("inner_folds > 1 needs the fold's training utterances as one unsplit source (pool)")
    cv = state["cv"] if state else {"round": 0, "curves": [], "history": [], "temperatures": []}
    curves, history = list(cv["curves"]), list(cv["history"])
    temperatures = list(cv.get("temperatures", []))
    pool = frozenset([*plan.inner, *plan.val])
    cache = shard_cache(cfg)
    round_cfg = cfg.model_copy(update={"patience": cfg.epochs + 1})  # whole curves: the mean picks the epoch
    options = {k: v for k, v in runner_options.items() if k not in ("prepare", "tb_dir")}
    tb = runner_options.get("tb_dir")

    def reporter(r: int) -> Callable[[dict, dict], None]:
        extra = {"phase": "cv", "cv": {"round": r, "curves": curves, "history": history, "temperatures": temperatures}}
        return lambda metrics, st: report({**metrics, "inner_fold": r}, {**st, **extra})

    for r in range(len(curves), len(plan.cv_val)):
        val = frozenset(plan.cv_val[r])
        final = fit_epochs(round_cfg, plan, pool_source, pool_source, reporter(r),
                           state=state if state and state["cv"]["round"] == r else None, **options,
                           tb_dir=f"{tb}/inner_{r}" if tb else None, train_split=f"train_r{r}", val_split=f"val_r{r}",
                           caches={"train": cache, "val": cache}, subsets={"train": pool - val, "val": val})
        curves, history = [*curves, list(final["scores"])], [*history, *final["history"]]
        temperatures = [*temperatures, final.get("best_temperature")]
    mean = np.mean(np.asarray(curves, dtype=float), axis=0)
    best = int(np.argmax(mean))
    from ray_ser.train.calibration import pooled_temperature

    return {"best_epoch": best, "best_score": float(mean[best]), "epoch": len(mean),
            "history": history + mean_curves(history, len(curves)), "temperature": pooled_temperature(temperatures)}


def fit_fold(cfg: TrainConfig, plan: FoldPlan, train_source, val_source, report: Callable[[dict, dict], None],
             refit_source=None, state: dict | None = None, pool_source=None, **runner_options) -> dict:
    """:func:`fit_epochs` (the selection phase; with ``plan.cv_val``, :func:`cross_validate` over
    ``pool_source``), then with ``cfg.refit`` a fresh model trained on ``refit_source`` (all training speakers)
    for the selected epoch count. Every reported state carries its ``phase`` ("select"/"cv"/"refit") and, in the
    refit, the selection's result, so a resumed run goes on in the right phase. The returned state's best model
    is the fold's model."""
    state = dict(state) if state else None
    if plan.cv_val and (state is None or state.get("phase") == "cv"):
        selected, state = cross_validate(cfg, plan, pool_source, report, state, **runner_options), None
    elif state is None or state.get("phase", "select") == "select":
        state = fit_epochs(cfg, plan, train_source, val_source,
                           lambda m, st: report(m, {**st, "phase": "select"}), state=state, **runner_options)
        state = {**state, "phase": "select"}
        if not cfg.refit:
            return state
        selected = {**{k: state[k] for k in ("best_epoch", "best_score", "epoch", "history")},
                    "temperature": state.get("best_temperature")}
        state = None
    else:
        selected = state["selected"]
    if refit_source is None:
        raise ValueError("refit=True needs the fold's full training set (refit_source)")
    extra = {"phase": "refit", "selected": selected}
    runner_options = {**runner_options, "train_split": "refit"}
    final = fit_epochs(refit_cfg(cfg, selected), plan, refit_source, None,
                       lambda m, st: report(m, {**st, **extra}), state=state, **runner_options)
    return final_state({**final, **extra})


def final_state(state: dict) -> dict:
    """A fold's last reported state as its result: after a refit, the refit's last weights with the selection's
    best epoch, validation score and temperature (fitted on the selection's validation speakers: the refit model
    has trained on them), and the history of both phases."""
    if state.get("phase") != "refit":
        return state
    selected = state["selected"]
    return {**state, "best_epoch": selected["best_epoch"], "best_score": selected["best_score"],
            "refit_epochs": state["epoch"], "history": selected["history"] + state["history"],
            "best_temperature": selected.get("temperature")}


def save_state(state: dict, directory: str | os.PathLike) -> Path:
    from ray_ser.train import state_io

    path = Path(directory) / STATE_FILE
    state_io.save(state, path)
    return path


def load_state(directory: str | os.PathLike) -> dict:
    """A fold's training state (tensors and plain data only: nothing is unpickled)."""
    from ray_ser.train import state_io

    return state_io.load(Path(directory) / STATE_FILE)


def write_progress(path: str | os.PathLike, metrics: dict, st: dict, cfg: TrainConfig, plan: FoldPlan) -> None:
    """After every epoch (rank 0): where the fold is, as a small JSON file the driver's progress bar reads
    (phase, epoch of how many, inner fold). Only into an existing folder (the driver's run folder, when it is on
    this machine); never fails the run."""
    import json

    target = Path(path)
    if not target.parent.is_dir():
        return
    phase = st.get("phase", "select")
    epochs = int(st["selected"]["best_epoch"]) + 1 if phase == "refit" and st.get("selected") else cfg.epochs
    info = {"phase": phase, "epoch": int(metrics.get("epoch", 0)) + 1, "epochs": epochs,
            "inner_fold": metrics.get("inner_fold"), "inner_folds": len(plan.cv_val) if plan.cv_val else None}
    try:
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(target)
    except OSError:
        pass


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: :func:`fit_fold` on this worker's shards of the fold's datasets (its part of "train" and
    "refit", all of "val" and "pool"); rank 0 writes the checkpoints (resumable state, throttled by
    ``checkpoint_every_s``) and the TensorBoard scalars."""
    import ray.train
    import ray.train.torch
    import torch

    from ray_ser import storage

    storage.restore(config.get("storage"))  # the driver's storage options: this node may have no credentials
    cfg, plan = TrainConfig(**config["cfg"]), FoldPlan(**config["plan"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.set_num_threads(max(1, int(round(cfg.cpus_per_worker))))
    device = ray.train.torch.get_device()
    state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_state(d)

    last = {"saved": -float("inf"), "unsent": None}
    group = torch.distributed.is_available() and torch.distributed.is_initialized() and ctx.get_world_size() > 1

    def report(metrics: dict, st: dict, final: bool = False) -> None:
        """Report when ``cfg.checkpoint_every_s`` has passed since the last report (rank 0's clock, shared so every
        worker reports as often) and at the end; rank 0 adds the checkpoint of the state."""
        metrics = {**metrics, "compute_s": time.perf_counter() - t_fit}  # the fold's reads and epochs so far
        if rank == 0 and config.get("progress_file") and not final:
            write_progress(config["progress_file"], metrics, st, cfg, plan)
        due = [final or time.monotonic() - last["saved"] >= cfg.checkpoint_every_s]
        if group:
            torch.distributed.broadcast_object_list(due, src=0)
        last["unsent"] = None if due[0] else (metrics, st)
        if not due[0]:
            return
        last["saved"] = time.monotonic()
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            save_state(st, d)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    shard = {n: ray.train.get_dataset_shard(n) for n in config["datasets"]}
    t_fit = time.perf_counter()
    fit_fold(cfg, plan, shard.get("train"), shard.get("val"), report, refit_source=shard.get("refit"),
             pool_source=shard.get("pool"), state=state, device=device, prepare=ray.train.torch.prepare_model,
             rank=rank, tb_dir=config.get("tb_dir"))
    if last["unsent"] is not None:  # the last epoch's state, whatever the clock said (the same on every rank)
        report(*last["unsent"], final=True)
