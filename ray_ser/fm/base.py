"""The interface every speech foundation model presents to ray_ser: waveforms in, all hidden states out (or, with
``max_layer``, those up to one layer, the layers above it not run)."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


@dataclass
class EncoderOutput:
    """All hidden states of one batch.

    ``hidden`` is (layers, batch, frames, dim): index 0 is the embedding output (before the first
    transformer layer), index i the output of layer i; a forward given ``max_layer`` k returns indices 0..k only,
    each equal to the full forward's. ``lengths[b]`` counts the frames of utterance b that cover real audio; frames
    past it are padding and must not enter pooling.
    """

    hidden: torch.Tensor
    lengths: torch.Tensor

    @property
    def num_layers(self) -> int:
        return self.hidden.shape[0]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else the first CUDA device when there is one, else the CPU (always the CPU under the
    test-only fake-GPU switch, :data:`ray_ser.cluster_resources.FAKE_GPUS_ENV`)."""
    from ray_ser.cluster_resources import fake_gpus

    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() and not fake_gpus() else "cpu")


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""Model precisions by the name ``--dtype`` takes (besides ``auto``)."""


def resolve_dtype(name: str, device: str | torch.device) -> str:
    """The precision a run uses: ``auto`` is float16 on CUDA and float32 elsewhere; other names pass through.

    The store records the resolved name, so a CPU run and a GPU run under ``auto`` never mix silently."""
    if name == "auto":
        return "float16" if torch.device(device).type == "cuda" else "float32"
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use auto, {', '.join(DTYPES)}")
    return name


def torch_dtype(name: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """The torch dtype for a ``--dtype`` name (``auto`` resolved for ``device``) or a torch dtype itself."""
    if isinstance(name, torch.dtype):
        return name
    return DTYPES[resolve_dtype(name, device)]


class SpeechEncoder(abc.ABC):
    """A frozen speech model that returns every layer's hidden states for a padded batch.

    ``max_layer`` (of ``__call__``, ``run`` and ``_forward``; None by default: every layer) is the highest hidden
    state the caller reads: the transformer layers above it are not run and the output holds states 0..max_layer,
    each exactly what the full forward returns for it. The last state of some encoders gets the encoder's final
    layer norm (Whisper's); a state below the last never does, so a truncated forward returns it raw, and
    ``max_layer`` = the last state runs everything. Truncating a wav2vec2-family model swaps its encoder's layer
    list for the call: one such encoder must not serve concurrent calls.
    """

    name: str
    sample_rate: int = 16000
    hidden_size: int
    num_layers: int  # hidden states returned, embedding output included
    weights_hash: str
    device: torch.device

    @abc.abstractmethod
    def num_frames(self, num_samples: int) -> int:
        """Frames the model emits for ``num_samples`` of audio at ``sample_rate``."""

    def sequence_frames(self, num_samples: int) -> int:
        """Frames the transformer layers process for ``num_samples`` (padding context included): what a batch costs."""
        return self.num_frames(num_samples)

    def prepare(self, waves: Sequence[np.ndarray]):
        """The batch's model input on the device, features included; ``run`` takes it (default: the waves)."""
        return waves

    def run(self, inputs, max_layer: int | None = None) -> EncoderOutput:
        """The network alone on ``prepare``'s output, so benchmarks can time it apart (default: ``_forward``)."""
        return self._forward(inputs, max_layer)

    @abc.abstractmethod
    def _forward(self, waves: Sequence[np.ndarray], max_layer: int | None = None) -> EncoderOutput:
        """Run the batch; waves are mono float32 at ``sample_rate``; ``max_layer``: see the class."""

    @torch.inference_mode()
    def __call__(self, waves: Sequence[np.ndarray], max_layer: int | None = None) -> EncoderOutput:
        if not waves:
            raise ValueError("empty batch")
        return self._forward(waves, max_layer)

    def layers_to_run(self, max_layer: int | None) -> int | None:
        """The transformer layers a forward needs for hidden states 0..``max_layer``: None (all of them, the full
        forward) when ``max_layer`` is None or the last state, else ``max_layer``; a state the model lacks raises."""
        if max_layer is None:
            return None
        last = self.num_layers - 1
        if not 0 <= int(max_layer) <= last:
            raise ValueError(f"{self.name}: max_layer {max_layer} is not a hidden state of this model (0..{last})")
        return None if int(max_layer) == last else int(max_layer)

    def describe(self) -> dict:
        """What the store records about the model that made an embedding."""
        return {
            "model": self.name,
            "weights_hash": self.weights_hash,
            "sample_rate": self.sample_rate,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
        }


def key_padding_mask(context: Sequence[int], total: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """Additive attention mask (batch, 1, total, total) hiding keys at or past each row's ``context``.

    Returns None when no row needs masking, so full-length batches take the fast unmasked path.
    """
    ctx = torch.as_tensor(list(context), device=device)
    if bool((ctx >= total).all()):
        return None
    keys = torch.arange(total, device=device)
    hidden = keys[None, :] >= ctx[:, None]  # (batch, total)
    mask = torch.zeros(len(context), 1, 1, total, dtype=dtype, device=device)
    mask.masked_fill_(hidden[:, None, None, :], torch.finfo(dtype).min)
    return mask.expand(-1, 1, total, total)
