"""The one catalog of the store's analysis tables: name, schema, key columns and how rows are replaced.

Every table that an analysis writes (saliency, layer ranks, fold assignments, k-means centroids, frame
cluster ids, fold plans) is a :class:`TableSpec` here, and every module reads and writes it through :func:`replace`
and :func:`read`, so a table's layout is said once.

Rules the specs encode:
- **Explicit folds.** Each fold-dependent table carries ``fold`` and ``fold_id`` (the id of the fold
  assignment it was made with, :class:`ray_ser.corpora.folds.FoldAssignment`). :func:`read` with a
  ``fold_id`` refuses rows made under another assignment instead of returning them.
- **Atomic replacement.** :func:`replace` makes the rows of a *scope* (e.g. one model and condition, or one
  (fold, layer, k)) equal to the new rows in one Lance commit (``merge_insert`` that updates matched keys,
  inserts new ones and deletes the scope's other rows), so a concurrent reader sees the old rows or the new,
  never half.
- Extraction's own tables (``emb__``, ``errors``, ``runs``, ``manifest__``) are append/merge tables owned by
  :mod:`ray_ser.store.core`; they are listed here by name for completeness.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pyarrow as pa

from ray_ser.names import safe_name
from ray_ser.store.core import Store, as_store
from ray_ser.store.names import sql_string


@dataclass(frozen=True)
class TableSpec:
    """One kind of store table: ``<kind>__<model>``, its schema, the columns that identify a row and the
    columns whose values bound one replacement (a write replaces every row of its scope)."""

    kind: str
    schema: pa.Schema
    keys: tuple[str, ...]
    scope: tuple[str, ...]
    made_by: str
    """The job that writes it (named in errors when the table is missing)."""

    def name(self, model: str) -> str:
        return f"{self.kind}__{safe_name(model)}"


def _schema(*fields: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema(list(fields))


FOLDS = TableSpec(
    "saliency_folds",
    _schema(("model", pa.string()), ("condition", pa.string()), ("fold_id", pa.string()), ("utt_id", pa.string()),
            ("speaker", pa.string()), ("fold", pa.int32()), ("description", pa.string())),
    keys=("model", "condition", "utt_id"), scope=("model", "condition"), made_by="jobs/saliency.py")
SALIENCY = TableSpec(
    "saliency",
    _schema(("model", pa.string()), ("condition", pa.string()), ("fold_id", pa.string()), ("fold", pa.int32()),
            ("layer", pa.int32()), ("dim", pa.int32()), ("ccs", pa.float64()), ("mis", pa.float64()), ("rank", pa.int32())),
    keys=("model", "condition", "fold", "layer", "dim"), scope=("model", "condition"), made_by="jobs/saliency.py")
LAYER_RANK = TableSpec(
    "layer_rank",
    _schema(("model", pa.string()), ("condition", pa.string()), ("fold_id", pa.string()), ("fold", pa.int32()),
            ("criterion", pa.string()), ("layer", pa.int32()), ("layer_score", pa.float64()), ("layer_rank", pa.int32())),
    keys=("model", "condition", "criterion", "fold", "layer"), scope=("model", "condition", "criterion"),
    made_by="jobs/saliency.py")
CENTROIDS = TableSpec(
    "centroids",
    _schema(("fold_id", pa.string()), ("fold", pa.int32()), ("layer", pa.int32()), ("k", pa.int32()),
            ("cluster", pa.int32()), ("centroid", pa.list_(pa.float32())), ("condition", pa.string()),
            ("seed", pa.int64()), ("n_train", pa.int64())),
    keys=("fold_id", "fold", "layer", "k", "cluster"), scope=("fold_id", "fold", "layer", "k"), made_by="jobs/frames.py")
FRAME_CLUSTERS = TableSpec(
    "frame_clusters",
    _schema(("fold_id", pa.string()), ("fold", pa.int32()), ("utt_id", pa.string()), ("condition", pa.string()),
            ("layer", pa.int32()), ("k", pa.int32()), ("n_frames", pa.int32()), ("ids", pa.list_(pa.int32()))),
    keys=("fold_id", "fold", "utt_id", "condition", "layer", "k"), scope=("fold_id", "fold", "layer", "k"),
    made_by="jobs/frames.py")
FOLD_PLANS = TableSpec(
    "fold_plans",
    _schema(("fold_id", pa.string()), ("fold", pa.int32()), ("plan_key", pa.string()), ("spec", pa.string()),
            ("plan", pa.string())),
    keys=("fold_id", "fold", "plan_key"), scope=("fold_id", "fold", "plan_key"),
    made_by="ray-ser saliency (jobs/saliency.py)")
"""One row per fold plan (:mod:`ray_ser.analysis.fold_plans`): ``plan`` its JSON, ``plan_key`` the hash of the
training fields it depends on (``spec``, JSON), so two configs never share a plan."""

SPECS: dict[str, TableSpec] = {s.kind: s for s in (FOLDS, SALIENCY, LAYER_RANK, CENTROIDS, FRAME_CLUSTERS, FOLD_PLANS)}
EXTRACTION_TABLES = ("emb__<model>", "errors", "runs", "manifest__<corpus>", "lease__<table>")
"""Tables of :mod:`ray_ser.store.core` (appended by extraction, merged on utt_id for manifests)."""


def where(**filters: Any) -> str:
    """A Lance SQL filter from ``column=value`` pairs: a list or tuple means ``IN``; None values are skipped."""
    parts = []
    for column, value in filters.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple, set, frozenset)):
            values = sorted(value)
            if not values:
                return "false"
            parts.append(f"{column} IN ({', '.join(_literal(v) for v in values)})")
        else:
            parts.append(f"{column} = {_literal(value)}")
    return " AND ".join(parts) if parts else "true"


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if hasattr(value, "item"):  # numpy scalars
        return _literal(value.item())
    return sql_string(str(value))


def replace(store: str | Store, spec: TableSpec, model_key: str, data: pa.Table, scope: Mapping[str, Any]) -> int:
    """Make the rows of ``spec``'s table matching ``scope`` exactly ``data``, in one commit; returns rows written.

    ``scope`` names a value for each of ``spec.scope``; every row of ``data`` must lie inside it."""
    store = as_store(store)
    missing = [c for c in spec.scope if c not in scope]
    if missing:
        raise ValueError(f"replacing {spec.kind} rows needs a scope value for {missing}")
    data = data.select(spec.schema.names).cast(spec.schema)
    for column in spec.scope:
        values = set(data.column(column).to_pylist())
        if values - {scope[column]}:
            raise ValueError(f"{spec.kind}: rows with {column}={sorted(values - {scope[column]})[:3]} lie outside "
                             f"the replaced scope {column}={scope[column]!r}")
    name = spec.name(model_key)
    if not store.has(name) and store.create_exclusive(name, spec.schema, data):
        return data.num_rows  # else another writer created it first: merge into theirs
    table = store.open(name)
    missing_cols = [f for f in spec.schema if f.name not in table.schema.names]
    if missing_cols:
        raise ValueError(f"store {store.uri} table {name} predates the columns {[f.name for f in missing_cols]}: "
                         f"delete it and re-run {spec.made_by}")
    (table.merge_insert(list(spec.keys)).when_matched_update_all().when_not_matched_insert_all()
     .when_not_matched_by_source_delete(where(**{c: scope[c] for c in spec.scope})).execute(data))
    return data.num_rows


def read(store: str | Store, spec: TableSpec, model_key: str, columns: Sequence[str] | None = None,
         fold_id: str | None = None, **filters: Any) -> pa.Table:
    """Rows of ``spec``'s table matching ``filters``. With ``fold_id``, rows made under another fold
    assignment raise instead of being returned (the caller asked for folds they do not describe)."""
    store = as_store(store)
    name = spec.name(model_key)
    if not store.has(name):
        raise KeyError(f"store {store.uri} has no {name}: run {spec.made_by} first")
    cols = list(columns) if columns is not None else None
    if fold_id is not None and cols is not None and "fold_id" not in cols:
        cols.append("fold_id")
    t = store.open(name).to_lance().to_table(columns=cols, filter=where(**filters))
    if fold_id is not None and t.num_rows:
        found = sorted(set(t.column("fold_id").to_pylist()) - {fold_id})
        if found:
            raise ValueError(f"{name} rows for {filters} were made under fold assignment {found[0]}, not {fold_id}: "
                             f"re-run {spec.made_by} with the same folds, or read them with that assignment")
    if columns is not None and "fold_id" not in columns and "fold_id" in t.column_names:
        t = t.drop(["fold_id"])
    return t
