"""The model actor's step in plain torch: forward, pooling and the real frames' gather on the device, one copy to host.

``EmbedStep`` is what ``ray_ser.extract.program.EmbedStage`` runs per device batch, kept free of Ray, LanceDB and Lance
(pyarrow is imported only by :func:`arrow_columns`), so ``benchmarks/actor.py`` times exactly this code on a GPU
box where only torch is installed. On the device: mean and population std over each utterance's real frames
(two-pass, float32, one layer at a time so a float16 batch never gets a full float32 copy), and the real
frames of the stored layers gathered in utterance, layer, frame order and cast to float16. They then reach the
host in one copy (into page-locked memory from torch's caching host allocator on CUDA), and Arrow wraps that
buffer without another copy: no whole padded batch on the host, no per-utterance concatenation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ray_ser.fm.base import SpeechEncoder


@dataclass
class StepOutput:
    """One device batch on the host: per utterance ``lengths`` (real frames), ``mean``/``std`` (batch, layers, dim)
    float32, and ``frames``: float16 (rows, dim) of the ``frame_layers`` only, utterance-major, then layer, frame."""

    lengths: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    frames: np.ndarray | None
    frame_layers: tuple[int, ...]


def resolve_frame_layers(frame_layers: Sequence[int] | None, num_layers: int) -> tuple[int, ...]:
    """The sorted layer indices whose frames are stored (None = all; negative counts from the last)."""
    if frame_layers is None:
        return tuple(range(num_layers))
    out = set()
    for layer in frame_layers:
        i = int(layer)
        if not -num_layers <= i < num_layers:
            raise ValueError(f"frame layer {i} out of range: the model has layers 0..{num_layers - 1}")
        out.add(i % num_layers)
    if not out:
        raise ValueError("frame_layers is empty: use frames=False (--no-frames) to store no frames")
    return tuple(sorted(out))


def frame_mask(lengths, total: int, device: torch.device) -> torch.Tensor:
    """(batch, total) bool: True on each utterance's first ``lengths[b]`` frames."""
    lens = torch.as_tensor(lengths, device=device)
    return torch.arange(total, device=device)[None, :] < lens[:, None]


def pool_on_device(hidden: torch.Tensor, lengths) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std over real frames of (layers, batch, frames, dim) -> (batch, layers, dim) float32 each.

    Two-pass so std stays exact; one layer at a time, so float16 states get a float32 copy of one layer only."""
    n_layers, batch, total, dim = hidden.shape
    w = frame_mask(lengths, total, hidden.device).float()[:, :, None]
    count = torch.as_tensor(lengths, device=hidden.device).clamp(min=1).float()[:, None]
    mean = torch.empty(batch, n_layers, dim, dtype=torch.float32, device=hidden.device)
    std = torch.empty_like(mean)
    for layer in range(n_layers):
        h = hidden[layer].float()
        m = (h * w).sum(1) / count
        mean[:, layer] = m
        std[:, layer] = ((((h - m[:, None]) * w) ** 2).sum(1) / count).sqrt()
    return mean, std


def gather_frames(hidden: torch.Tensor, lengths, layers: Sequence[int]) -> torch.Tensor:
    """The real frames of ``layers`` as one (rows, dim) float16 tensor on the device, utterance-major, then layer."""
    n_layers, batch, total, _ = hidden.shape
    keep = torch.zeros(n_layers, dtype=torch.bool, device=hidden.device)
    keep[list(layers)] = True
    mask = frame_mask(lengths, total, hidden.device)[:, None, :] & keep[None, :, None]  # (batch, layers, frames)
    return hidden.permute(1, 0, 2, 3)[mask].to(torch.float16)


def to_host(tensors: Sequence[torch.Tensor | None]) -> list[np.ndarray | None]:
    """numpy copies of device tensors: on CUDA all copied asynchronously into pinned memory, then one sync."""
    out: list[torch.Tensor | None] = []
    cuda = None
    for t in tensors:
        if t is None or t.device.type != "cuda":
            out.append(t)
            continue
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)  # torch's caching host allocator: reused
        host.copy_(t, non_blocking=True)
        out.append(host)
        cuda = t.device
    if cuda is not None:
        torch.cuda.current_stream(cuda).synchronize()
    return [None if t is None else t.numpy() for t in out]


def device_budget_frames(model: SpeechEncoder, fraction: float = 0.5) -> int | None:
    """How many padded sequence frames one model call may hold on a CUDA device (None on the CPU).

    Per frame: every layer's hidden states twice (the model's tuple and their stack), one layer's transient
    (q, k, v, attention output and the 4x FFN: ~16 x dim), pooling's float32 temporaries and the float16 frames."""
    device = torch.device(getattr(model, "device", "cpu"))
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    size = torch.finfo(getattr(model, "dtype", torch.float32)).bits // 8
    per_frame = model.hidden_size * (2 * model.num_layers * size + 16 * size + 3 * 4 + 2 * model.num_layers)
    return max(1, int(fraction * free / per_frame))


