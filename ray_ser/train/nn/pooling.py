"""Pooling of per-frame outputs (B, T, D) into one vector per utterance, blind to padding."""

from __future__ import annotations

import torch
from torch import Tensor, nn

POOLINGS = ("last", "mean", "attention")


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """Bool (B, max_len) mask, True on each utterance's real frames (the first ``lengths[b]``)."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: Tensor, lengths: Tensor) -> Tensor:
    """Mean of ``x`` (B, T, D) over each utterance's real frames; padding values (even NaN) never enter."""
    if x.shape[1] and bool((lengths == x.shape[1]).all()):  # no padding in the batch: a plain mean, no masked copy
        return x.mean(1)
    mask = lengths_to_mask(lengths, x.shape[1]).unsqueeze(-1)
    return x.masked_fill(~mask, 0.0).sum(1) / lengths.clamp(min=1).unsqueeze(-1).to(x.dtype)


def last_state(x: Tensor, lengths: Tensor) -> Tensor:
    """The output at each utterance's last real frame (the final state of a forward recurrence)."""
    return x[torch.arange(x.shape[0], device=x.device), (lengths - 1).clamp(min=0).to(x.device)]


class AttentionPooling(nn.Module):
    """FLEA-style attention pooling: a learned scalar score per frame, softmax over the real frames only.

    Padding frames get weight exactly 0 (score -inf), so the output does not depend on the amount of padding.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def weights(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Attention weights (B, T): non-negative, 1 in sum over real frames, exactly 0 on padding."""
        mask = lengths_to_mask(lengths.to(x.device), x.shape[1])
        scores = self.score(x.masked_fill(~mask.unsqueeze(-1), 0.0)).squeeze(-1)
        return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        mask = lengths_to_mask(lengths.to(x.device), x.shape[1]).unsqueeze(-1)
        w = self.weights(x, lengths).unsqueeze(-1)
        return (w * x.masked_fill(~mask, 0.0)).sum(1)


class _FunctionPooling(nn.Module):
    """A parameter-free pooling function as a module with forward(x, lengths)."""

    def __init__(self, fn, name: str):
        super().__init__()
        self.fn, self.name = fn, name

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        return self.fn(x, lengths.to(x.device))

    def extra_repr(self) -> str:
        return self.name


def make_pooling(kind: str, dim: int) -> nn.Module:
    """The pooling module named ``kind`` ("last", "mean" or "attention") over ``dim``-wide frames."""
    if kind == "last":
        return _FunctionPooling(last_state, "last")
    if kind == "mean":
        return _FunctionPooling(masked_mean, "mean")
    if kind == "attention":
        return AttentionPooling(dim)
    raise ValueError(f"unknown pooling {kind!r}; expected one of {POOLINGS}")
