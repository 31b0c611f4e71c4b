"""The utterance manifest: one typed record per utterance, a fixed Arrow schema, validated Parquet I/O.

The category list that ``pdf`` and ``votes`` are indexed by travels with the data, as JSON in the Parquet
schema metadata under ``ray_ser.categories``, so a reader never has to guess the order.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ray_ser.storage import is_uri, write_whole

CATEGORIES_KEY = b"ray_ser.categories"
CORPUS_KEY = b"ray_ser.corpus"
REJECTED_KEY = b"ray_ser.rejected"
"""Parquet schema metadata: JSON list of the rows an adapter left out (see :attr:`Manifest.rejected`)."""
AUDIO_ERROR = "audio_error"
"""Key in ``extra`` of a row whose audio file exists but cannot be read; its ``duration`` is null."""
GENDERS = ("male", "female")
PDF_TOLERANCE = 1e-3


class ManifestError(ValueError):
    """A manifest that breaks the schema; the message names the file and the offending row."""


@dataclass
class Utterance:
    """One utterance: where its audio is, who spoke it, and every label the corpus gives it.

    ``pdf`` and ``votes`` are indexed by the manifest's category list. ``votes`` holds per-category
    vote counts from the graders (``n_raters`` of them) where a corpus publishes them; ``agreement`` is
    the share of graders who chose ``label``. Dimensional scores are on the corpus's own scale.
    """

    utt_id: str
    path: str
    speaker: str
    corpus: str
    duration: float | None = None
    gender: str | None = None
    language: str | None = None
    split: str | None = None
    fold: int | None = None
    label: str | None = None
    pdf: list[float] | None = None
    votes: list[float] | None = None
    n_raters: int | None = None
    agreement: float | None = None
    arousal: float | None = None
    valence: float | None = None
    dominance: float | None = None
    arousal_std: float | None = None
    valence_std: float | None = None
    dominance_std: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["extra"] = json.dumps(self.extra, sort_keys=True) if self.extra else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Utterance":
        d = {k: d.get(k) for k in (f.name for f in fields(cls))}
        d["extra"] = json.loads(d["extra"]) if d.get("extra") else {}
        return cls(**d)


SCHEMA = pa.schema(
    [
        pa.field("utt_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("speaker", pa.string(), nullable=False),
        pa.field("corpus", pa.string(), nullable=False),
        pa.field("duration", pa.float64()),
        pa.field("gender", pa.string()),
        pa.field("language", pa.string()),
        pa.field("split", pa.string()),
        pa.field("fold", pa.int32()),
        pa.field("label", pa.string()),
        pa.field("pdf", pa.list_(pa.float32())),
        pa.field("votes", pa.list_(pa.float32())),
        pa.field("n_raters", pa.int32()),
        pa.field("agreement", pa.float32()),
        pa.field("arousal", pa.float32()),
        pa.field("valence", pa.float32()),
        pa.field("dominance", pa.float32()),
        pa.field("arousal_std", pa.float32()),
        pa.field("valence_std", pa.float32()),
        pa.field("dominance_std", pa.float32()),
        pa.field("extra", pa.string()),
    ]
)
COLUMNS = tuple(SCHEMA.names)
DIMENSIONS = ("arousal", "valence", "dominance")


class Manifest:
    """An immutable table of utterances plus the category list its ``pdf``/``votes`` columns index."""

    def __init__(self, table: pa.Table, categories: Sequence[str], source: str = "<memory>",
                 rejected: Sequence[dict[str, Any]] = ()):
        self.categories = list(categories)
        self.source = source
        self.rejected: list[dict[str, Any]] = [dict(r) for r in rejected]
        """Rows an adapter left out because they break the contract (``utt_id``, ``path``, ``reason`` naming
        the file, row and line); extraction records each as an ``errors`` row (stage ``manifest``)."""
        self.table = _conform(table, self.categories)
        validate(self.table, self.categories, source)
        if self.rejected:
            meta = {**(self.table.schema.metadata or {}), REJECTED_KEY: json.dumps(self.rejected).encode()}
            self.table = self.table.replace_schema_metadata(meta)

    # construction -------------------------------------------------------------------------------
    @classmethod
    def from_utterances(cls, utts: Iterable[Utterance], categories: Sequence[str]) -> "Manifest":
        rows = [u.to_dict() for u in utts]
        table = pa.Table.from_pylist(rows, schema=SCHEMA) if rows else SCHEMA.empty_table()
        return cls(table, categories)

    @classmethod
    def read(cls, path: str | Path) -> "Manifest":
        """Read and validate a manifest Parquet file; errors name the file and the row."""
        from ray_ser import inputs

        path = str(path)
        try:
            if is_uri(path):  # e.g. s3://bucket/manifests/x.parquet, with the data (else the store's) options
                table = pq.read_table(pa.BufferReader(inputs.read_bytes(path)))
            else:
                table = pq.read_table(path)
        except Exception as e:
            raise ManifestError(f"{path}: not a readable Parquet manifest ({e})") from e
        meta = table.schema.metadata or {}
        if CATEGORIES_KEY not in meta:
            raise ManifestError(f"{path}: schema metadata lacks {CATEGORIES_KEY.decode()!r}")
        rejected = json.loads(meta[REJECTED_KEY]) if REJECTED_KEY in meta else []
        return cls(table, json.loads(meta[CATEGORIES_KEY]), source=path, rejected=rejected)

    def write(self, path: str | Path) -> Path:
        """Write as Parquet, atomically (temp file + rename; one PUT on an object store), so a crash never leaves
        half a manifest."""
        return write_whole(path, lambda fh: pq.write_table(self.table, fh))

    # views ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.table.num_rows

    def __iter__(self) -> Iterator[Utterance]:
        for row in self.table.to_pylist():
            yield Utterance.from_dict(row)

    @property
    def corpus(self) -> str:
        corpora = sorted(set(self.table.column("corpus").to_pylist()))
        return corpora[0] if len(corpora) == 1 else "+".join(corpora)

    def to_polars(self):
        import polars as pl

        return pl.from_arrow(self.table)

    def with_table(self, table: pa.Table) -> "Manifest":
        return Manifest(table, self.categories, self.source, self.rejected)

    def audio_problems(self) -> list[tuple[str, str, str]]:
        """(utt_id, path, reason) of the rows kept with a null duration because their audio file could not be
        read when the manifest was built; extraction turns each into an ``errors`` row when it decodes it."""
        out = []
        cols = (self.table.column(k).to_pylist() for k in ("utt_id", "path", "extra"))
        for uid, path, extra in zip(*cols):
            if extra and AUDIO_ERROR in extra:
                reason = json.loads(extra).get(AUDIO_ERROR)
                if reason:
                    out.append((uid, path, reason))
        return out

    def missing_audio(self) -> list[tuple[str, str]]:
        """(utt_id, path) of the rows whose audio file does not exist (yet): a label-only manifest is allowed. Local
        files only: an object-store URI is not asked for (one request per row); a missing object is an ``errors``
        row ("object not found") when extraction decodes it."""
        return [(u, p) for u, p in zip(self.column("utt_id"), self.column("path"))
                if not is_uri(p) and not os.path.lexists(p)]

    def summary(self) -> str:
        """One line on what a user should look at: rows left out, unreadable and missing audio files."""
        parts = [f"{len(self)} utterances"]
        if self.rejected:
            parts.append(f"{len(self.rejected)} rows left out (manifest faults)")
        problems = self.audio_problems()
        if problems:
            parts.append(f"{len(problems)} with unreadable audio (duration null)")
        missing = self.missing_audio()
        if missing:
            parts.append(f"{len(missing)} whose audio file is missing")
        return ", ".join(parts)

    def head(self, n: int) -> "Manifest":
        return self.with_table(self.table.slice(0, n))

    def spread(self, n: int) -> "Manifest":
        """``n`` rows drawn in turn from each speaker and, within a speaker, in turn from each of its categories
        (manifest order inside a category), returned in manifest order. A smoke run on a slice then keeps the
        speakers that speaker-independent folds need, which the first ``n`` rows of a sorted corpus do not."""
        groups: dict[Any, dict[Any, list[int]]] = {}
        for i, (speaker, label) in enumerate(zip(self.column("speaker"), self.column("label"))):
            groups.setdefault(speaker, {}).setdefault(label, []).append(i)
        queues = [_interleave(list(groups[s].values())) for s in sorted(groups, key=lambda s: (s is None, str(s)))]
        return self.take(sorted(_interleave(queues)[:max(n, 0)]))

    def take(self, indices: Sequence[int]) -> "Manifest":
        return self.with_table(self.table.take(pa.array(indices, pa.int64())))

    def with_column(self, name: str, values: Sequence[Any]) -> "Manifest":
        i = self.table.schema.get_field_index(name)
        arr = pa.array(values, type=SCHEMA.field(name).type)
        return self.with_table(self.table.set_column(i, SCHEMA.field(name), arr))

    def column(self, name: str) -> list:
        return self.table.column(name).to_pylist()


def _interleave(queues: Sequence[Sequence[int]]) -> list[int]:
    """Round-robin over ``queues``: the first item of each, then the second of each, ... until all are spent."""
    return [q[depth] for depth in range(max(map(len, queues), default=0)) for q in queues if depth < len(q)]


def _conform(table: pa.Table, categories: Sequence[str]) -> pa.Table:
    """Add missing optional columns as nulls, order and cast to SCHEMA, attach category metadata."""
    missing_required = [f.name for f in SCHEMA if not f.nullable and f.name not in table.column_names]
    if missing_required:
        raise ManifestError(f"manifest lacks required columns {missing_required}")
    cols = []
    for f in SCHEMA:
        if f.name in table.column_names:
            col = table.column(f.name)
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise ManifestError(f"column {f.name!r} cannot be read as {f.type}: {e}") from e
        else:
            col = pa.nulls(table.num_rows, f.type)
        cols.append(col)
    corpora = sorted({c for c in table.column("corpus").to_pylist() if c}) if table.num_rows else []
    meta = {CATEGORIES_KEY: json.dumps(list(categories)).encode(), CORPUS_KEY: "+".join(corpora).encode()}
    return pa.Table.from_arrays(cols, schema=SCHEMA.with_metadata(meta))


def validate(table: pa.Table, categories: Sequence[str], source: str = "<memory>") -> None:
    """Check every row against the contract; raise ManifestError naming file, row and utt_id."""
    n_cat = len(categories)
    if len(set(categories)) != n_cat:
        raise ManifestError(f"{source}: duplicate names in categories {list(categories)}")
    seen: dict[str, int] = {}
    for i, row in enumerate(table.to_pylist()):
        where = f"{source} row {i} (utt_id={row['utt_id']!r})"

        def fail(reason: str) -> None:
            raise ManifestError(f"{where}: {reason}")

        if not row["utt_id"]:
            fail("empty utt_id")
        if row["utt_id"] in seen:
            fail(f"duplicate utt_id (first at row {seen[row['utt_id']]})")
        seen[row["utt_id"]] = i
        if not row["path"]:
            fail("empty path")
        if not row["speaker"]:
            fail("empty speaker")
        d = row["duration"]
        if d is not None and not (math.isfinite(d) and d > 0):
            fail(f"duration must be a positive number of seconds, got {d}")
        if row["gender"] is not None and row["gender"] not in GENDERS:
            fail(f"gender must be one of {GENDERS} or null, got {row['gender']!r}")
        if row["label"] is not None and row["label"] not in categories:
            fail(f"label {row['label']!r} is not in the categories {list(categories)}")
        for name in ("pdf", "votes"):
            vec = row[name]
            if vec is None:
                continue
            if len(vec) != n_cat:
                fail(f"{name} has {len(vec)} entries for {n_cat} categories")
            if any(v is None or not math.isfinite(v) or v < 0 for v in vec):
                fail(f"{name} has a negative, missing or non-finite entry: {vec}")
        if row["pdf"] is not None and abs(sum(row["pdf"]) - 1.0) > PDF_TOLERANCE:
            fail(f"pdf sums to {sum(row['pdf']):.4f}, not 1")


def read_duration(path: str, extra: dict[str, Any]) -> float | None:
    """The audio file's duration from its header; None when the file is missing (a label-only manifest), and None
    plus ``extra[AUDIO_ERROR]`` = the reason when it exists but cannot be read, so one bad file never stops a build.
    An object-store URI's header comes from a small ranged read; a missing object counts as a missing file."""
    from ray_ser import audio

    if not is_uri(path) and not os.path.lexists(path):
        return None
    duration, problem = audio.probe(str(path))
    if problem == audio.OBJECT_NOT_FOUND:
        return None
    if problem is not None:
        extra[AUDIO_ERROR] = problem
    return duration
