"""Audio decoding: any file soundfile reads -> mono float32 at the model's rate, or an AudioError naming why.

Reasons say what a user has to fix ("file not found", "is a directory", "permission denied", "empty file",
"not an audio file", "truncated", "audio too long") and keep the decoder's own words after them. A path may be an
object-store URI (``s3://...``, :mod:`ray_ser.inputs`): a header is read with small ranged reads, a decode fetches
the object once and decodes it from memory, and a missing object is "object not found".
"""

from __future__ import annotations

import contextlib
import errno
import struct
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from ray_ser import inputs
from ray_ser.storage import is_uri

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


OBJECT_NOT_FOUND = "object not found"
"""The reason of an object-store URI with no object behind it (a local path's is "file not found")."""


def _os_reason(e: OSError) -> str:
    """The user-facing reason of a failed open."""
    if isinstance(e, FileNotFoundError) or e.errno == errno.ENOENT:
        return "file not found"
    if isinstance(e, IsADirectoryError) or e.errno == errno.EISDIR:
        return "is a directory, not an audio file"
    if isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (make the file readable by the user running the job)"
    return f"cannot read the file ({e.strerror or e})"


def _decoder_reason(e: Exception, while_reading: bool) -> str:
    """Map libsndfile's message to what the user has to fix, keeping the message itself."""
    text = str(e).split(": ", 1)[-1] if "Error opening" in str(e) else str(e)
    text = text.removeprefix("Error : ").strip()
    low = text.lower()
    if "format not recognised" in low or "unknown format" in low:
        return f"not an audio file (or a format libsndfile cannot read): {text}"
    if while_reading or "lost sync" in low or "malformed" in low:
        return f"truncated or corrupt audio data: {text}"
    return f"corrupt audio header: {text}"


def _object_reason(e: Exception) -> str:
    """The user-facing reason of a failed read of an object-store URI."""
    if isinstance(e, FileNotFoundError):
        return OBJECT_NOT_FOUND
    if isinstance(e, IsADirectoryError):
        return "is a folder (prefix), not an audio object"
    if isinstance(e, PermissionError):
        return f"access denied (check the storage options' credentials): {e}"
    return f"cannot read the object ({e.__class__.__name__}: {' '.join(str(e).split())[:300]})"


def _open(path: str):
    """Open ``path`` for reading in binary mode (one place, so tests can stand in for the OS)."""
    return open(path, "rb")


def _wav_truncation(f, size: int) -> str | None:
    """For a RIFF/WAVE file, a reason when its ``data`` chunk declares more bytes than the file holds.

    libsndfile silently decodes what is there, so a copy cut short would otherwise pass as a shorter file."""
    f.seek(0)
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= size:
        f.seek(pos)
        chunk = f.read(8)
        if len(chunk) < 8:
            return None
        cid, length = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if cid == b"data":
            if length in (0, 0xFFFFFFFF):  # streamed WAVs leave the size open
                return None
            held = size - (pos + 8)
            if held < length:
                return (f"truncated: the WAV header declares {length} bytes of audio, the file holds {held} "
                        f"({100.0 * held / length:.0f} %); copy the file again")
            return None
        pos += 8 + length + (length & 1)
    return None


@contextlib.contextmanager
def _checked_file(path: str, header: bool = False):
    """The open file of ``path``, rewound, once it exists, is readable, is not empty and is not a truncated WAV;
    otherwise an AudioError with a reason a user can act on (shared by :func:`info` and :func:`load`). An object-store
    URI is fetched whole, or with ``header`` read lazily in small ranged reads."""
    remote = is_uri(path)
    try:
        f = inputs.open_object(path, header) if remote else _open(path)
    except OSError as e:
        raise AudioError(path, _object_reason(e) if remote else _os_reason(e)) from e
    except Exception as e:  # noqa: BLE001 - an object store's client raises its own errors (denied, unreachable)
        if not remote:
            raise
        raise AudioError(path, _object_reason(e)) from e
    with f:
        size = inputs.size(f)
        if size == 0:
            raise AudioError(path, f"empty {'object' if remote else 'file'} (0 bytes)")
        truncated = _wav_truncation(f, size)
        if truncated:
            raise AudioError(path, truncated)
        f.seek(0)
        yield f


def info(path: str) -> AudioInfo:
    """Read the header of ``path``; raises AudioError (with a reason a user can act on) when it cannot."""
    path = str(path)
    with _checked_file(path, header=True) as f:
        try:
            with sf.SoundFile(f, closefd=False) as s:
                return AudioInfo(sample_rate=int(s.samplerate), channels=int(s.channels), frames=int(s.frames))
        except Exception as e:  # soundfile raises LibsndfileError/RuntimeError depending on the fault
            raise AudioError(path, _decoder_reason(e, while_reading=False)) from e


def probe(path: str) -> tuple[float | None, str | None]:
    """(duration in seconds, None), or (None, reason) for a file that exists but cannot be used.

    Manifest builders use it so one bad file leaves a row with a null duration instead of stopping the build."""
    try:
        i = info(path)
    except AudioError as e:
        return None, e.reason
    if i.frames == 0:
        return None, "empty audio (0 samples)"
    return i.duration, None


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


def load(path: str, target_rate: int = 16000, min_seconds: float = MIN_SECONDS,
         max_seconds: float | None = None) -> np.ndarray:
    """Decode ``path`` to mono float32 at ``target_rate``; every failure is an AudioError naming the file.

    ``max_seconds`` rejects longer audio from its header, before decoding it (a 10-minute file would
    otherwise take a model's memory for one utterance)."""
    path = str(path)
    with _checked_file(path) as f:
        try:
            s = sf.SoundFile(f, closefd=False)
        except Exception as e:
            raise AudioError(path, _decoder_reason(e, while_reading=False)) from e
        with s:
            rate = int(s.samplerate)
            if max_seconds is not None and s.frames > max_seconds * rate:
                raise AudioError(path, f"audio too long: {s.frames / rate:.1f} s > {max_seconds:g} s "
                                       "(split the file, or raise --max-seconds)")
            try:
                samples = s.read(dtype="float32", always_2d=False)
            except Exception as e:
                raise AudioError(path, _decoder_reason(e, while_reading=True)) from e
    samples = validate(to_mono(np.asarray(samples, dtype=np.float32)), path, rate, min_seconds)
    return np.ascontiguousarray(resample(samples, rate, target_rate), dtype=np.float32)
