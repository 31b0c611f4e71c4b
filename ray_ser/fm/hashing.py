"""sha256 of weight files, cached by (path, size, mtime) so the driver and every model actor do not re-hash
hundreds of megabytes each run. The cache lives in $RAY_SER_CACHE (default ~/.cache/ray_ser)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from ray_ser.settings import cache_dir


def cache_file() -> Path:
    return cache_dir() / "sha256.json"


def _key(paths: list[Path]) -> str:
    """Changes whenever a file is replaced, rewritten or resized."""
    parts = []
    for p in paths:
        st = p.stat()
        parts.append(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _load() -> dict[str, str]:
    try:
        return json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}


def cached(paths: Iterable[str | Path]) -> str | None:
    """The recorded hash of these files' concatenation, if they have not changed since it was computed."""
    paths = [Path(p) for p in paths]
    return _load().get(_key(paths))


def remember(paths: Iterable[str | Path], digest: str) -> None:
    """Record ``digest`` for these files; a cache that cannot be written is only a lost speed-up."""
    paths = [Path(p) for p in paths]
    try:
        table = _load()
        table[_key(paths)] = digest
        target = cache_file()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=0, sort_keys=True))
        os.replace(tmp, target)  # atomic: concurrent actors never see half a file
    except OSError:
        pass


def files_sha256(paths: Iterable[str | Path]) -> str:
    """sha256 over the files' bytes in the given order, from the cache when the files are unchanged."""
    paths = [Path(p) for p in paths]
    hit = cached(paths)
    if hit:
        return hit
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    digest = h.hexdigest()
    remember(paths, digest)
    return digest
