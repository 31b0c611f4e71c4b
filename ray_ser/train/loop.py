"""Fit emotion models on the store with Ray Train: one TorchTrainer run per outer fold, early-stopped on
inner validation speakers, the best weights kept as that fold's checkpoint.

Per outer fold f of the fold assignment (the one the stored saliency used):
- inner training and validation speakers are drawn from f's training speakers (:meth:`FoldAssignment.inner_split`);
  the saliency mask (keep ratio r) and the k-means centroids are fold f's, fitted without its speakers; the
  layer (or the K best layers, concatenated), when not given, is chosen on f's training speakers
  (:func:`ray_ser.analysis.layer_selection.ranked_layers`);
- Ray Data reads the frames (:func:`ray_ser.train.reader.frames_dataset`), materialised once; Ray Train runs
  :func:`train_loop_per_worker` on ``num_workers`` workers (DDP), reporting metrics and a checkpoint every
  epoch; a killed run restarts from the last checkpoint when started again with the same ``--out``;
- with ``refit``, a fresh model is then trained on all of f's training speakers for the early-stopped epoch count
  (:func:`fit_fold`): the validation speakers pick the epochs, then they train too;
- ``DIR/fold_<f>/best/`` gets ``model.pt`` and ``config.json`` (everything evaluation needs to predict),
  ``DIR/epochs.parquet`` the per-epoch metrics, ``DIR/tensorboard/fold_<f>`` TensorBoard scalars.

:func:`fit_epochs` is the loop itself, shared with Tune trials (which run it in-process).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ray_ser.corpora.folds import FoldAssignment
from ray_ser.corpora.manifest import DIMENSIONS
from ray_ser.fm.registry import DEFAULT_MODEL

if TYPE_CHECKING:  # polars is only needed where tables are written, not in a worker's loop
    import polars as pl

log = logging.getLogger(__name__)

BEST_DIR = "best"
STATE_FILE = "state.pt"


class TrainConfig(BaseModel):
    """Everything that defines a training run; ``best_config.json`` of a Tune search is one of these."""

    model_config = ConfigDict(extra="forbid")

    store: str = "store"
    model: str = DEFAULT_MODEL
    corpora: list[str] = []
    """Corpora to train on (empty: every labelled utterance of the store)."""
    layer: int | None = None
    """None: chosen per outer fold on its training speakers (ray_ser.analysis.layer_selection)."""
    layers: list[int] = []
    """Several layers, each frame their vectors concatenated in this order (overrides ``layer``; the mask, when
    keep_ratio < 1, is each layer's own fold mask)."""
    auto_layers: int = Field(1, ge=1)
    """Without ``layer``/``layers``: concatenate each outer fold's this many best layers by the layer criterion on
    its training speakers (ray_ser.analysis.layer_selection.ranked_layers), in layer order."""
    conditions: list[str] = ["clean"]
    """Training copies: more than one = multi-condition training (one copy per utterance and epoch)."""
    keep_ratio: float = 1.0
    n_clusters: int = 0
    """Frame-cluster head's k (0 = off); ids from fold f's k-means centroids of the same layer."""
    cluster_weight: float = 0.1
    adv_weight: float = 0.0
    """Gradient-reversal weight of the domain head (0 = head off; seed 002 uses 0.01)."""
    domain: Literal["speaker", "corpus"] | None = None
    target: Literal["pdf", "onehot"] = "pdf"
    dimensional: bool = True
    """A/V/D head with the CCC loss when the corpus has those scores."""
    arch: Literal["tcgru", "mlp"] = "tcgru"
    pooling: Literal["attention", "mean", "last"] = "attention"
    conv_channels: int = 256
    gru_hidden: int = 256
    embed_dim: int = 128
    mlp_hidden: int = 256
    """MLP hidden width (0: a linear model on the pooled input)."""
    dropout: float = 0.2
    spec_augment: bool = True
    lr: float = 5e-4
    weight_decay: float = 0.0
    batch_size: int = 64
    epochs: int = 30
    patience: int = 8
    refit: bool = False
    """After early stopping on the inner validation speakers, train a fresh model on all of the fold's training
    speakers (inner + validation) for the selected number of epochs; that model is the fold's checkpoint."""
    seed: int = 0
    folds: str = "auto"
    """Fold rule when the store has no saliency folds (auto: LOSO up to 12 speakers, else 5 folds)."""
    fold_seed: int = 0
    inner_share: float = 0.15
    inner_folds: int = Field(1, ge=1)
    """1: the selection phase early-stops on one inner split (``inner_share`` of the training speakers). k > 1: the
    epoch count is chosen on the mean validation curve of k speaker-disjoint inner folds of all training speakers
    (each fold trains every epoch), then the model is refit on all of them (implies ``refit``): on a small corpus
    one validation speaker makes a noisy choice."""
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    checkpoint_every_s: float = 30.0
    """A worker reports to Ray Train (the epoch's metrics and a checkpoint of the fold's state) at most this often
    and after the last epoch (0: every epoch). Train V2 takes one report per controller poll (2 s), more than a
    small model's epoch; a killed run redoes at most this much. Every epoch is in the history and TensorBoard."""
    cache_mb: int = 2048
    """A worker's training (and validation) shard up to this size stays in memory after the first epoch's read
    (0: stream from Ray Data every epoch)."""
    use_gpu: bool | None = None
    """None: use GPUs when the cluster has them."""

    @model_validator(mode="after")
    def _cv_refits(self) -> "TrainConfig":
        if self.inner_folds > 1:
            if self.conditions != ["clean"]:
                raise ValueError(f"inner_folds > 1 trains and validates on the clean copies: multi-condition "
                                 f"training ({self.conditions}) needs inner_folds=1")
            self.refit = True  # cross-validation picks an epoch count: only a refit can use it
        return self

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides: Any) -> "TrainConfig":
        data = json.loads(Path(path).read_text())
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


