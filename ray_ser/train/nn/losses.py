"""Losses of the heads: CCC for A/V/D regression, soft-target cross-entropy / KL, frame-cluster cross-entropy.

Every loss skips missing targets (masked or NaN rows, -100 ids) and returns a graph-connected zero when nothing
is left, so a batch without a target never breaks ``backward``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ray_ser.corpora.manifest import DIMENSIONS

DEFAULT_CCC_WEIGHTS = {"valence": 1 / 3, "arousal": 1 / 3, "dominance": 1 / 3}
IGNORE_INDEX = -100


def _zero(t: Tensor) -> Tensor:
    """A zero loss still connected to ``t``'s graph (backward works, DDP sees every parameter used)."""
    return t.sum() * 0.0


def ccc(pred: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Concordance correlation coefficient along dim 0 (population statistics); differentiable.

    2 cov / (var_p + var_t + (mean_p - mean_t)^2): a scalar for 1-D inputs, one value per column for 2-D ones.
    """
    mp, mt = pred.mean(0), target.mean(0)
    vp, vt = pred.var(0, unbiased=False), target.var(0, unbiased=False)
    cov = ((pred - mp) * (target - mt)).mean(0)
    return 2 * cov / (vp + vt + (mp - mt) ** 2 + eps)


def ccc_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    weights: Mapping[str, float] | None = None,
    names: Sequence[str] = DIMENSIONS,
) -> Tensor:
    """-(a*CCC_v + b*CCC_a + (1-a-b)*CCC_d) over the dimensions present in the batch.

    ``mask`` (B, K) marks valid targets (default: the finite ones); a dimension with < 2 valid rows is skipped
    and the weights of the rest are renormalised to sum 1. Names missing from ``weights`` get weight 0.
    """
    weights = dict(DEFAULT_CCC_WEIGHTS if weights is None else weights)
    unknown = set(weights) - set(names)
    if unknown:
        raise ValueError(f"ccc_loss: weights for unknown dimensions {sorted(unknown)}; known: {list(names)}")
    if pred.shape != target.shape or pred.dim() != 2 or pred.shape[1] != len(names):
        raise ValueError(f"ccc_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be "
                         f"(B, {len(names)}) for dimensions {list(names)}")
    mask = torch.isfinite(target) if mask is None else mask.bool() & torch.isfinite(target)
    total, weight_sum = _zero(pred), 0.0
    for j, name in enumerate(names):
        w = float(weights.get(name, 0.0))
        rows = mask[:, j]
        if w == 0.0 or int(rows.sum()) < 2:
            continue
        total = total + w * ccc(pred[rows, j], target[rows, j])
        weight_sum += w
    return -total / weight_sum if weight_sum > 0 else total


def _valid_pdf_rows(pdf: Tensor) -> Tensor:
    """Rows of a PDF target that carry a distribution: all finite, non-negative and not all zero."""
    return torch.isfinite(pdf).all(1) & (pdf >= 0).all(1) & (pdf.sum(1) > 0)


def _pdf_rows(logits: Tensor, pdf: Tensor) -> tuple[Tensor, Tensor] | None:
    """(logits, PDF renormalised to sum 1) of the rows with a PDF; None when no row has one. A batch whose rows
    all have one (the usual case) is used as it is, without a masked copy of each tensor (same values)."""
    rows = _valid_pdf_rows(pdf)
    if bool(rows.all()):
        return logits, pdf / pdf.sum(1, keepdim=True)
    if not bool(rows.any()):
        return None
    p = pdf[rows]
    return logits[rows], p / p.sum(1, keepdim=True)


def soft_cross_entropy(logits: Tensor, pdf: Tensor) -> Tensor:
    """-sum_c p_c log softmax(logits)_c, mean over the rows with a PDF (rows renormalised to sum 1).

    Rows whose PDF is all zero or has a NaN are ignored (utterances without a soft target).
    """
    kept = _pdf_rows(logits, pdf)
    if kept is None:
        return _zero(logits)
    logits, p = kept
    return -(p * F.log_softmax(logits, dim=1)).sum(1).mean()


def kl_divergence(logits: Tensor, pdf: Tensor) -> Tensor:
    """KL(p || softmax(logits)), mean over rows with a PDF; soft CE minus the target's entropy (same gradient)."""
    kept = _pdf_rows(logits, pdf)
    if kept is None:
        return _zero(logits)
    logits, p = kept
    return (torch.special.xlogy(p, p) - p * F.log_softmax(logits, dim=1)).sum(1).mean()


def masked_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy on integer labels, mean over labels != -100; zero (not NaN) when none is labelled."""
    labels = labels.to(logits.device).long()
    n = (labels != IGNORE_INDEX).sum()
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / n.clamp(min=1)


def frame_cluster_loss(frame_logits: Tensor, frame_ids: Tensor) -> Tensor:
    """Cross-entropy of every real frame's k-means id (B, T; -100 on padding), mean over real frames."""
    if frame_logits.shape[:2] != frame_ids.shape:
        raise ValueError(f"frame_cluster_loss: frame_logits {tuple(frame_logits.shape)} and frame_ids "
                         f"{tuple(frame_ids.shape)} disagree on (B, T)")
    k = frame_logits.shape[-1]
    return masked_cross_entropy(frame_logits.reshape(-1, k), frame_ids.reshape(-1))
