"""The LanceDB feature store: layout, atomic appends, resume bookkeeping, and the readers later stages use.

Layout of a store (a LanceDB directory):
- ``emb__<model>``: one row per (utterance, condition, layer) with ``mean``/``std`` (float32, pooled over
  real frames only), ``n_frames`` and ``frames`` (float16, real frames only, or null with --no-frames).
  One table per model keeps each table's vectors one width; ``layer`` and ``condition`` are columns with
  scalar indexes, so "one layer of one condition, all utterances" is a filtered columnar scan that never
  touches the frame matrices. The schema metadata records model id, weights hash, sample rate, code
  version and extraction options.
- ``errors``: (utt_id, condition, stage, path, message, model, run_id, time), one row per failure.
- ``manifest__<corpus>``: the manifest the embeddings were made from, so readers can join labels; a changed
  manifest updates its rows (merge on ``utt_id``), one with another category list is refused.
- ``runs``: one row per extraction run, with its options and counts.
- ``lease__<table>``: who writes a table now (:mod:`ray_ser.store.lease`), so two runs never write one table at once.
Every write is one Lance commit (atomic): a crash leaves whole commits, never half of one. Compaction keeps
superseded versions for ``CLEANUP_GRACE`` (an hour) so a reader that opened an older version keeps its files.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from ray_ser.corpora.manifest import CATEGORIES_KEY, REJECTED_KEY, Manifest
from ray_ser.storage import check_reachable, is_uri, lance_options, options_for, redact
from ray_ser.store.lease import Lease
from ray_ser.store.names import sql_string, table_name

META_KEY = b"ray_ser.extraction"
CLEANUP_GRACE = timedelta(hours=1)
"""Superseded table versions are deleted this long after compaction replaced them (readers keep their files)."""

ERRORS_SCHEMA = pa.schema([
    ("utt_id", pa.string()), ("condition", pa.string()), ("stage", pa.string()), ("path", pa.string()),
    ("message", pa.string()), ("model", pa.string()), ("run_id", pa.string()), ("time", pa.float64()),
])
RUNS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("model", pa.string()), ("table", pa.string()), ("corpus", pa.string()),
    ("started", pa.float64()), ("finished", pa.float64()), ("options", pa.string()),
    ("extracted", pa.int64()), ("errors", pa.int64()), ("skipped", pa.int64()),
    # added later (null in older stores): skipped = done_before + failed_before
    ("done_before", pa.int64()), ("failed_before", pa.int64()), ("manifest_errors", pa.int64()),
    ("duplicates_removed", pa.int64()),
    ("config", pa.string()),  # the resolved experiment config (JSON) of a run a config file drove
])
MANIFEST_CONDITION = "*"
"""``condition`` of an errors row for a manifest row left out (it fails every condition)."""

log = logging.getLogger(__name__)


def as_store(store: "str | Store") -> "Store":
    """Accept a Store or its URI wherever a reader takes one."""
    return store if isinstance(store, Store) else Store(store)


def embedding_schema(dim: int, meta: dict[str, Any] | None = None) -> pa.Schema:
    """Schema of an ``emb__`` table for vectors of width ``dim``."""
    schema = pa.schema([
        ("utt_id", pa.string()), ("condition", pa.string()), ("layer", pa.int16()),
        ("n_frames", pa.int32()), ("duration", pa.float32()), ("snr_db", pa.float32()), ("rt60", pa.float32()),
        ("mean", pa.list_(pa.float32(), dim)), ("std", pa.list_(pa.float32(), dim)),
        ("frames", pa.list_(pa.list_(pa.float16(), dim))),
        ("aug_params", pa.string()),  # JSON of an augmented copy's draws (aug<i> conditions); null otherwise
    ])
    return schema.with_metadata({META_KEY: json.dumps(meta or {}, sort_keys=True).encode()})


@dataclass(repr=False)
class Store:
    """A LanceDB directory (a local folder or an object-store URI) holding embeddings, errors, manifests and run
    records. ``options`` are its storage options (:mod:`ray_ser.storage`; the environment's fill what they leave
    out); a Store sent to a Ray worker carries them, so a worker on another node needs no credentials of its own."""

    uri: str
    options: dict[str, str] | None = None

    def __post_init__(self):
        self.uri = str(self.uri)
        self.options = options_for(self.uri, self.options)
        if not is_uri(self.uri):
            Path(self.uri).mkdir(parents=True, exist_ok=True)
        else:
            check_reachable(self.uri, self.options)
        self._connect()

    def _connect(self) -> None:
        import lancedb

        self.db = lancedb.connect(self.uri, storage_options=self.storage_options)

    @property
    def storage_options(self) -> dict[str, str] | None:
        """What Lance, LanceDB and lance-ray take for this store (None for a local folder)."""
        return lance_options(self.uri, self.options)

    def __getstate__(self) -> dict:
        return {"uri": self.uri, "options": self.options}

    def __setstate__(self, state: dict) -> None:  # on a worker: the driver's options as they are, no env, no check
        self.uri, self.options = state["uri"], state["options"]
        self._connect()

    def __repr__(self) -> str:
        return f"Store({self.uri!r}, options={redact(self.options)})"

    # tables ---------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        result = self.db.list_tables()
        return list(getattr(result, "tables", result))

    def has(self, name: str) -> bool:
        """True when table ``name`` has a committed version (see :meth:`open_committed`)."""
        return self.open_committed(name) is not None

    def open_committed(self, name: str):
        """Table ``name``, or None when it has no committed version. Listing is not enough: a table's folder
        appears when its creator writes the first data file, before it commits (or for good, if it died)."""
        if name not in self.names():
            return None
        try:
            return self.open(name)
        except ValueError as e:  # LanceDB: "Table '<name>' was not found"
            if "not found" not in str(e):
                raise
            return None

    def open(self, name: str):
        return self.db.open_table(name)

    def table_uri(self, name: str) -> str:
        """Where table ``name`` lives (the layout LanceDB uses for a folder or bucket prefix)."""
        return f"{self.uri.rstrip('/')}/{name}.lance"

    def create_exclusive(self, name: str, schema: pa.Schema, data: pa.Table | None = None) -> bool:
        """Create table ``name`` holding ``data`` (or empty) unless a version of it exists; True if this call
        created it, False if another writer had (now or earlier).

        Its first version is committed with no retry, so of racing creators exactly one succeeds. LanceDB's
        ``create_table`` is not exclusive: Lance commits a create that races another as an Overwrite of the
        table, which drops whatever the first creator wrote meanwhile. A folder holding data files but no
        manifest (a creator that died before its commit) is no table and is created over."""
        import lance

        uri = self.table_uri(name)
        try:
            fragments = ([] if data is None or data.num_rows == 0 else
                         lance.fragment.write_fragments(data.cast(schema), uri, schema=schema,
                                                        storage_options=self.storage_options))
            lance.LanceDataset.commit(uri, lance.LanceOperation.Overwrite(schema, fragments), read_version=None,
                                      max_retries=0, storage_options=self.storage_options)
            return True
        except Exception as e:  # it exists; anything else shows when the table cannot be opened either
            try:
                self.open(name)
            except Exception:
                raise e from None
            log.debug("table %s created by another writer: %s", name, e)
            return False

    def open_or_create(self, name: str, schema: pa.Schema):
        """Open ``name``, creating it empty with ``schema`` if no writer has yet."""
        table = self.open_committed(name)
        if table is None:
            self.create_exclusive(name, schema)
            table = self.open(name)
        return table

    def embeddings(self, model: str, dim: int | None = None, meta: dict[str, Any] | None = None):
        """Open the model's table; create it when ``dim`` is given. Refuse other weights under the same key."""
        name = table_name(model)
        if self.has(name):
            table = self.open(name)
            if meta is not None:
                old = self.extraction_meta(model)
                for key in ("weights_hash", "sample_rate", "whisper_mode"):
                    if key in old and key in meta and old[key] != meta[key]:
                        raise ValueError(
                            f"store {self.uri} table {name} holds embeddings with {key}={old[key]!r}, "
                            f"this run has {meta[key]!r}: use another model key or store")
            return table
        if dim is None:
            raise KeyError(f"store {self.uri} has no embeddings of model {model!r} (tables: {self.names()})")
        return self.open_or_create(name, embedding_schema(dim, meta))

    def extraction_meta(self, model: str) -> dict[str, Any]:
        """What the model's table records about how its rows were made ({} when there is no such table)."""
        if not self.has(table_name(model)):
            return {}
        schema = self.open(table_name(model)).schema
        return json.loads((schema.metadata or {}).get(META_KEY, b"{}"))

    def update_extraction_meta(self, model: str, meta: dict[str, Any]) -> None:
        """Replace the recorded extraction metadata (e.g. to add a new condition's parameters)."""
        self.open(table_name(model)).to_lance().update_schema_metadata(
            {META_KEY.decode(): json.dumps(meta, sort_keys=True, default=str)})

    def errors(self):
        return self.open_or_create("errors", ERRORS_SCHEMA)

    def runs(self):
        """The runs table, given the columns added since it was made (null in its older rows)."""
        table = self.open_or_create("runs", RUNS_SCHEMA)
        missing = [f for f in RUNS_SCHEMA if f.name not in table.schema.names]
        if missing:
            try:
                table.add_columns({f.name: f"CAST(NULL AS {'STRING' if pa.types.is_string(f.type) else 'BIGINT'})"
                                   for f in missing})
            except Exception:  # added by a concurrent run meanwhile
                pass
            table = self.open("runs")
        return table

    # manifests -----------------------------------------------------------------------------------
    def put_manifest(self, manifest: Manifest, wait: float = 300.0) -> tuple[int, int]:
        """Store the manifest in ``manifest__<corpus>``: new utterances are added and changed ones updated (merge
        on utt_id, all columns); returns (added, updated). A manifest whose category list differs from the stored
        one of the same corpus name is refused (its ``pdf``/``votes`` would be read in the wrong order)."""
        name = table_name(manifest.corpus, "manifest")
        meta = {k: v for k, v in (manifest.table.schema.metadata or {}).items() if k != REJECTED_KEY}
        data = manifest.table.replace_schema_metadata(meta)
        with Lease.acquire(self, name, _run_id(), what=f"manifest of {manifest.corpus}", wait=wait):
            if not self.has(name) and self.create_exclusive(name, data.schema, data):
                return data.num_rows, 0
            table = self.open(name)
            stored_categories = json.loads((table.schema.metadata or {}).get(CATEGORIES_KEY, b"null"))
            if stored_categories is not None and stored_categories != manifest.categories:
                raise ValueError(
                    f"store {self.uri} table {name} holds corpus {manifest.corpus!r} with categories "
                    f"{stored_categories}; this manifest has {manifest.categories}. Their pdf/votes columns would be "
                    "read in the wrong order: keep the category list, give the corpus another name, or use another store")
            stored = table.to_arrow()
            data = data.select([n for n in stored.column_names if n in data.column_names])
            old = dict(zip(stored.column("utt_id").to_pylist(), stored.select(data.column_names).to_pylist()))
            rows = data.to_pylist()
            changed = [i for i, r in enumerate(rows) if old.get(r["utt_id"]) != r]
            if not changed:
                return 0, 0
            added = sum(1 for i in changed if rows[i]["utt_id"] not in old)
            (table.merge_insert("utt_id").when_matched_update_all().when_not_matched_insert_all()
             .execute(data.take(pa.array(changed, pa.int64()))))
            return added, len(changed) - added

    def manifest(self, corpus: str) -> Manifest:
        name = table_name(corpus, "manifest")
        table = self.open(name).to_arrow()
        meta = table.schema.metadata or {}
        return Manifest(table, json.loads(meta[CATEGORIES_KEY]), source=f"{self.uri}/{name}")

    def categories(self, corpus: str) -> list[str]:
        """The category list a stored manifest's ``pdf``/``votes`` index (from its schema, no rows read)."""
        name = table_name(corpus, "manifest")
        if not self.has(name):
            raise KeyError(f"store {self.uri} has no manifest of corpus {corpus!r}")
        return json.loads((self.open(name).schema.metadata or {})[CATEGORIES_KEY])

    def manifests(self) -> pa.Table | None:
        """All stored manifests concatenated (without their category metadata), or None."""
        tables = [self.open(n).to_arrow() for n in self.names() if n.startswith("manifest__")]
        if not tables:
            return None
        return pa.concat_tables([t.replace_schema_metadata(None) for t in tables], promote_options="default")

    # resume bookkeeping --------------------------------------------------------------------------
    def scan_keys(self, model: str, num_layers: int) -> "KeyScan":
        """What the model's table holds per (utt_id, condition): complete (every layer 0..num_layers-1), partial
        (some layers missing: a crash cut its commits) and the row ids of exact duplicates to drop (a layer
        stored more than once, e.g. by two runs before leases existed: the first copy is kept)."""
        import polars as pl

        name = table_name(model)
        if not self.has(name):
            return KeyScan(set(), set(), [])
        t = self.open(name).to_lance().to_table(columns=["utt_id", "condition", "layer"], with_row_id=True)
        if t.num_rows == 0:
            return KeyScan(set(), set(), [])
        df = pl.from_arrow(t)
        first = pl.col("_rowid").min().over(["utt_id", "condition", "layer"])
        duplicates = df.filter(pl.col("_rowid") != first)["_rowid"].to_list()
        per_key = df.group_by(["utt_id", "condition"]).agg(
            pl.col("layer").filter((pl.col("layer") >= 0) & (pl.col("layer") < num_layers)).n_unique().alias("n"))
        done = per_key["n"] == num_layers
        keys = lambda frame: set(zip(frame["utt_id"].to_list(), frame["condition"].to_list()))  # noqa: E731
        return KeyScan(keys(per_key.filter(done)), keys(per_key.filter(~done)), duplicates)

    def keys(self, model: str, num_layers: int) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """(complete, partial) sets of (utt_id, condition), as :meth:`scan_keys` (duplicated ones count as complete)."""
        scan = self.scan_keys(model, num_layers)
        return scan.complete, scan.partial

    @staticmethod
    def delete_rows(table, row_ids: Sequence[int], chunk: int = 2000) -> int:
        """Delete rows by Lance row id (a commit per ``chunk`` ids); used to drop exact duplicates."""
        ids = [int(i) for i in row_ids]
        for i in range(0, len(ids), chunk):
            table.delete("_rowid IN (" + ", ".join(map(str, ids[i:i + chunk])) + ")")
        return len(ids)

    def error_keys(self, model: str) -> set[tuple[str, str]]:
        if not self.has("errors"):
            return set()
        t = self.errors().to_arrow()
        return {(u, c) for u, c, m in zip(*(t.column(k).to_pylist() for k in ("utt_id", "condition", "model"))) if m == model}

    def delete_keys(self, table, keys: Iterable[tuple[str, str]], model: str | None = None) -> int:
        """Delete every row of the given (utt_id, condition) keys; used to drop partial writes before a re-run."""
        keys = list(keys)
        for i in range(0, len(keys), 200):
            chunk = keys[i:i + 200]
            where = " OR ".join(f"(utt_id = {sql_string(u)} AND condition = {sql_string(c)})" for u, c in chunk)
            if model is not None:
                where = f"model = {sql_string(model)} AND ({where})"
            table.delete(where)
        return len(keys)

    @staticmethod
    def small_fragments(table, commit_bytes: float = 64 * 2**20) -> int:
        """Fragments of an embeddings table holding under a quarter of the rows a full commit of ``commit_bytes``
        holds (rows sized from the table's mean frame count and width)."""
        ds = table.to_lance()
        fragments = ds.get_fragments()
        if not fragments:
            return 0
        t = ds.to_table(columns=["n_frames"])
        dim = ds.schema.field("mean").type.list_size
        frames = float(np.mean(t.column("n_frames").to_numpy())) if t.num_rows else 0.0
        full_rows = commit_bytes / max(1.0, frames * dim * 2 + 2 * dim * 4)  # float16 frames, float32 mean and std
        return sum(1 for f in fragments if f.metadata.physical_rows < full_rows / 4)

    @staticmethod
    def compact(table, keep: timedelta | None = None) -> None:
        """Merge a table's fragments, then delete the files of versions superseded more than ``keep`` ago
        (default :data:`CLEANUP_GRACE`, an hour): a reader that opened an older version within that time keeps
        reading its files, and the disk is not doubled for longer than that."""
        keep = CLEANUP_GRACE if keep is None else keep
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="optimize\\(cleanup_older_than=0\\)")
            table.optimize(cleanup_older_than=keep)

    def finalize(self, model: str, max_fragments: int = 64, keep: timedelta | None = None,
                 commit_bytes: float = 64 * 2**20) -> None:
        """Index the columns readers filter on; compact first once re-runs have left more than ``max_fragments``
        small fragments (under a quarter of a full commit of ``commit_bytes``). A large corpus written in full
        commits has many fragments too, but merging them would rewrite the whole table and, for the readers'
        grace, keep both copies on disk: twice the store for an hour, for nothing a reader gains."""
        table = self.embeddings(model)
        if (len(table.to_lance().get_fragments()) > max_fragments  # a cheap count first: most runs stop here
                and self.small_fragments(table, commit_bytes) > max_fragments):
            self.compact(table, keep)
        ds = table.to_lance()
        for column, kind in (("layer", "BITMAP"), ("condition", "BITMAP"), ("utt_id", "BTREE")):
            ds.create_scalar_index(column, index_type=kind, replace=True)


