"""Any corpus described by a CSV file: one row per utterance, columns named after the manifest fields.

Columns (header names are case-sensitive, surrounding spaces ignored; a UTF-8 BOM is fine):

* ``path`` (required): the audio file; relative paths are relative to ``audio_root`` when given, else to
  the CSV's folder. ``audio_root`` itself, if relative, is relative to the CSV's folder. The CSV, ``audio_root``
  and any path may be object-store URIs (``s3://bucket/corpus/labels.csv``, ``s3://bucket/corpus/a.wav``): a
  relative path then lies under the URI's folder, and the objects are read with the storage options of
  :mod:`ray_ser.inputs` (``data.options``, else the store's, else the environment's).
* ``speaker`` (required, non-empty).
* ``utt_id``: defaults to the audio file's stem.
* ``label``: a category name, or empty for an unlabelled utterance.
* ``gender`` (``male``/``female``/``m``/``f``, any case, or empty), ``duration`` (seconds; read from the
  audio header when the column is absent or empty and the file exists; a file that exists but cannot be
  read leaves it null, with the reason in ``extra["audio_error"]``), ``split``, ``language``, ``fold``,
  ``n_raters``, ``agreement``, ``arousal``/``valence``/``dominance`` and their ``*_std``.
* ``arousal``/``valence``/``dominance`` may be on any scale (1-3, 1-5, 1-7, -1..1), one per corpus: training maps
  each corpus's values from their range among a fold's training utterances onto [-1, 1], records the range in the
  checkpoint (``plan.dim_scale``) and maps predictions back, so metrics are on the CSV's own scale. A row may have
  a ``label``, dimensions, or both; a CSV with dimensions and no ``label`` column is a dimensional-only corpus (no
  categories: it trains the A/V/D head alone).
* ``p_<category>``: a probability per category, summing to 1 in each row, or ``votes_<category>``: vote
  counts per category. A category without a column gets 0. ``pdf`` is the ``p_`` columns when present,
  else the normalised votes, else one-hot on ``label``. A row may leave all of them empty.
* ``corpus``: the corpus name (see below); every non-empty cell must give the same one.
* any other column is kept as a string in ``extra``.

The corpus name the store files the CSV under is, in this order: the ``name`` option (``--csv-name``,
``data.csv_name``); else the ``corpus`` column's value; else the CSV file's stem. One CSV holds one corpus: a
``corpus`` column naming two is refused (with the option given, the column names nothing and is kept in
``extra``). The name must be a safe store name (letters, digits, ``_``, ``.``, ``-``) and no built-in
adapter's (``emodb``, ``ravdess``, ...: the store files that adapter's corpus under it). utt_ids and speakers
are prefixed with the name unless they already are.

``categories`` defaults to the sorted union of the labels and the categories named by ``p_``/``votes_``
columns. Every fault names the CSV file, the data row (1-based, the header is not counted), its line
in the file, and the reason. A faulty header raises :class:`ManifestError`. A faulty row (empty path or
speaker, duplicate utt_id, a cell of the wrong type, an unknown label, a PDF that does not sum to 1, ...) is
left out and listed in :attr:`Manifest.rejected`, so one bad row among 100,000 never stops a job (extraction
records each as an ``errors`` row, stage ``manifest``); ``strict=True`` raises on the first faulty row instead.

A relative ``csv`` is looked up under ``data_root`` first, then in the working directory.
"""

from __future__ import annotations

import contextlib
import csv as csvlib
import io
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from ray_ser import inputs
from ray_ser.corpora.labels import one_hot, votes_to_pdf
from ray_ser.corpora.manifest import (
    PDF_TOLERANCE,
    SCHEMA,
    Manifest,
    ManifestError,
    Utterance,
    read_duration,
)
from ray_ser.names import safe_name
from ray_ser.storage import is_uri

NAME = "csv"
REQUIRED = ("path", "speaker")
FLOATS = ("duration", "agreement", "arousal", "valence", "dominance", "arousal_std", "valence_std",
          "dominance_std")
INTS = ("fold", "n_raters")
STRINGS = ("split", "language")
KNOWN = {"utt_id", "path", "speaker", "label", "gender", *FLOATS, *INTS, *STRINGS}
GENDERS = {"male": "male", "m": "male", "female": "female", "f": "female"}


