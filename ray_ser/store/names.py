"""Names in the store: table names made from model and corpus keys, and SQL string literals for Lance filters.

They sit apart from :mod:`ray_ser.store.core` so that the lease module, which the core uses, needs nothing back
from it."""

from __future__ import annotations

import re


def safe_name(model: str) -> str:
    """The model key with every character LanceDB (or a file name) dislikes replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", model.strip("/"))


def table_name(model: str, kind: str = "emb") -> str:
    """``<kind>__`` + the model key made safe (:func:`safe_name`)."""
    return f"{kind}__{safe_name(model)}"


def sql_string(value: str) -> str:
    """``value`` as a quoted SQL string literal for a Lance filter (single quotes doubled)."""
    return "'" + str(value).replace("'", "''") + "'"