@dataclass
class KeyScan:
    """Resume bookkeeping of one model table (see :meth:`Store.scan_keys`)."""

    complete: set[tuple[str, str]]
    partial: set[tuple[str, str]]
    duplicates: list[int]


def _run_id() -> str:
    import uuid

    return uuid.uuid4().hex[:12]


# readers ------------------------------------------------------------------------------------------
def layer_filter(condition: str, layer: int, utt_ids: Sequence[str] | None = None) -> str:
    """The Lance filter for one layer of one condition (and only ``utt_ids`` when given), for any embeddings reader."""
    where = f"layer = {int(layer)} AND condition = {sql_string(condition)}"
    if utt_ids is not None:
        where += " AND utt_id IN (" + ", ".join(sql_string(u) for u in utt_ids) + ")"
    return where


def _masked(vectors: pa.Array, mask: np.ndarray | None) -> pa.Array:
    if mask is None:
        return vectors
    mask = np.asarray(mask)
    keep = np.flatnonzero(mask) if mask.dtype == bool else mask.astype(np.int64)
    dim = vectors.type.list_size
    flat = vectors.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)[:, keep]
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel(), pa.float32()), len(keep))


def _join_manifest(t: pa.Table, manifests: pa.Table) -> pa.Table:
    """Append the manifest columns of each row's utt_id (nulls where the manifest lacks it)."""
    where = {u: i for i, u in enumerate(manifests.column("utt_id").to_pylist())}
    idx = pa.array([where.get(u) for u in t.column("utt_id").to_pylist()], pa.int64())
    for name in manifests.column_names:
        if name not in t.column_names:
            t = t.append_column(name, manifests.column(name).take(idx))
    return t


