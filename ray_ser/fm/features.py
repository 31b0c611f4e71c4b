"""Model inputs computed batched in torch on the model's device, equal to transformers' per-utterance extractors.

An actor used to compute Whisper's log-mel one utterance at a time in its own Python thread (about half of a
GPU actor's time) and the wav2vec2 family's normalisation in numpy. Here one call prepares the whole batch
where the model runs: the audio goes to the device once (from a pinned buffer on CUDA), and the STFT, mel
projection, per-utterance clamp and normalisation run there. Each utterance keeps exactly its own
semantics (its own reflect padding at its own end, its own maximum, its own mean and variance), so batching
never changes a value; tests compare against transformers' extractors (max |diff| < 1e-5).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

N_FFT = 400  # Whisper's STFT window (25 ms at 16 kHz)
HOP = 160  # samples per mel frame (10 ms)
NORM_EPS = 1e-7  # transformers' Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm


def to_device_batch(waves: Sequence[np.ndarray], device: torch.device, width: int | None = None,
                    limits: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded (batch, width) float32 audio on ``device`` and the samples kept per row, in one host->device copy.

    ``limits[b]`` cuts row b (a Whisper window); the host buffer is pinned on CUDA so the copy is asynchronous."""
    kept = [len(w) if limits is None else min(len(w), int(limits[b])) for b, w in enumerate(waves)]
    width = max(kept) if width is None else width
    pin = device.type == "cuda"
    host = torch.zeros((len(waves), max(width, 1)), dtype=torch.float32, pin_memory=pin)
    buf = host.numpy()
    for b, (w, n) in enumerate(zip(waves, kept)):
        buf[b, :n] = w[:n]
    return host.to(device, non_blocking=pin), torch.tensor(kept, dtype=torch.long)


def normalize_batch(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero-mean unit-variance per row over its first ``lengths[b]`` samples, zeros past them (wav2vec2 family).

    Statistics in float64, so rows of any length match numpy's per-utterance result to float32 precision."""
    n = lengths.to(x.device)
    valid = torch.arange(x.shape[1], device=x.device)[None, :] < n[:, None]
    x64 = x.double() * valid
    count = n.clamp(min=1).double()[:, None]
    mean = x64.sum(1, keepdim=True) / count
    var = (((x64 - mean) * valid) ** 2).sum(1, keepdim=True) / count
    return (((x64 - mean) / torch.sqrt(var + NORM_EPS)) * valid).float()


def _reflect_pad(x: torch.Tensor, contexts: torch.Tensor, pad: int) -> torch.Tensor:
    """Each row reflect-padded by ``pad`` at both ends of its own first ``contexts[b]`` samples, then zeros.

    What ``torch.stft(center=True)`` does to a single utterance; done for all rows at once."""
    b, width = x.shape
    out = x.new_zeros(b, width + 2 * pad)
    out[:, pad:pad + width] = x
    out[:, :pad] = x[:, 1:pad + 1].flip(1)  # the left edge is every row's own start
    rows = torch.arange(b, device=x.device)[:, None]
    k = torch.arange(pad, device=x.device)[None, :]
    ctx = contexts.to(x.device)[:, None]
    out[rows, pad + ctx + k] = x[rows, ctx - 2 - k]  # right edge: x[c-2], x[c-3], ... after each row's end
    return out


class WhisperLogMel:
    """Whisper's log-mel spectrogram (transformers' WhisperFeatureExtractor) for a batch of windows on one device.

    ``__call__(waves, contexts)`` gives what ``feature_extractor(w, padding="max_length", max_length=c,
    truncation=True)`` gives per utterance: (batch, mels, max(contexts) / 160), zero past each row's window.
    """

    def __init__(self, mel_filters: np.ndarray, device: torch.device, sample_rate: int = 16000):
        self.device = torch.device(device)
        self.sample_rate = sample_rate
        self.n_mels = mel_filters.shape[1]
        self.filters = torch.as_tensor(np.asarray(mel_filters), dtype=torch.float32, device=self.device).T.contiguous()
        self.window = torch.hann_window(N_FFT, device=self.device)

    @classmethod
    def for_mels(cls, n_mels: int, device: torch.device, sample_rate: int = 16000) -> "WhisperLogMel":
        """The filter bank transformers' WhisperFeatureExtractor builds for ``n_mels`` (80 or 128)."""
        from transformers import WhisperFeatureExtractor

        fe = WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=sample_rate)
        return cls(fe.mel_filters, device, sample_rate)

    def __call__(self, waves: Sequence[np.ndarray], contexts: Sequence[int]) -> torch.Tensor:
        contexts = [int(c) for c in contexts]
        if any(c % HOP or c <= N_FFT // 2 for c in contexts):
            raise ValueError(f"Whisper windows must be multiples of {HOP} samples above {N_FFT // 2}, got {contexts}")
        x, _ = to_device_batch(waves, self.device, width=max(contexts), limits=contexts)
        return self.from_tensor(x, torch.tensor(contexts))

    def from_tensor(self, x: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        """The log-mel of zero-padded rows ``x`` (batch, width) already on the device, each ``contexts[b]`` long."""
        frames = contexts.to(self.device) // HOP
        padded = _reflect_pad(x, contexts, N_FFT // 2)
        spec = torch.stft(padded, N_FFT, HOP, window=self.window, center=False, return_complex=True)
        power = (spec[..., :-1].abs() ** 2).contiguous()  # the last frame is dropped, as Whisper does
        log = torch.clamp(self.filters @ power, min=1e-10).log10()  # (batch, mels, frames)
        valid = torch.arange(log.shape[-1], device=self.device)[None, :] < frames[:, None]
        peak = log.masked_fill(~valid[:, None, :], float("-inf")).amax(dim=(1, 2), keepdim=True)
        log = (torch.maximum(log, peak - 8.0) + 4.0) / 4.0
        return log * valid[:, None, :]
