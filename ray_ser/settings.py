"""Where things are: the corpora data root and the project directory."""

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
