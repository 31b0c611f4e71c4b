"""Checkpoint files written and read as tensors and plain data only: ``torch.load(weights_only=True)`` never runs
code from a file, which matters once checkpoints sit in a shared bucket that others can write to.

Numpy scalars and arrays (metrics, histories) become Python numbers and tensors before saving, so every state the
training loop and Tune write loads back under ``weights_only``; a file holding anything else (a planted pickle
payload) is refused with :class:`UnsafeCheckpoint` naming it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

import numpy as np

from ray_ser.errors import InputError


class UnsafeCheckpoint(InputError):
    """A checkpoint file that holds more than tensors and plain data: not loaded (it could run code)."""


def plain(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and numpy arrays as tensors (nested dicts, lists, tuples)."""
    import torch

    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        out = [plain(v) for v in value]
        return tuple(out) if isinstance(value, tuple) else out
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    return value


def save(state: Any, target: str | os.PathLike | IO[bytes]) -> None:
    """Write ``state`` (made :func:`plain`) with ``torch.save`` to a path or an open binary file."""
    import torch

    torch.save(plain(state), target)


def load(source: str | os.PathLike | IO[bytes], name: str | None = None) -> Any:
    """Read a checkpoint file with ``weights_only=True`` onto the CPU; :class:`UnsafeCheckpoint` naming the file when
    it holds anything but tensors and plain data."""
    import pickle

    import torch

    where = name or (str(source) if isinstance(source, (str, os.PathLike, Path)) else getattr(source, "name", "checkpoint"))
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "unsupported" in ln.lower()]  # torch's own reason
        first = lines[0] if lines else type(e).__name__
        raise UnsafeCheckpoint(f"{where}: refused to load a checkpoint that holds more than tensors and plain data "
                               f"(it could run code when unpickled): {first}") from None
