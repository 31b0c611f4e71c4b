"""The layer-mix front: a softmax-weighted sum of the input's layers, learned with the head (as s3prl's SUPERB
featurizer and SpeechBrain's weighted SSL model do), so a model reads every stored layer and learns which to use.

It reshapes the last dimension (n_layers * dim) into (n_layers, dim) and sums over layers, so it works alike on
frames (B, T, L*D) and on pooled vectors (B, L*D): the mean over frames and a per-dimension affine scaler commute
with it. The input's normalisation is the fold's standardisation of every layer (the global or per-corpus scaler),
not a layer norm inside the mix, which would not commute with pooling.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

LAYER_MIXES = ("none", "learned")
LOGITS_KEY = "mix.logits"
"""The state-dict name of the mix's logits (behind any wrapper's prefix)."""


class LayerMix(nn.Module):
    """softmax(logits) over ``n_layers`` layers concatenated in the last dimension; the logits start at 0 (every
    layer weighs the same) and need no random draw, so adding the mix leaves the head's initialisation unchanged."""

    def __init__(self, n_layers: int):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"LayerMix: n_layers must be >= 1, got {n_layers}")
        self.n_layers = n_layers
        self.logits = nn.Parameter(torch.zeros(n_layers))

    def weights(self) -> Tensor:
        """The layers' weights (n_layers,), a softmax: positive, summing to 1."""
        return torch.softmax(self.logits, dim=0)

    def forward(self, x: Tensor) -> Tensor:
        """(..., n_layers * dim) -> (..., dim): the weighted sum of the layers' vectors."""
        width = x.shape[-1]
        if width % self.n_layers:
            raise ValueError(f"LayerMix: input width {width} is not {self.n_layers} layers of equal size")
        parts = x.reshape(*x.shape[:-1], self.n_layers, width // self.n_layers)
        return torch.einsum("...ld,l->...d", parts, self.weights().to(x.dtype))


def mix_weights(state: dict) -> list[float] | None:
    """The softmax weights of the mix in a model's state dict (None: the model has no mix)."""
    keys = [k for k in state if k == LOGITS_KEY or k.endswith("." + LOGITS_KEY)]
    if not keys:
        return None
    return torch.softmax(torch.as_tensor(state[keys[0]]).float(), dim=0).tolist()
