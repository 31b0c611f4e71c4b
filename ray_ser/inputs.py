"""Where a corpus's inputs are read from: audio files, CSVs and manifests as local paths or object-store URIs
(``s3://``, ``gs://``, ``az://``), so a corpus can live in a bucket instead of on every node's disk.

An input URI opens with, in this order: the data section's own storage options (``data.options``, for audio in
another bucket or on another endpoint than the store), else the options registered for the store's scheme when
it is the same (:func:`ray_ser.storage.register`), else the usual environment (``AWS_*``). The driver resolves
them once; :func:`snapshot` hands them to the Ray workers that decode (:func:`restore` there), so worker nodes
need no credentials of their own. Headers are read with small ranged reads (:data:`HEADER_BLOCK`), never the whole
object; a decode fetches the object once, whole, and decodes it from memory.
"""

from __future__ import annotations

import io
import os
import posixpath
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Iterable, Mapping
from urllib.parse import urlparse

from ray_ser import storage
from ray_ser.storage import Options, is_uri, scheme

SCHEMES = ("s3", "gs", "az")
HEADER_BLOCK = 64 * 2**10
"""Bytes one ranged read fetches for a header (WAV/FLAC headers and the first chunks fit; read ahead on demand)."""

_DATA: dict[str, Options] = {}
"""{scheme: options} of ``data.options`` (:func:`register`); empty: inputs use the store's or the environment's."""


def register(options: Mapping[str, Any] | None) -> dict[str, Options]:
    """Make ``data.options`` (over the environment's) the options every input URI opens with in this process; none
    given: inputs open with the store's options (same scheme) or the environment's. A saved config's masked
    secret (``***``) keeps the one this process already has (:func:`ray_ser.storage.resolve_kept`)."""
    if not options:
        _DATA.clear()
        return {}
    resolved = {kind: storage.resolve_kept(f"{kind}://", options, _DATA.get(kind)) for kind in SCHEMES}
    _DATA.clear()
    _DATA.update(resolved)
    return dict(resolved)


def options_for(location: str | os.PathLike) -> Options:
    """The storage options ``location`` opens with (module docstring); empty for a local path."""
    if not is_uri(location):
        return {}
    if scheme(location) in _DATA:
        return dict(_DATA[scheme(location)])
    return storage.options_for(location)


def config_options(location: str | os.PathLike, data_options: Mapping[str, Any] | None, store_uri: str | None,
                   store_options: Mapping[str, Any] | None) -> Options:
    """What :func:`options_for` gives ``location`` once a config's options are registered, from the config's
    sections directly (a config reads its CSV's corpus name while it is validated, before anything is registered)."""
    if not is_uri(location):
        return {}
    if data_options:
        return storage.resolve_options(location, data_options)
    if store_uri and is_uri(store_uri) and scheme(store_uri) == scheme(location):
        return storage.resolve_options(location, store_options)
    return options_for(location)


def snapshot(locations: Iterable[str] = ()) -> dict[str, Any]:
    """The options to hand a Ray worker: the store's registered ones, ``data.options``, and for each scheme of
    ``locations`` that has neither, the driver's environment's (a worker node may have no AWS_* variables)."""
    data = {k: dict(v) for k, v in _DATA.items()}
    store = storage.snapshot()
    for kind in {scheme(p) for p in locations if is_uri(p)}:
        if kind not in data and kind not in store:
            data[kind] = storage.resolve_options(f"{kind}://")
    return {"store": store, "data": data}


def restore(saved: Mapping[str, Any] | None) -> None:
    """Register a driver's :func:`snapshot` in a worker process."""
    if not saved:
        return
    storage.restore(saved.get("store"))
    _DATA.update({k: dict(v) for k, v in (saved.get("data") or {}).items()})


def filesystem(location: str, options: Mapping[str, str] | None = None):
    """The fsspec filesystem of ``location``'s scheme, with ``options`` (default: :func:`options_for`)."""
    import fsspec

    options = options_for(location) if options is None else options
    return fsspec.filesystem(scheme(location), **storage.fsspec_kwargs(location, options))


def open_object(location: str, header: bool = False) -> BinaryIO:
    """An object as a seekable binary file: with ``header``, a lazy file that fetches :data:`HEADER_BLOCK` bytes per
    ranged read (for reading headers); else the whole object in memory (one GET). A missing object raises
    FileNotFoundError, as a missing file does."""
    fs = filesystem(location)
    if header:
        return fs.open(location, "rb", block_size=HEADER_BLOCK, cache_type="readahead")
    return io.BytesIO(fs.cat_file(location))


def open_stream(location: str, options: Mapping[str, str] | None = None) -> BinaryIO:
    """An object as a binary file read front to back in 1 MiB ranged reads (a CSV: reading its first rows fetches
    only the first MiB)."""
    return filesystem(location, options).open(location, "rb", block_size=2**20, cache_type="readahead")


def size(f) -> int:
    """Bytes of an open input: a local file (its inode), an fsspec file or an in-memory object."""
    if isinstance(f, io.BytesIO):
        return f.getbuffer().nbytes
    if hasattr(f, "size") and not callable(f.size):
        return int(f.size)
    return os.fstat(f.fileno()).st_size


def read_bytes(location: str | os.PathLike) -> bytes:
    """The whole file or object at ``location`` (a CSV, a manifest)."""
    if is_uri(location):
        return filesystem(str(location)).cat_file(str(location))
    return Path(location).read_bytes()


# ---- locations ----------------------------------------------------------------------------------------------
def parent(location: str | os.PathLike) -> str | Path:
    """The folder of a file: ``s3://b/x`` for ``s3://b/x/a.csv``; a Path for a local file."""
    if is_uri(location):
        return str(location).rsplit("/", 1)[0]
    return Path(location).parent


def stem(location: str | os.PathLike) -> str:
    """``a`` for ``.../a.csv``, local or URI."""
    return PurePosixPath(urlparse(str(location)).path).stem if is_uri(location) else Path(location).stem


def resolve(base: str | os.PathLike, path: str) -> str:
    """``path`` as an absolute location: itself when it is a URI or an absolute local path, else joined to ``base``
    (a folder or a folder's URI) with ``..`` and ``.`` folded (``s3://b/x/../a.wav`` -> ``s3://b/a.wav``)."""
    if is_uri(path):
        return path
    p = Path(path).expanduser()
    if p.is_absolute():
        return str(p)
    if is_uri(base):
        head, _, key = str(base).partition("://")
        bucket, _, prefix = key.partition("/")
        folded = posixpath.normpath(posixpath.join("/", prefix, path)).lstrip("/")
        return f"{head}://{bucket}/{folded}"
    return os.path.normpath(Path(base) / p)
