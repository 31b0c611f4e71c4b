"""SpecAugment-style time and feature masking on (B, T, D) feature frames, for training only."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ray_ser.train.nn.pooling import lengths_to_mask


def _band_mask(n_masks: int, max_width: Tensor, size: Tensor, length: int, g: torch.Generator) -> Tensor:
    """(B, length) bool: per row ``n_masks`` bands of width U{0..max_width} placed uniformly inside [0, size)."""
    B = size.shape[0]
    width = (torch.rand(B, n_masks, generator=g) * (max_width[:, None] + 1)).floor()
    start = (torch.rand(B, n_masks, generator=g) * (size[:, None] - width + 1)).floor()
    pos = torch.arange(length, dtype=torch.float32)[None, None, :]
    return ((pos >= start[..., None]) & (pos < (start + width)[..., None])).any(1)


class SpecAugment(nn.Module):
    """Zero ``time_masks`` bands of frames and ``feature_masks`` bands of dimensions, on real frames only.

    Band widths are drawn up to ``time_width`` x the utterance's length and ``feature_width`` x D. Active only in
    training mode; draws come from its own ``torch.Generator`` (``seed``), so a run is reproducible.
    """

    def __init__(self, time_masks: int = 2, time_width: float = 0.1, feature_masks: int = 2,
                 feature_width: float = 0.1, seed: int | None = None):
        super().__init__()
        if min(time_masks, feature_masks) < 0 or not (0 <= time_width <= 1 and 0 <= feature_width <= 1):
            raise ValueError("SpecAugment: mask counts must be >= 0 and widths fractions in [0, 1]")
        self.time_masks, self.time_width = time_masks, time_width
        self.feature_masks, self.feature_width = feature_masks, feature_width
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)

    def manual_seed(self, seed: int) -> "SpecAugment":
        """Re-seed the mask draws (e.g. per worker or per epoch)."""
        self.generator.manual_seed(seed)
        return self

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """A masked copy of ``x`` in training mode; ``x`` itself in eval mode."""
        if not self.training or (self.time_masks == 0 and self.feature_masks == 0):
            return x
        B, T, D = x.shape
        size = lengths.detach().to("cpu", torch.float32)
        real = lengths_to_mask(lengths.detach().cpu(), T)
        time = _band_mask(self.time_masks, (size * self.time_width).floor(), size, T, self.generator)
        feat = _band_mask(self.feature_masks, torch.full((B,), float(math.floor(D * self.feature_width))),
                          torch.full((B,), float(D)), D, self.generator)
        drop = (time[:, :, None] | feat[:, None, :]) & real[:, :, None]
        return x.masked_fill(drop.to(x.device), 0.0)

    def extra_repr(self) -> str:
        return (f"time_masks={self.time_masks}, time_width={self.time_width}, "
                f"feature_masks={self.feature_masks}, feature_width={self.feature_width}")
