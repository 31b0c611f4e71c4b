"""Names made safe for LanceDB tables and file names, from model keys and corpus names.

Below corpora and the store, which both need it: a corpus name is checked with it, and table names are made with it."""

from __future__ import annotations

import re


def safe_name(model: str) -> str:
    """The model key with every character LanceDB (or a file name) dislikes replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", model.strip("/"))
