"""What ``ray-ser predict --input`` names, as (path, utt_id) pairs: audio files, folders (recursive; files whose
suffix soundfile does not read are skipped and counted), CSV files with a ``path`` column (``utt_id`` optional;
relative paths are relative to the CSV), ray_ser manifests (the Parquet files ``ray-ser manifest`` writes: their
``utt_id`` and ``path``), and object-store URIs of single files or manifests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable


def audio_suffixes() -> frozenset[str]:
    """The file suffixes soundfile (libsndfile) decodes, lower case with the dot."""
    import soundfile as sf

    return frozenset({f".{k.lower()}" for k in sf.available_formats()} | {".oga", ".aif"})


@dataclass
class Inputs:
    """The files to score, in order, and how many folder entries were skipped as not audio."""

    items: list[tuple[str, str]] = field(default_factory=list)
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)


def collect(paths: Iterable[str]) -> Inputs:
    """Expand ``paths`` (files, folders, CSVs with a ``path`` column, URIs) into the files to score."""
    from ray_ser.storage import is_uri

    out = Inputs()
    suffixes = audio_suffixes()
    for raw in paths:
        raw = str(raw)
        p = Path(raw).expanduser()
        if p.suffix.lower() == ".parquet" and (is_uri(raw) or p.is_file()):
            out.items.extend(manifest_items(raw))
        elif is_uri(raw):
            out.items.append((raw, Path(raw.rstrip("/")).stem))
        elif p.is_dir():
            for f in sorted(x for x in p.rglob("*") if x.is_file()):
                if f.suffix.lower() in suffixes:
                    out.items.append((str(f), f.relative_to(p).with_suffix("").as_posix()))
                else:
                    out.skipped += 1
                    if len(out.skipped_examples) < 3:
                        out.skipped_examples.append(str(f))
        elif p.suffix.lower() == ".csv" and p.is_file():
            out.items.extend(csv_items(p))
        else:  # a file (a bad one becomes an error row when it is read)
            out.items.append((str(p), p.stem))
    return out


def csv_items(path: Path) -> list[tuple[str, str]]:
    """(path, utt_id) of each row of a CSV with a ``path`` column (utt_id: its ``utt_id`` column, else the stem)."""
    import polars as pl

    from ray_ser.errors import InputError
    from ray_ser.storage import is_uri

    df = pl.read_csv(path, infer_schema_length=0)
    if "path" not in df.columns:
        raise InputError(f"{path}: an input CSV needs a `path` column (it has {', '.join(df.columns)})")
    ids = df["utt_id"].to_list() if "utt_id" in df.columns else [None] * df.height
    out = []
    for p, u in zip(df["path"].to_list(), ids):
        full = p if is_uri(p) or Path(p).is_absolute() else str(path.parent / p)
        out.append((full, u or Path(p).stem))
    return out


def manifest_items(path: str) -> list[tuple[str, str]]:
    """(path, utt_id) of each row of a ray_ser manifest (relative paths: relative to the manifest's folder)."""
    from ray_ser.corpora.manifest import Manifest
    from ray_ser.errors import InputError
    from ray_ser.storage import is_uri

    try:
        m = Manifest.read(path)
    except ValueError as e:  # ManifestError: not one, or broken; it names the file
        raise InputError(f"{path}: an input Parquet file must be a ray_ser manifest ({e})") from e
    base = path.rstrip("/").rsplit("/", 1)[0] if is_uri(path) else str(Path(path).expanduser().parent)
    out = []
    for p, u in zip(m.column("path"), m.column("utt_id")):
        full = p if is_uri(p) or Path(p).is_absolute() else f"{base}/{p}" if is_uri(path) else str(Path(base) / p)
        out.append((full, u))
    return out