def read_pooled_arrow(store: str | Store, model: str, condition: str = "clean", layer: int = 0,
                      mask: np.ndarray | None = None, with_manifest: bool = True,
                      columns: Sequence[str] = ("utt_id", "condition", "layer", "n_frames", "duration", "snr_db", "mean", "std")) -> pa.Table:
    """Pooled vectors of one model/condition/layer as Arrow; ``mask`` (bool or indices) keeps dimensions."""
    store = as_store(store)
    ds = store.embeddings(model).to_lance()
    t = ds.to_table(columns=list(columns), filter=layer_filter(condition, layer))
    for name in ("mean", "std"):
        if name in t.column_names:
            t = t.set_column(t.column_names.index(name), name, _masked(t.column(name).combine_chunks(), mask))
    if with_manifest:
        manifests = store.manifests()
        if manifests is not None:
            t = _join_manifest(t, manifests)
    return t.sort_by("utt_id")


def read_pooled(store: str | Store, model: str, condition: str = "clean", layer: int = 0,
                mask: np.ndarray | None = None, with_manifest: bool = True):
    """Polars DataFrame: ``utt_id``, ``mean``, ``std`` and the rest, joined with the manifest columns."""
    import polars as pl

    return pl.from_arrow(read_pooled_arrow(store, model, condition, layer, mask, with_manifest))