@dataclass
class FoldPlan:
    """What one outer fold trains on, resolved in the driver (all of it speaker-independent of ``fold``)."""

    fold: int
    fold_id: str
    layer: int
    inner: list[str]
    val: list[str]
    test: list[str]
    categories: list[str]
    keep: list[int] | None
    input_dim: int
    n_domains: int
    domains: list[str]
    has_dims: bool
    model_cfg: dict = field(default_factory=dict)
    norm_mean: list[float] | None = None
    norm_std: list[float] | None = None
    """Per-dimension scaler of the input frames, fitted on the inner training utterances (with inner folds: on
    all of the fold's training utterances)."""
    layers: list[int] | None = None
    """Every layer read, concatenated per frame (None: ``layer`` alone)."""
    cv_val: list[list[str]] | None = None
    """With ``inner_folds`` > 1: each inner fold's validation utterances (speaker-disjoint; every training
    utterance is in exactly one), the rest of the fold's training utterances train that inner fold."""

    @property
    def read_layers(self) -> list[int]:
        return list(self.layers) if self.layers else [self.layer]

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


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


def evaluate_batches(model, batches: Iterator[dict], device, target: str) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(metrics, outputs) of ``model`` over collated batches: mean loss, UAR, CCC per dimension; outputs hold
    ``probs``, ``dims``, ``label_index``, ``dims_true``, ``dims_mask`` stacked in batch order."""
    import torch
    from sklearn.metrics import balanced_accuracy_score

    from ray_ser.train.nn import ccc, multitask_loss

    model.eval()
    losses, weights, outs = [], [], {"probs": [], "dims": [], "label_index": [], "dims_true": [], "dims_mask": []}
    with torch.no_grad():
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(batch["x"], batch["lengths"])
            loss, _ = multitask_loss(out, batch, target="pdf" if target == "pdf" else "onehot")
            losses.append(float(loss))
            weights.append(len(batch["lengths"]))
            if "logits" in out:
                outs["probs"].append(torch.softmax(out["logits"].float(), -1).cpu().numpy())
            if "dims" in out:
                outs["dims"].append(out["dims"].float().cpu().numpy())
            outs["label_index"].append(batch["label_index"].cpu().numpy())
            outs["dims_true"].append(batch["dims"].cpu().numpy())
            outs["dims_mask"].append(batch["dims_mask"].cpu().numpy())
    stacked = {k: np.concatenate(v) for k, v in outs.items() if v}
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
                  only: frozenset | None = None) -> Iterator[dict]:
    """Collated batches of a Ray Dataset or DataIterator: shuffled and length-bucketed for training (with the
    epoch's condition per utterance in multi-condition training), in order for evaluation. ``cache`` (a
    :class:`~ray_ser.train.reader.ShardCache`, kept across epochs) holds a small shard in memory after one read;
    ``only``: the utt_ids to keep (an inner fold's part of the shard)."""
    from ray_ser.train.reader import ShardCache, bucketed, collate

    bs = cfg.batch_size
    cache = cache or ShardCache(0)
    if not train:
        for b in cache.chunks(source, bs, only=only):
            yield collate(b, device)
        return
    rng = np.random.default_rng([cfg.seed, epoch])
    chunks = cache.chunks(source, bs * 8 * max(1, len(cfg.conditions)), rng, only=only)
    for b in bucketed(chunks, bs, rng, epoch, cfg.seed, cfg.conditions):
        yield collate(b, device)


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
                   "last_score": -float("inf"), "scores": [], "history": []}
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
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(tb_dir)

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
                                   self.subsets.get("train")):
            if self.aug is not None:
                batch["x"] = self.aug.train()(batch["x"], batch["lengths"])
            out = self.model(batch["x"], batch["lengths"])
            loss, parts = multitask_loss(out, batch, target=cfg.target, weights=self.weights)
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
            val_metrics, _ = evaluate_batches(
                self.net, epoch_batches(self.val_source, cfg, epoch, False, self.device, self.caches["val"],
                                        self.subsets.get("val")),
                self.device, cfg.target)
            score = _val_score(val_metrics)
        if score > st["best_score"]:
            st.update(best_score=score, best_epoch=epoch, bad_epochs=0,
                      best_model={k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()})
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
    cv = state["cv"] if state else {"round": 0, "curves": [], "history": []}
    curves, history = list(cv["curves"]), list(cv["history"])
    pool = frozenset([*plan.inner, *plan.val])
    cache = shard_cache(cfg)
    round_cfg = cfg.model_copy(update={"patience": cfg.epochs + 1})  # whole curves: the mean picks the epoch
    options = {k: v for k, v in runner_options.items() if k not in ("prepare", "tb_dir")}
    tb = runner_options.get("tb_dir")

    def reporter(r: int) -> Callable[[dict, dict], None]:
        extra = {"phase": "cv", "cv": {"round": r, "curves": curves, "history": history}}
        return lambda metrics, st: report({**metrics, "inner_fold": r}, {**st, **extra})

    for r in range(len(curves), len(plan.cv_val)):
        val = frozenset(plan.cv_val[r])
        final = fit_epochs(round_cfg, plan, pool_source, pool_source, reporter(r),
                           state=state if state and state["cv"]["round"] == r else None, **options,
                           tb_dir=f"{tb}/inner_{r}" if tb else None, train_split=f"train_r{r}", val_split=f"val_r{r}",
                           caches={"train": cache, "val": cache}, subsets={"train": pool - val, "val": val})
        curves, history = [*curves, list(final["scores"])], [*history, *final["history"]]
    mean = np.mean(np.asarray(curves, dtype=float), axis=0)
    best = int(np.argmax(mean))
    return {"best_epoch": best, "best_score": float(mean[best]), "epoch": len(mean),
            "history": history + mean_curves(history, len(curves))}


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
        selected, state = {k: state[k] for k in ("best_epoch", "best_score", "epoch", "history")}, None
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
    best epoch and validation score, and the history of both phases."""
    if state.get("phase") != "refit":
        return state
    selected = state["selected"]
    return {**state, "best_epoch": selected["best_epoch"], "best_score": selected["best_score"],
            "refit_epochs": state["epoch"], "history": selected["history"] + state["history"]}


def save_state(state: dict, directory: str | os.PathLike) -> Path:
    import torch

    path = Path(directory) / STATE_FILE
    torch.save(state, path)
    return path


def load_state(directory: str | os.PathLike) -> dict:
    import torch

    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: :func:`fit_fold` on this worker's shards of the fold's datasets (its part of "train" and
    "refit", all of "val" and "pool"); rank 0 writes the checkpoints (resumable state, throttled by
    ``checkpoint_every_s``) and the TensorBoard scalars."""
    import ray.train
    import ray.train.torch
    import torch

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
    fit_fold(cfg, plan, shard.get("train"), shard.get("val"), report, refit_source=shard.get("refit"),
             pool_source=shard.get("pool"), state=state, device=device, prepare=ray.train.torch.prepare_model,
             rank=rank, tb_dir=config.get("tb_dir"))
    if last["unsent"] is not None:  # the last epoch's state, whatever the clock said (the same on every rank)
        report(*last["unsent"], final=True)


