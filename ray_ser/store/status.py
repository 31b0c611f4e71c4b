"""What a store holds, for ``ray-ser status``: corpora, embeddings per model key (conditions, layers, rows,
errors), extraction runs, and the analysis tables with the fold assignments they were made under.

Reads only small columns (ids, conditions, layers, folds), never vectors or frames."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ray_ser.store import catalog
from ray_ser.store.core import Store


@dataclass
class StoreStatus:
    """One store's contents, table by table (plain data: printed by :func:`render`, asserted on in tests)."""

    uri: str
    corpora: list[dict] = field(default_factory=list)
    embeddings: list[dict] = field(default_factory=list)
    analyses: list[dict] = field(default_factory=list)
    other: list[dict] = field(default_factory=list)
    errors: int = 0
    runs: int = 0


def _columns(table, columns: list[str]) -> pa.Table:
    """Those of ``columns`` the LanceDB ``table`` has, read without the rest."""
    present = [c for c in columns if c in table.schema.names]
    return table.to_lance().to_table(columns=present)


def _unique(t: pa.Table, column: str) -> list:
    return sorted(v for v in pc.unique(t[column]).to_pylist() if v is not None) if column in t.column_names else []


def read_status(uri: str) -> StoreStatus:
    """Summarise the store at ``uri``; a local folder that does not exist is an error, not a new store."""
    if "://" not in uri and not Path(uri).is_dir():
        raise FileNotFoundError(f"no store at {uri!r} (run `ray-ser extract` or `ray-ser run` to make one)")
    store = Store(uri)
    status = StoreStatus(uri=uri)
    tables = {name: t for name in sorted(store.names()) if (t := store.open_committed(name)) is not None}
    errors_by_model: dict[str, int] = {}
    if "errors" in tables:
        t = _columns(tables["errors"], ["model"])
        status.errors = t.num_rows
        errors_by_model = {c["values"]: c["counts"] for c in pc.value_counts(t["model"]).to_pylist()}
    if "runs" in tables:
        status.runs = tables["runs"].count_rows()
    for name, table in tables.items():
        kind, _, key = name.partition("__")
        if kind == "manifest":
            t = _columns(table, ["speaker", "label"])
            status.corpora.append({"corpus": key, "utterances": t.num_rows, "speakers": len(_unique(t, "speaker")),
                                   "categories": _unique(t, "label")})
        elif kind == "emb":
            t = _columns(table, ["utt_id", "condition", "layer", "model"])
            models = _unique(t, "model")
            status.embeddings.append({
                "key": key, "rows": t.num_rows, "utterances": len(_unique(t, "utt_id")),
                "conditions": _unique(t, "condition"), "layers": len(_unique(t, "layer")),
                "errors": sum(errors_by_model.get(m, 0) for m in (models or [key])),
            })
        elif kind in catalog.SPECS:
            t = _columns(table, ["fold_id", "fold", "condition", "layer", "k", "criterion"])
            status.analyses.append({
                "table": name, "rows": t.num_rows, "fold_ids": _unique(t, "fold_id"),
                "folds": len([f for f in _unique(t, "fold") if f >= 0]), "conditions": _unique(t, "condition"),
                "made_by": catalog.SPECS[kind].made_by,
            })
        elif kind not in ("errors", "runs", "lease"):
            status.other.append({"table": name, "rows": table.count_rows()})
    return status


def _list(values: list, most: int = 6) -> str:
    shown = ", ".join(str(v) for v in values[:most])
    return shown + (f", ... ({len(values)})" if len(values) > most else "")


def render(status: StoreStatus) -> str:
    """The status as a few aligned lines a person reads at a glance."""
    lines = [f"store {status.uri}: {status.runs} extraction run(s), {status.errors} error row(s)"]
    lines.append("corpora:" if status.corpora else "corpora: none")
    for c in status.corpora:
        lines.append(f"  {c['corpus']:<14} {c['utterances']:>7} utterances  {c['speakers']:>4} speakers  "
                     f"categories {_list(c['categories'], 8)}")
    lines.append("embeddings:" if status.embeddings else "embeddings: none")
    for e in status.embeddings:
        lines.append(f"  {e['key']:<24} {e['utterances']:>7} utterances  {e['layers']:>3} layers  "
                     f"{e['rows']:>9} rows  {e['errors']:>5} errors  conditions {_list(e['conditions'])}")
    lines.append("analysis tables:" if status.analyses else "analysis tables: none")
    for a in status.analyses:
        ids = _list(a["fold_ids"], 3) or "-"
        lines.append(f"  {a['table']:<36} {a['rows']:>9} rows  {a['folds']:>3} folds  fold ids {ids}"
                     + (f"  conditions {_list(a['conditions'])}" if a["conditions"] else ""))
    for o in status.other:
        lines.append(f"  {o['table']:<36} {o['rows']:>9} rows")
    return "\n".join(lines)
