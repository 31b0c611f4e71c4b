"""Checks of the store's guarantees shared by tests/store (a folder) and tests/objectstore (a bucket)."""

from __future__ import annotations

import lance
import numpy as np
import pyarrow as pa
import pytest

from ray_ser.store.core import Store, embedding_schema


def rows(keys, layers=3, dim=4) -> pa.Table:
    """Embedding rows for (utt_id, condition, layer) triples."""
    n = len(keys)
    schema = embedding_schema(dim).remove_metadata()
    vec = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(n * dim, np.float32)), dim)
    return pa.table({
        "utt_id": [k[0] for k in keys], "condition": [k[1] for k in keys], "layer": pa.array([k[2] for k in keys], pa.int16()),
        "n_frames": pa.array([5] * n, pa.int32()), "duration": pa.array([1.0] * n, pa.float32()),
        "snr_db": pa.nulls(n, pa.float32()), "rt60": pa.nulls(n, pa.float32()), "mean": vec, "std": vec,
        "frames": pa.nulls(n, schema.field("frames").type),
    }).cast(pa.schema([schema.field(c) for c in ("utt_id", "condition", "layer", "n_frames", "duration", "snr_db",
                                                  "rt60", "mean", "std", "frames")]))


def check_compaction_grace(store: Store, keep, old_reader_survives: bool) -> None:
    """Compaction merges the fragments; a reader that opened the table before keeps its files for ``keep``."""
    table = store.embeddings("m", dim=4, meta={})
    for u in "abcde":
        table.add(rows([(u, "clean", layer) for layer in range(3)]))
    reader = lance.dataset(table.to_lance().uri, storage_options=store.storage_options)  # opened before compaction
    Store.compact(table, keep)  # default: the one-hour grace
    assert len(table.to_lance().get_fragments()) == 1
    if old_reader_survives:
        assert reader.to_table(columns=["utt_id"]).num_rows == 15
    else:
        with pytest.raises(Exception, match="Not found"):
            reader.to_table(columns=["utt_id"])