# ---- planning a fold ------------------------------------------------------------------------------
def resolve_assignment(cfg: TrainConfig, condition: str = "clean") -> FoldAssignment:
    """The stored saliency's fold assignment (masks and centroids were made with it), else the same rule
    computed from the store."""
    from ray_ser.analysis import saliency_store as ss

    try:
        return ss.stored_assignment(cfg.store, cfg.model, condition)
    except KeyError:
        return ss.fold_assignment(cfg.store, cfg.model, condition, cfg.folds, cfg.fold_seed)


def _in_corpora(cfg: TrainConfig, labels_rows: dict, utts: Sequence[str]) -> list[str]:
    if not cfg.corpora:
        return list(utts)
    return [u for u in utts if labels_rows[u]["corpus"] in cfg.corpora]


def model_config(cfg: TrainConfig, input_dim: int, n_classes: int, has_dims: bool, n_domains: int) -> dict:
    """The fold model's :class:`~ray_ser.train.nn.ModelConfig` fields from the run's config and what the fold holds."""
    return {"input_dim": input_dim, "arch": cfg.arch, "pooling": cfg.pooling, "conv_channels": cfg.conv_channels,
            "gru_hidden": cfg.gru_hidden, "embed_dim": cfg.embed_dim, "mlp_hidden": cfg.mlp_hidden,
            "dropout": cfg.dropout, "n_classes": n_classes, "n_dims": 3 if (has_dims and cfg.dimensional) else 0,
            "n_domains": n_domains, "adv_weight": cfg.adv_weight, "n_clusters": cfg.n_clusters}


