"""Gradient reversal (Ganin & Lempitsky): identity forward, gradient times -weight backward.

Put in front of a domain classifier, it trains the encoder to make the domain (speaker or corpus) hard to predict.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: float) -> Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return -ctx.weight * grad, None


def grad_reverse(x: Tensor, weight: float = 1.0) -> Tensor:
    """Return ``x`` unchanged; in the backward pass its gradient is multiplied by ``-weight``."""
    return _GradReverse.apply(x, float(weight))


class GradientReversal(nn.Module):
    """Module form of :func:`grad_reverse`; ``weight`` (w_d) may be changed between steps (e.g. a schedule)."""

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.weight)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"
