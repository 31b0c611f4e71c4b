"""Evaluation outputs as Polars LazyFrames with stable column names, across one or many evaluation folders.

An *evaluation folder* is what ``jobs/evaluate.py --out DIR`` writes: ``predictions.parquet``,
``metrics.parquet``, ``confusion.parquet`` and ``report.html``. ``paths`` may be one folder, a Parquet
file, a glob (``"eval/*"``) or a list of these; the ``run`` column tells the runs apart and ``source``
names the folder each row came from.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Iterable

import polars as pl
import pyarrow.parquet as pq

CATEGORIES_KEY = b"ray_ser.categories"
RUN_CONFIG_KEY = b"ray_ser.run_config"

METRICS_SCHEMA: dict[str, pl.DataType] = {
    "run": pl.String, "group_by": pl.String, "group": pl.String, "condition": pl.String, "metric": pl.String,
    "k": pl.Int32, "value": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "n": pl.Int64,
    "n_speakers": pl.Int64, "protocol": pl.String,
}
PROTOCOLS = ("out-of-fold", "zero-shot")
"""``protocol`` of a metrics row: scored by the outer fold that held the speaker out, or by a final model that
never saw the corpus."""
CONFUSION_SCHEMA: dict[str, pl.DataType] = {
    "run": pl.String, "condition": pl.String, "true": pl.String, "pred": pl.String, "count": pl.Int64,
}
PREDICTIONS_TYPES: dict[str, pl.DataType] = {
    "run": pl.String, "fold": pl.Int32, "condition": pl.String, "snr_db": pl.Float32, "utt_id": pl.String,
    "speaker": pl.String, "gender": pl.String, "corpus": pl.String, "label": pl.String, "label_index": pl.Int32,
    "pdf": pl.List(pl.Float32), "has_votes": pl.Boolean, "probs": pl.List(pl.Float32), "pred": pl.String,
    "arousal": pl.Float32, "valence": pl.Float32, "dominance": pl.Float32, "pred_arousal": pl.Float32,
    "pred_valence": pl.Float32, "pred_dominance": pl.Float32, "model": pl.String, "protocol": pl.String,
    "temperature": pl.Float32,
}


def _files(paths: str | Path | Iterable[str | Path], name: str) -> list[Path]:
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        matches = [Path(m) for m in sorted(glob.glob(str(p)))] if glob.has_magic(str(p)) else [p]
        if not matches:
            raise FileNotFoundError(f"{item}: no file or folder matches this pattern")
        for m in matches:
            f = m / name if m.is_dir() else m
            if not f.is_file():
                if glob.has_magic(str(p)) and m.is_dir():
                    continue  # a glob over folders may catch folders that are not evaluation outputs
                raise FileNotFoundError(f"{f}: not found (expected an evaluation folder holding {name}, or the file)")
            out.append(f)
    if not out:
        raise FileNotFoundError(f"{paths}: no {name} found")
    return list(dict.fromkeys(out))


def _scan(files: list[Path], types: dict[str, pl.DataType], fill: bool) -> pl.LazyFrame:
    frames = []
    for f in files:
        lf = pl.scan_parquet(f)
        names = lf.collect_schema().names()
        if "run" not in names:  # an older or hand-made table: the folder names the run
            lf = lf.with_columns(pl.lit(f.parent.name).alias("run"))
        casts = [pl.col(c).cast(t) for c, t in types.items() if c in names]
        missing = [pl.lit(None, dtype=t).alias(c) for c, t in types.items() if c not in names and c != "run"]
        lf = lf.with_columns(*casts, *(missing if fill else []), pl.lit(str(f.parent)).alias("source"))
        frames.append(lf)
    lf = pl.concat(frames, how="diagonal_relaxed")
    first = [c for c in types if c in lf.collect_schema().names()]
    return lf.select(*first, pl.all().exclude(first))


def load_metrics(paths: str | Path | Iterable[str | Path]) -> pl.LazyFrame:
    """metrics.parquet of one or many evaluation folders: run, group_by, group, condition, metric, k, value,
    ci_low, ci_high, n, n_speakers, protocol (+ source)."""
    return _scan(_files(paths, "metrics.parquet"), METRICS_SCHEMA, fill=True)


def load_predictions(paths: str | Path | Iterable[str | Path]) -> pl.LazyFrame:
    """predictions.parquet of one or many evaluation folders, with the interface's column types; columns a
    run lacks (e.g. pred_arousal of a model without that head, or a --by column) are null (+ source)."""
    return _scan(_files(paths, "predictions.parquet"), PREDICTIONS_TYPES, fill=True)


def load_confusion(paths: str | Path | Iterable[str | Path]) -> pl.LazyFrame:
    """confusion.parquet of one or many evaluation folders: run, condition, true, pred, count (+ source)."""
    return _scan(_files(paths, "confusion.parquet"), CONFUSION_SCHEMA, fill=True)


def read_metadata(path: str | Path) -> tuple[list[str] | None, dict]:
    """(categories, run_config) from a predictions/metrics Parquet file's schema metadata (None / {} if absent)."""
    meta = pq.read_schema(path).metadata or {}
    try:
        cats = json.loads(meta[CATEGORIES_KEY]) if CATEGORIES_KEY in meta else None
        config = json.loads(meta[RUN_CONFIG_KEY]) if RUN_CONFIG_KEY in meta else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: schema metadata is not valid JSON ({e})") from e
    return cats, config


def read_predictions(path: str | Path) -> tuple[pl.DataFrame, list[str], dict]:
    """(predictions, categories, run_config) of one predictions.parquet (or the folder holding it); the
    categories come from the schema metadata, without which probs/pdf cannot be read."""
    (f,) = _files(path, "predictions.parquet")
    cats, config = read_metadata(f)
    if cats is None:  # [] is a dimensional-only run's: no probs or pdf to order
        raise ValueError(f"{f}: schema metadata has no {CATEGORIES_KEY.decode()} (the category order of probs/pdf)")
    return pl.read_parquet(f), list(cats), config


def write_parquet(df: pl.DataFrame, path: str | Path, metadata: dict[str, str]) -> Path:
    """Write a Polars frame to Parquet with string key/value schema metadata (e.g. ``ray_ser.categories``)."""
    table = df.to_arrow()
    merged = {**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in metadata.items()}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(merged), path)
    return path