def check_name(name: str, what: str) -> str:
    """``name`` if the store can file a CSV corpus under it, else ManifestError saying why (``what``: where the
    name came from)."""
    from ray_ser.corpora import ADAPTERS

    if not name or safe_name(name) != name:
        raise ManifestError(f"{what}: corpus name {name!r} is not a safe store name (letters, digits, _ . - only); "
                            "give another with --csv-name (data.csv_name) or the CSV's corpus column")
    if name in ADAPTERS:
        raise ManifestError(f"{what}: corpus name {name!r} is a built-in adapter's; the store files the {name} "
                            "adapter's corpus under that name. Give this CSV another with --csv-name "
                            "(data.csv_name) or its corpus column")
    return name


def _name_from(source: str | Path, corpus: str | None, cells: Any) -> str:
    """The corpus name (module docstring): ``corpus``, else the one value of the ``corpus`` column (``cells``:
    (value, row, line) of its non-empty cells, None without the column), else the stem of ``source``."""
    if corpus is not None:
        return check_name(corpus, f"{source} (the name option)")
    found: dict[str, tuple[int, int]] = {}
    for value, row, line in cells or ():
        found.setdefault(value, (row, line))
    if len(found) > 1:
        named = ", ".join(f"{v!r} (first in row {r}, line {ln})" for v, (r, ln) in found.items())
        raise ManifestError(f"{source}: column 'corpus' names {len(found)} corpora: {named}. A CSV holds one corpus: "
                            "split it into one CSV per corpus, or file all of it under one name with --csv-name "
                            "(data.csv_name)")
    if found:
        (value, (row, line)), = found.items()
        return check_name(value, f"{source} row {row} (line {line}) column 'corpus'")
    return check_name(inputs.stem(source), f"{source} (no corpus column: the file's stem)")


def corpus_name(data_root: Path, csv: str | Path, name: str | None = None,
                options: dict[str, str] | None = None) -> str:
    """The name :func:`build` files ``csv`` under, reading no more of the CSV than up to the first non-empty
    ``corpus`` cell (a CSV whose column names two corpora is refused by :func:`build`, not here); ``options``: a
    URI's storage options (default: the registered ones)."""
    source = _resolve_csv(Path(data_root), csv)
    if name is not None:
        return _name_from(source, name, None)
    with _open_csv(source, options) as f:
        reader = csvlib.DictReader(f)
        reader.fieldnames = [h.strip() for h in reader.fieldnames or []]
        first = None
        if "corpus" in reader.fieldnames:
            for i, cells in enumerate(reader, start=1):
                value = (cells.get("corpus") or "").strip()
                if value:
                    first = [(value, i, reader.line_num)]
                    break
    return _name_from(source, None, first)


def _resolve_csv(data_root: Path, csv: str | Path) -> str | Path:
    """The CSV file ``csv`` names: a URI as it is, else a local file (module docstring)."""
    if is_uri(csv):
        return str(csv)
    p = Path(csv).expanduser()
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = [Path(data_root) / p, Path.cwd() / p]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise FileNotFoundError(f"CSV manifest {csv} not found (looked at {', '.join(map(str, candidates))})")


@contextlib.contextmanager
def _open_csv(source: str | Path, options: dict[str, str] | None = None) -> Iterator[Any]:
    """The CSV as a text file for :mod:`csv` (UTF-8, a BOM dropped); a URI streams in ranged reads, with ``options``
    (default: the inputs' registered ones, :mod:`ray_ser.inputs`)."""
    if not is_uri(source):
        with open(source, newline="", encoding="utf-8-sig") as f:
            yield f
        return
    try:
        raw = inputs.open_stream(str(source), options)
    except FileNotFoundError:
        raise FileNotFoundError(f"CSV manifest {source} not found (no such object)") from None
    with io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as f:
        yield f