def plan_fold(cfg: TrainConfig, assignment: FoldAssignment, fold: int,
              layer: int | Sequence[int] | None = None) -> tuple[FoldPlan, Any, np.ndarray | None]:
    """(plan, labels, centroids) of outer ``fold``: inner split, layer(s), mask and centroids, all fitted or
    chosen on the fold's training speakers (``layer``: the fold's automatic choice, one layer or several, when
    the caller made it)."""
    from ray_ser.analysis import saliency_store as ss
    from ray_ser.store.core import as_store
    from ray_ser.train.reader import frame_stats, input_layers, load_labels

    store = as_store(cfg.store)
    inner, val = assignment.inner_split(fold, cfg.inner_share, cfg.seed)
    test = assignment.test_utts(fold)
    labels = load_labels(store, [*inner, *val, *test], domain_key=cfg.domain)
    inner, val, test = (_in_corpora(cfg, labels.rows, u) for u in (inner, val, test))
    if not inner or not val:
        raise ValueError(f"fold {fold}: no inner training or validation utterances of corpora {cfg.corpora}")
    cv_val = None
    if cfg.inner_folds > 1:  # every training speaker validates once; scaler and domains from all of them
        from ray_ser.analysis.layer_selection import inner_folds

        pool = [*inner, *val]
        ids = inner_folds([labels.rows[u]["speaker"] for u in pool], [labels.rows[u]["label"] for u in pool],
                          cfg.inner_folds, cfg.seed)
        cv_val = [[u for u, i in zip(pool, ids) if i == k] for k in range(int(ids.max()) + 1)]
    fitted_on = [*inner, *val] if cv_val else inner
    labels = load_labels(store, [*inner, *val, *test], domain_utts=fitted_on, domain_key=cfg.domain)
    if cfg.layers:
        read = list(cfg.layers)
    elif cfg.layer is not None:
        read = [cfg.layer]
    elif layer is not None:
        read = input_layers(layer)
    else:
        read = auto_layers(cfg, assignment, [fold])[fold]
    layer = read[0]
    dim = int(store.embeddings(cfg.model).schema.field("mean").type.list_size)
    keep = None
    if cfg.keep_ratio < 1.0:  # each layer's own mask of fold f, offset to its place in the concatenated frame
        parts = []
        for i, one in enumerate(read):
            try:
                mask = ss.saliency_mask(store, cfg.model, one, cfg.keep_ratio, fold=fold, fold_id=assignment.id)
            except (KeyError, ValueError):  # no stored saliency for this assignment: compute it on f's training speakers
                mask = ss.mask_on_utts(store, cfg.model, one, assignment.train_utts(fold), cfg.keep_ratio)
            parts.append(np.flatnonzero(mask) + i * dim)
        keep = np.concatenate(parts).tolist()
    dim *= len(read)
    centroids = None
    if cfg.n_clusters and len(read) > 1:
        raise ValueError(f"the frame-cluster head predicts one layer's k-means ids: set n_clusters=0 to train on "
                         f"layers {read}")
    if cfg.n_clusters:
        from ray_ser.analysis.clusters import ensure_centroids

        centroids = ensure_centroids(store, cfg.model, layer, cfg.n_clusters, assignment, fold, seed=cfg.seed)
    has_dims = any(all(labels.rows[u].get(d) is not None for d in DIMENSIONS) for u in fitted_on)
    n_domains = len(labels.domains) if cfg.adv_weight > 0 else 0
    model_cfg = model_config(cfg, len(keep) if keep is not None else dim, len(labels.categories), has_dims, n_domains)
    norm_mean, norm_std = frame_stats(store, cfg.model, read, fitted_on, cfg.conditions, keep)
    plan = FoldPlan(fold, assignment.id, layer, inner, val, test, labels.categories, keep, model_cfg["input_dim"],
                    n_domains, labels.domains if n_domains else [], bool(model_cfg["n_dims"]), model_cfg,
                    norm_mean.tolist(), norm_std.tolist(), read if len(read) > 1 else None, cv_val)
    return plan, labels, centroids


