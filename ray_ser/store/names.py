"""Names in the store: table names made from model and corpus keys (made safe by :mod:`ray_ser.names`), and SQL
string literals for Lance filters.

They sit apart from :mod:`ray_ser.store.core` so that the lease module, which the core uses, needs nothing back
from it."""

from __future__ import annotations

from ray_ser.names import safe_name


def table_name(model: str, kind: str = "emb") -> str:
    """``<kind>__`` + the model key made safe (:func:`safe_name`)."""
    return f"{kind}__{safe_name(model)}"


def sql_string(value: str) -> str:
    """``value`` as a quoted SQL string literal for a Lance filter (single quotes doubled)."""
    return "'" + str(value).replace("'", "''") + "'"