class _Row:
    """One CSV row plus the means to fail naming file, row and line."""

    def __init__(self, source: str | Path, index: int, line: int, cells: dict[str, str]):
        self.source, self.index, self.line, self.cells = source, index, line, cells

    def fail(self, reason: str) -> None:
        raise ManifestError(f"{self.source} row {self.index} (line {self.line}): {reason}")

    def rejection(self, reason: str, corpus: str, base: str | Path) -> dict[str, Any]:
        """What :attr:`Manifest.rejected` keeps of this row: best-effort utt_id and path, and the reason."""
        rel = self.text("path")
        path = None if rel is None else inputs.resolve(base, rel)
        uid = self.text("utt_id") or (inputs.stem(rel) if rel else f"row{self.index}")
        return {"utt_id": _prefixed(uid, corpus), "path": path, "source": str(self.source), "row": self.index,
                "line": self.line, "reason": reason}

    def text(self, name: str) -> str | None:
        v = (self.cells.get(name) or "").strip()
        return v or None

    def number(self, name: str) -> float | None:
        v = self.text(name)
        if v is None:
            return None
        try:
            x = float(v)
        except ValueError:
            self.fail(f"column {name!r} is not a number: {v!r}")
        if not math.isfinite(x):
            self.fail(f"column {name!r} is not finite: {v!r}")
        return x

    def integer(self, name: str) -> int | None:
        x = self.number(name)
        if x is not None and x != int(x):
            self.fail(f"column {name!r} is not an integer: {self.text(name)!r}")
        return None if x is None else int(x)

    def vector(self, columns: dict[str, str], categories: list[str], what: str) -> np.ndarray | None:
        """Values of the ``p_``/``votes_`` columns in category order, None when the row leaves them all empty."""
        values = {cat: self.number(col) for cat, col in columns.items()}
        if all(v is None for v in values.values()):
            return None
        empty = [columns[c] for c, v in values.items() if v is None]
        if empty:
            self.fail(f"{what} columns {empty} are empty while others are filled")
        negative = [columns[c] for c, v in values.items() if v < 0]
        if negative:
            self.fail(f"{what} columns {negative} are negative")
        return np.array([values.get(c) or 0.0 for c in categories], np.float64)


def _prefixed(value: str, corpus: str) -> str:
    return value if value.startswith(f"{corpus}/") else f"{corpus}/{value}"


def build(
    data_root: Path,
    csv: str | Path | None = None,
    categories: list[str] | None = None,
    audio_root: str | None = None,
    corpus: str | None = None,
    strict: bool = False,
    name: str | None = None,
    **_: Any,
) -> Manifest:
    """Manifest of every valid row of ``csv``: faulty rows go to ``rejected`` (or raise, with ``strict``).

    ``name`` (or ``corpus``; through :func:`ray_ser.corpora.build_manifest` only ``name``, whose first argument
    is the adapter) names the corpus (default: the ``corpus`` column, else the CSV's stem). See the module
    docstring for the columns."""
    if csv is None:
        raise ValueError("the csv adapter needs csv=<path to the CSV file>")
    source = _resolve_csv(Path(data_root), csv)
    if name is not None and corpus is not None and name != corpus:
        raise ValueError(f"two corpus names given: name={name!r}, corpus={corpus!r}")
    explicit = name if name is not None else corpus
    base = inputs.parent(source)
    if audio_root is not None:  # a URI, an absolute folder, or a folder relative to the CSV's
        base = inputs.resolve(base, str(audio_root))

    rejected: list[dict[str, Any]] = []

    def reject(row: _Row, error: ManifestError) -> None:
        if strict:
            raise error
        rejected.append(row.rejection(str(error), corpus, base))

    with _open_csv(source) as f:
        reader = csvlib.DictReader(f)
        if not reader.fieldnames:
            raise ManifestError(f"{source}: empty file, expected a header row")
        header = [h.strip() for h in reader.fieldnames]
        reader.fieldnames = header
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ManifestError(f"{source} header (line 1): missing required columns {missing}; found {header}")
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise ManifestError(f"{source} header (line 1): duplicate columns {dupes}")
        rows, long_rows = [], []
        for i, cells in enumerate(reader, start=1):
            row = _Row(source, i, reader.line_num, cells)
            if None in cells:
                error = ManifestError(f"{source} row {i} (line {reader.line_num}): more cells than header columns")
                if strict:
                    raise error
                long_rows.append((row, error))
                continue
            rows.append(row)

    has_column = "corpus" in header
    corpus = _name_from(source, explicit, [(v, r.index, r.line) for r in rows if (v := r.text("corpus"))]
                        if has_column else None)
    for row, error in long_rows:  # rejected once the name their utt_ids are prefixed with is known
        reject(row, error)

    p_cols = {h[2:]: h for h in header if h.startswith("p_") and len(h) > 2}
    v_cols = {h[6:]: h for h in header if h.startswith("votes_") and len(h) > 6}
    if categories is None:
        labels = {r.text("label") for r in rows} - {None}
        categories = sorted(labels | set(p_cols) | set(v_cols))
    categories = list(categories)
    if len(set(categories)) != len(categories):
        raise ValueError(f"duplicate names in categories {categories}")
    for cols, what in ((p_cols, "p_"), (v_cols, "votes_")):
        stray = [c for cat, c in cols.items() if cat not in categories]
        if stray:
            raise ManifestError(f"{source} header (line 1): {what} columns {stray} name no category in {categories}")
    extra_cols = [h for h in header if h not in KNOWN and h not in p_cols.values() and h not in v_cols.values()
                  and not (h == "corpus" and explicit is None)]  # with the option given, the column is kept

    utts: list[Utterance] = []
    seen: dict[str, int] = {}
    for r in rows:
        try:
            u = _utterance(r, corpus, base, categories, p_cols, v_cols, extra_cols)
            if u.utt_id in seen:
                r.fail(f"duplicate utt_id {u.utt_id!r} (first in row {seen[u.utt_id]})")
        except ManifestError as e:
            reject(r, e)
            continue
        seen[u.utt_id] = r.index
        utts.append(u)
    table = pa.Table.from_pylist([u.to_dict() for u in utts], schema=SCHEMA) if utts else SCHEMA.empty_table()
    return Manifest(table, categories, source=str(source), rejected=rejected)