def plan_mask(cfg: TrainConfig, plan: FoldPlan) -> np.ndarray | None:
    """The plan's kept dimensions as a bool mask over the (concatenated) input layers' dims."""
    if plan.keep is None:
        return None
    mask = np.zeros(_layer_dim(cfg) * len(plan.read_layers), bool)
    mask[plan.keep] = True
    return mask


def auto_layers(cfg: TrainConfig, assignment: FoldAssignment, folds: Sequence[int]) -> dict[int, list[int]]:
    """{fold: the layers it reads when the config names none}: its ``cfg.auto_layers`` best layers on its training
    speakers, in layer order (from the stored ranking when there is one)."""
    from ray_ser.analysis.layer_selection import ranked_layers

    ranked, source = ranked_layers(cfg.store, cfg.model, assignment, folds, cfg.auto_layers)
    log.info("layers per fold from %s: %s", source, ranked)
    return {f: sorted(v) for f, v in ranked.items()}


def fold_datasets(cfg: TrainConfig, plan: FoldPlan, labels, centroids) -> dict:
    """The fold's materialised Ray Datasets: "train" (inner speakers, every training condition), "val"
    (validation speakers, clean) and, for a refit, "refit" (inner + validation speakers, every training condition).
    With inner folds (``plan.cv_val``): "refit" and, the same rows unsplit across workers, "pool"."""
    from ray_ser.train.reader import frames_dataset

    common = {"labels": labels, "mask": plan_mask(cfg, plan), "centroids": centroids}
    layers = plan.read_layers
    out = {}
    if not plan.cv_val:
        out["train"] = frames_dataset(cfg.store, cfg.model, layers, plan.inner, conditions=cfg.conditions,
                                      **common).materialize()
        out["val"] = frames_dataset(cfg.store, cfg.model, layers, plan.val, conditions=["clean"], **common).materialize()
    if cfg.refit:  # inner folds imply a refit
        out["refit"] = frames_dataset(cfg.store, cfg.model, layers, [*plan.inner, *plan.val], conditions=cfg.conditions,
                                      **common).materialize()
    if plan.cv_val:  # one read serves both
        out["pool"] = out["refit"]
    return out


def _layer_dim(cfg: TrainConfig) -> int:
    from ray_ser.store.core import as_store

    return int(as_store(cfg.store).embeddings(cfg.model).schema.field("mean").type.list_size)


