"""Audio decoding: any file soundfile reads -> mono float32 at the model's rate, or an AudioError naming why."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

MIN_SECONDS = 0.25
"""Shorter audio is rejected: every supported model needs at least a few frames (HuBERT/WavLM: 400 samples)."""


class AudioError(ValueError):
    """A file that cannot become model input; ``path`` and ``reason`` go to the errors table."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class AudioInfo:
    """What the header says, without decoding the samples."""

    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def info(path: str) -> AudioInfo:
    """Read the header of ``path``; raises AudioError when soundfile cannot open it."""
    try:
        i = sf.info(str(path))
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError/OSError depending on the fault
        raise AudioError(path, f"unreadable audio ({e.__class__.__name__}: {e})") from e
    return AudioInfo(sample_rate=int(i.samplerate), channels=int(i.channels), frames=int(i.frames))


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels of a (frames, channels) array; a 1-D array is returned as is."""
    return samples if samples.ndim == 1 else samples.mean(axis=1)


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Resample with soxr (high quality); no-op when the rates match."""
    if rate == target_rate:
        return samples
    return soxr.resample(samples, rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def validate(samples: np.ndarray, path: str, rate: int, min_seconds: float = MIN_SECONDS) -> np.ndarray:
    """Reject empty, too short, NaN/Inf and all-zero audio with a reason naming the file."""
    if samples.size == 0:
        raise AudioError(path, "empty audio (0 samples)")
    if not np.isfinite(samples).all():
        bad = int((~np.isfinite(samples)).sum())
        raise AudioError(path, f"audio contains {bad} NaN/Inf samples")
    seconds = samples.shape[0] / rate
    if seconds < min_seconds:
        raise AudioError(path, f"audio too short: {seconds:.3f} s < {min_seconds} s")
    if not np.any(samples):
        raise AudioError(path, "audio is all zeros (digital silence)")
    return samples


def load(path: str, target_rate: int = 16000, min_seconds: float = MIN_SECONDS) -> np.ndarray:
    """Decode ``path`` to mono float32 at ``target_rate``; every failure is an AudioError naming the file."""
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as e:
        raise AudioError(path, f"unreadable audio ({e.__class__.__name__}: {e})") from e
    samples = validate(to_mono(np.asarray(samples, dtype=np.float32)), path, rate, min_seconds)
    return np.ascontiguousarray(resample(samples, rate, target_rate), dtype=np.float32)
