"""Where things are: the corpora data root, the project directory and this machine's cache."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
DATA_ROOT_ENV = "RAY_SER_DATA_ROOT"


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The folder holding the corpora: ``explicit``, else $RAY_SER_DATA_ROOT, else ../shared/corpora."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (PROJECT_DIR.parent / "shared" / "corpora").resolve()


def cache_dir() -> Path:
    """$RAY_SER_CACHE, else ~/.cache/ray_ser (this machine's own: hashes, logs of runs kept on object stores)."""
    root = os.environ.get("RAY_SER_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "ray_ser")
    return Path(root).expanduser()