# ---- checkpoints evaluation reads -------------------------------------------------------------------
def write_best(out_dir: Path, cfg: TrainConfig, plan: FoldPlan, state: dict) -> Path:
    """``DIR/fold_<f>/best/{model.pt,config.json}``: the best epoch's weights and everything needed to rebuild
    the model and its input (layer, mask, categories) without other inputs. Written atomically."""
    import torch

    final = out_dir / f"fold_{plan.fold}" / BEST_DIR
    tmp = final.with_name(BEST_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state["best_model"], tmp / "model.pt")
    info = {"train": cfg.model_dump(), "plan": plan.to_dict(), "best_epoch": state["best_epoch"],
            "best_val_score": state["best_score"], "epochs_run": state["epoch"]}
    if state.get("phase") == "refit":
        info.update(epochs_run=state["selected"]["epoch"], refit_epochs=state["refit_epochs"])
    (tmp / "config.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


@dataclass
class FoldModel:
    """A fold's best model, ready to predict: the module (eval mode), its config and plan."""

    module: Any
    cfg: TrainConfig
    plan: FoldPlan
    path: Path

    @property
    def mask(self) -> np.ndarray | None:
        return plan_mask(self.cfg, self.plan)


def load_fold_model(path: str | os.PathLike, store: str | None = None) -> FoldModel:
    """Rebuild a fold's best model from ``DIR/fold_<f>/best`` (``store`` overrides the recorded store URI)."""
    import torch

    path = Path(path)
    info = json.loads((path / "config.json").read_text())
    cfg = TrainConfig(**info["train"])
    if store is not None:
        cfg.store = store
    plan = FoldPlan(**info["plan"])
    module = build_fold_model(plan)
    module.load_state_dict(torch.load(path / "model.pt", map_location="cpu"))
    return FoldModel(module.eval(), cfg, plan, path)


def fold_checkpoints(run_dir: str | os.PathLike) -> dict[int, Path]:
    """{fold: best checkpoint folder} of a training run folder."""
    out = {}
    for d in sorted(Path(run_dir).glob(f"fold_*/{BEST_DIR}")):
        if (d / "config.json").exists() and (d / "model.pt").exists():
            out[int(d.parent.name.split("_", 1)[1])] = d
    return out


# ---- the driver -------------------------------------------------------------------------------------
def config_hash(cfg: TrainConfig) -> str:
    """8 hex digits naming a configuration: a Ray Train run resumes only a run of the same configuration."""
    import hashlib

    return hashlib.sha1(json.dumps(defining(cfg.model_dump()), sort_keys=True).encode()).hexdigest()[:8]


RUNTIME_FIELDS = ("cache_mb", "checkpoint_every_s")
"""TrainConfig fields that change how a run is executed, not what it learns (a resumed run may change them)."""


def defining(config: dict) -> dict:
    """A config dict without its runtime-only fields: what two runs must share to be the same run."""
    return {k: v for k, v in config.items() if k not in RUNTIME_FIELDS}


def _scaling(cfg: TrainConfig):
    import ray
    from ray.train import ScalingConfig

    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else ray.cluster_resources().get("GPU", 0) >= 1
    return ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                         resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if use_gpu else {})})