def pooled_matrix(frame, column: str = "mean") -> np.ndarray:
    """(utterances, dims) float32 matrix from a read_pooled frame's vector column."""
    return np.asarray(frame[column].to_list(), dtype=np.float32)


def pooled_dataset(store: str | Store, model: str, condition: str = "clean", layer: int = 0,
                   columns: Sequence[str] = ("utt_id", "mean", "std")):
    """The same rows as a Ray Dataset (read in parallel by lance-ray), for training and batch jobs."""
    import lance_ray

    store = as_store(store)
    uri = store.embeddings(model).to_lance().uri
    return lance_ray.read_lance(uri, columns=list(columns), filter=layer_filter(condition, layer),
                                storage_options=store.storage_options)


def iter_frames(store: str | Store, model: str, condition: str = "clean", layer: int = 0,
                utt_ids: Sequence[str] | None = None, batch_rows: int = 256) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (utt_id, frames) with frames a (n_frames, dim) float16 matrix, streaming in ``batch_rows``."""
    store = as_store(store)
    ds = store.embeddings(model).to_lance()
    for batch in ds.to_batches(columns=["utt_id", "frames"], filter=layer_filter(condition, layer, utt_ids),
                               batch_size=batch_rows):
        frames = batch.column("frames")
        ids = batch.column("utt_id").to_pylist()
        for i, uid in enumerate(ids):
            cell = frames[i]
            if not cell.is_valid:
                raise ValueError(f"{uid}: stored without frames (extracted with --no-frames)")
            values = cell.values  # FixedSizeListArray of n_frames rows
            dim = values.type.list_size
            yield uid, values.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)


def now() -> float:
    return time.time()