def _utterance(r: _Row, corpus: str, base: str | Path, categories: list[str], p_cols: dict[str, str],
               v_cols: dict[str, str], extra_cols: list[str]) -> Utterance:
    """One CSV row as an Utterance; a fault raises ManifestError naming the file, row and line."""
    rel = r.text("path")
    if rel is None:
        r.fail("empty path")
    path = inputs.resolve(base, rel)
    speaker = r.text("speaker")
    if speaker is None:
        r.fail("empty speaker")
    utt_id = _prefixed(r.text("utt_id") or inputs.stem(path), corpus)

    label = r.text("label")
    if label is not None and label not in categories:
        r.fail(f"label {label!r} is not in the categories {categories}")
    gender = r.text("gender")
    if gender is not None:
        if gender.lower() not in GENDERS:
            r.fail(f"gender must be male/female/m/f or empty, got {gender!r}")
        gender = GENDERS[gender.lower()]

    pdf = r.vector(p_cols, categories, "p_") if p_cols else None
    if pdf is not None and abs(pdf.sum() - 1.0) > PDF_TOLERANCE:
        r.fail(f"p_ columns sum to {pdf.sum():.4f}, not 1")
    votes = r.vector(v_cols, categories, "votes_") if v_cols else None
    if votes is not None and votes.sum() <= 0:
        r.fail("votes_ columns are all zero")
    if pdf is None and votes is not None:
        pdf = votes_to_pdf(votes).astype(np.float64)
    if pdf is None and label is not None:
        pdf = one_hot(label, categories).astype(np.float64)

    n_raters = r.integer("n_raters")
    if n_raters is None and votes is not None and float(votes.sum()).is_integer():
        n_raters = int(votes.sum())
    agreement = r.number("agreement")
    if agreement is not None and not 0.0 <= agreement <= 1.0:
        r.fail(f"agreement must be in [0, 1], got {agreement}")
    if agreement is None and votes is not None and label is not None:
        agreement = float(votes[categories.index(label)] / votes.sum())

    duration = r.number("duration")
    if duration is not None and duration <= 0:
        r.fail(f"duration must be positive, got {duration}")
    dims = {k: r.number(k) for k in ("arousal", "valence", "dominance", "arousal_std", "valence_std", "dominance_std")}
    fold, language, split = r.integer("fold"), r.text("language"), r.text("split")
    extra = {c: v for c in extra_cols if (v := r.text(c)) is not None and not (c == "corpus" and v == corpus)}
    if duration is None:  # last: a row that fails above never costs a header read
        duration = read_duration(path, extra)
    return Utterance(
        utt_id=utt_id, path=path, speaker=_prefixed(speaker, corpus), corpus=corpus,
        duration=duration, gender=gender, language=language, split=split, fold=fold, label=label,
        pdf=None if pdf is None else pdf.tolist(), votes=None if votes is None else votes.tolist(),
        n_raters=n_raters, agreement=agreement, **dims, extra=extra,
    )