def plan_batches(samples: Sequence[int], max_samples: float, seq_frames: Sequence[int] | None = None,
                 max_frames: int | None = None) -> list[list[int]]:
    """Split utterances (indices, shortest first) into model calls whose padded size stays in budget.

    A call's size is its longest utterance times its count: in audio samples (``max_samples``, i.e.
    --max-batch-seconds) and, on a GPU, in the frames the layers process (``max_frames``, from free memory)."""
    groups: list[list[int]] = []
    cur: list[int] = []
    longest = longest_seq = 0
    for i in sorted(range(len(samples)), key=lambda i: samples[i]):
        s = samples[i]
        q = seq_frames[i] if seq_frames is not None else 0
        grow_s, grow_q = max(longest, s), max(longest_seq, q)
        over = grow_s * (len(cur) + 1) > max_samples or (max_frames is not None and grow_q * (len(cur) + 1) > max_frames)
        if cur and over:
            groups.append(cur)
            cur, grow_s, grow_q = [], s, q
        cur.append(i)
        longest, longest_seq = grow_s, grow_q
    return groups + ([cur] if cur else [])


class EmbedStep:
    """Forward, pooling and frames-to-host for one device batch of waveforms (what an extraction actor runs)."""

    def __init__(self, model: SpeechEncoder, frames: bool = True, frame_layers: Sequence[int] | None = None):
        self.model = model
        self.frame_layers = resolve_frame_layers(frame_layers, model.num_layers) if frames else ()

    @torch.inference_mode()
    def __call__(self, waves: Sequence[np.ndarray]) -> StepOutput:
        out = self.model(waves)
        lengths = out.lengths.to(torch.long)
        mean, std = pool_on_device(out.hidden, lengths.to(out.hidden.device))
        frames = gather_frames(out.hidden, lengths.to(out.hidden.device), self.frame_layers) if self.frame_layers else None
        mean, std, frames = to_host([mean, std, frames])
        return StepOutput(lengths.numpy().astype(np.int32), mean, std, frames, self.frame_layers)


def arrow_columns(out: StepOutput, num_layers: int):
    """(mean, std, frames) Arrow arrays for the ``batch x num_layers`` rows of a step, utterance-major.

    Wraps the host buffers without copying; rows of layers whose frames are not stored get null frames."""
    import pyarrow as pa

    batch, dim = len(out.lengths), out.mean.shape[-1]
    mean = pa.FixedSizeListArray.from_arrays(pa.array(out.mean.reshape(-1)), dim)
    std = pa.FixedSizeListArray.from_arrays(pa.array(out.std.reshape(-1)), dim)
    frames_type = pa.list_(pa.list_(pa.float16(), dim))
    if out.frames is None:
        return mean, std, pa.nulls(batch * num_layers, frames_type)
    stored = np.zeros(num_layers, bool)
    stored[list(out.frame_layers)] = True
    per_row = np.where(stored[None, :], out.lengths.astype(np.int64)[:, None], 0).reshape(-1)
    offsets = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int32)
    values = pa.FixedSizeListArray.from_arrays(pa.array(out.frames.reshape(-1)), dim)
    mask = None if stored.all() else pa.array(np.tile(~stored, batch))
    return mean, std, pa.ListArray.from_arrays(pa.array(offsets), values, mask=mask)