def train_fold(cfg: TrainConfig, assignment: FoldAssignment, fold: int, out_dir: str | os.PathLike,
               layer: int | Sequence[int] | None = None) -> dict:
    """Train outer ``fold`` with Ray Train (resuming its run if one was interrupted) and write its best
    checkpoint; returns the fold's summary (best epoch and validation score, seconds, layer)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    out_dir = Path(out_dir).resolve()
    t0 = time.perf_counter()
    plan, labels, centroids = plan_fold(cfg, assignment, fold, layer)
    datasets = fold_datasets(cfg, plan, labels, centroids)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(), "plan": plan.to_dict(), "datasets": sorted(datasets),
                           "tb_dir": str(out_dir / "tensorboard" / f"fold_{fold}")},
        scaling_config=_scaling(cfg),
        run_config=RunConfig(name=f"fold_{fold}-{config_hash(cfg)}", storage_path=str(out_dir / "ray_train"),
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             failure_config=FailureConfig(max_failures=2)),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[n for n in ("train", "refit") if n in datasets]),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"fold {fold}: training reported no checkpoint ({result.error})")
    with result.checkpoint.as_directory() as d:
        state = final_state(load_state(d))
    write_best(out_dir, cfg, plan, state)
    epochs_frame(state["history"]).write_parquet(out_dir / f"fold_{fold}" / "epochs.parquet")
    return {"fold": fold, "layer": plan.layer, "layers": plan.read_layers, "best_epoch": state["best_epoch"], "best_val_score": state["best_score"],
            "epochs": state.get("selected", state)["epoch"], "refit_epochs": state.get("refit_epochs"),
            "seconds": time.perf_counter() - t0, "n_train": len(plan.inner),
            "n_val": len(plan.val), "n_test": len(plan.test)}


def epochs_frame(rows: list[dict]) -> pl.DataFrame:
    """History rows as the contract's epochs table (fold, epoch, split, metric, value)."""
    import polars as pl

    return pl.DataFrame(rows, schema={"fold": pl.Int32, "epoch": pl.Int32, "split": pl.Utf8, "metric": pl.Utf8,
                                      "value": pl.Float64})


def collect_epochs(out_dir: str | os.PathLike) -> pl.DataFrame:
    """``DIR/epochs.parquet`` from the folds' own tables (fold, epoch, split, metric, value)."""
    import polars as pl

    parts = [pl.read_parquet(p) for p in sorted(Path(out_dir).glob("fold_*/epochs.parquet"))]
    df = pl.concat(parts) if parts else epochs_frame([])
    df = df.sort(["fold", "epoch", "split", "metric"])
    tmp = Path(out_dir) / "epochs.parquet.tmp"
    df.write_parquet(tmp)
    tmp.replace(Path(out_dir) / "epochs.parquet")
    return df


def select_folds(spec: str | Sequence[int], assignment: FoldAssignment) -> list[int]:
    """``all`` or a comma-separated list of outer folds (fold -1 is refused: it has no test speakers)."""
    if isinstance(spec, str):
        folds = assignment.fold_ids if spec == "all" else [int(f) for f in spec.split(",") if f.strip()]
    else:
        folds = [int(f) for f in spec]
    bad = [f for f in folds if f not in assignment.fold_ids]
    if bad:
        raise ValueError(f"folds {bad} are not outer folds of assignment {assignment.id} ({assignment.description}): "
                         f"choose among {assignment.fold_ids}")
    return folds


def run(cfg: TrainConfig, folds: str | Sequence[int], out_dir: str | os.PathLike,
        on_fold: Callable[[dict], None] | None = None) -> list[dict]:
    """Train every requested outer fold into ``out_dir`` (folds with a finished best checkpoint of the same
    configuration are skipped), then write ``epochs.parquet`` and ``run.json``."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    assignment = resolve_assignment(cfg)
    summaries = []
    done = fold_checkpoints(out_dir)
    wanted = select_folds(folds, assignment)
    layers: dict[int, list[int]] = {}
    if cfg.layer is None and not cfg.layers:  # every fold's automatic layers from one read (the stored ranking when there is one)
        layers = auto_layers(cfg, assignment, wanted)
    for fold in wanted:
        if fold in done and defining(json.loads((done[fold] / "config.json").read_text())["train"]) == defining(cfg.model_dump()):
            log.info("fold %d already trained: %s", fold, done[fold])
            info = json.loads((done[fold] / "config.json").read_text())
            summary = {"fold": fold, "layer": info["plan"]["layer"],
                       "layers": info["plan"].get("layers") or [info["plan"]["layer"]], "best_epoch": info["best_epoch"],
                       "best_val_score": info["best_val_score"], "epochs": info["epochs_run"], "seconds": 0.0,
                       "skipped": True}
        else:
            summary = train_fold(cfg, assignment, fold, out_dir, layers.get(fold))
        summaries.append(summary)
        if on_fold is not None:
            on_fold(summary)
    collect_epochs(out_dir)
    (out_dir / "run.json").write_text(json.dumps({"config": cfg.model_dump(), "fold_id": assignment.id,
                                                  "folds": assignment.description, "summaries": summaries}, indent=1))
    return summaries
