"""Folds of a pooled model (the MLP or linear head, which takes the mean frame first, without SpecAugment, which
masks frames before the mean): every utterance's mean frame is read once for all of a run's folds
(:class:`~ray_ser.train.reader.PooledFrames`) and each fold trains on its rows in memory, as one Ray task, several
folds at once as the cluster's CPUs allow, without a Ray Train worker group, dataset plan or shard read per fold."""

from __future__ import annotations

import time

from ray_ser.store import Store
from ray_ser.train.config import TrainConfig
from ray_ser.train.plan import FoldPlan


def pooled_model(cfg: TrainConfig) -> bool:
    """Whether ``cfg``'s model sees nothing of a frame but the utterance's mean (and ``cfg.pooled`` allows the
    pooled path): the MLP/linear head without SpecAugment or a frame-cluster head."""
    return bool(cfg.pooled) and cfg.arch == "mlp" and not cfg.spec_augment and not cfg.n_clusters


def fold_sources(cfg: TrainConfig, plan: FoldPlan, labels, pooled) -> dict:
    """The fold's splits as in-memory sources of mean frames, named and chosen as
    :func:`~ray_ser.train.plan.fold_datasets` names and chooses the frame path's datasets."""
    from ray_ser.train.reader import InMemorySource

    common = {"layers": plan.read_layers, "labels": labels, "keep": plan.keep, "scale": plan.corpus_norm}
    out = {}
    if not plan.cv_val:
        out["train"] = pooled.examples(plan.inner, cfg.conditions, **common)
        out["val"] = pooled.examples(plan.val, ["clean"], **common)
    if cfg.refit:
        out["refit"] = pooled.examples([*plan.inner, *plan.val], cfg.conditions, **common)
    if plan.cv_val:
        out["pool"] = out["refit"]
    return {name: InMemorySource(rows) for name, rows in out.items()}


KEPT = ("best_model", "best_epoch", "best_score", "epoch", "history", "phase", "selected", "refit_epochs",
        "best_temperature", "scores")
"""What a pooled fold's task sends back of its final state (what the checkpoint and the summary need)."""


def fit_pooled(cfg_dict: dict, plan_dict: dict, labels, pooled, tb_dir: str | None = None,
               snapshot: dict | None = None, use_gpu: bool = False) -> dict:
    """One fold's :func:`~ray_ser.train.loop.fit_fold` on its rows of ``pooled`` (a
    :class:`~ray_ser.train.reader.PooledFrames`) in memory, as a Ray Train worker runs it (rank 0, the same seeds
    and thread count, so the same model); returns its final state and ``compute_s``."""
    import torch

    from ray_ser import storage
    from ray_ser.train.loop import fit_fold

    storage.restore(snapshot)
    cfg, plan = TrainConfig(**cfg_dict), FoldPlan(**plan_dict)
    sources = fold_sources(cfg, plan, labels, pooled)
    torch.set_num_threads(max(1, int(round(cfg.cpus_per_worker))))
    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    state = fit_fold(cfg, plan, sources.get("train"), sources.get("val"), lambda metrics, st: None,
                     refit_source=sources.get("refit"), pool_source=sources.get("pool"), device=device, rank=0,
                     tb_dir=tb_dir)
    return {**{k: state[k] for k in KEPT if k in state}, "compute_s": time.perf_counter() - t0}


def pooled_predictions(fm, store: Store, pooled, conditions, utt_ids=None):
    """A fold model's predictions (labels read from ``store``) (utt_id, condition, probs, pred_<dim> on each corpus's own scale) on its test
    speakers' mean frames (``pooled``: a :class:`~ray_ser.train.reader.PooledFrames` holding them): what
    :func:`ray_ser.evaluate.predict.predict_fold` gives a pooled model (before its temperature, which keeps the
    argmax) without a predictor actor and a frame read per fold."""
    import numpy as np
    import polars as pl
    import torch

    from ray_ser.corpora.manifest import DIMENSIONS
    from ray_ser.train.reader import load_labels, scale_dims

    plan = fm.plan
    utts = list(plan.test if utt_ids is None else utt_ids)
    labels = load_labels(store, utts, label_set=fm.cfg.label_set)
    rows = pooled.examples(utts, conditions, plan.read_layers, labels, keep=plan.keep, scale=plan.corpus_norm)
    n = len(rows["utt_id"])
    df = pl.DataFrame({"utt_id": list(rows["utt_id"]), "condition": list(rows["condition"])},
                      schema={"utt_id": pl.Utf8, "condition": pl.Utf8})
    if not n:
        return df
    with torch.no_grad():
        out = fm.module(torch.from_numpy(np.stack(list(rows["x"]))), torch.ones(n, dtype=torch.long))
    if "logits" in out:
        probs = torch.softmax(out["logits"].float(), -1).numpy().astype(np.float32)
        df = df.with_columns(pl.Series("probs", probs.tolist(), dtype=pl.List(pl.Float32)))
    if "dims" in out:
        dims = out["dims"].float().numpy()
        if plan.dim_scale:
            dims = scale_dims(dims, list(rows["corpus"]), plan.dim_scale, inverse=True)
        df = df.with_columns(*[pl.Series(f"pred_{d}", dims[:, j].astype(np.float32)) for j, d in enumerate(DIMENSIONS)])
    return df
