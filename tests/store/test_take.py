"""Reads by row address: exactly the wanted rows, blocks within their budget that never split a key, and the
table version the read was planned on."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ray_ser.store.core import Store, embedding_schema
from ray_ser.store.take import ADDRESS, address_blocks, rows_dataset, wanted_rows

DIM = 4
UTTS = [f"u{i:02d}" for i in range(12)]
CONDS = ["clean", "5dB"]


def frame_rows(keys) -> pa.Table:
    """Rows whose frames say what they are: every value is layer * 1000 + the utterance's number; utterance i
    has 2 + i % 3 frames."""
    schema = embedding_schema(DIM).remove_metadata()
    frames, mean = [], []
    for u, _, layer in keys:
        i = int(u[1:])
        frames.append([[float(layer * 1000 + i)] * DIM] * (2 + i % 3))
        mean.append([0.0] * DIM)
    n = len(keys)
    return pa.table({
        "utt_id": [k[0] for k in keys], "condition": [k[1] for k in keys],
        "layer": pa.array([k[2] for k in keys], pa.int16()),
        "n_frames": pa.array([len(f) for f in frames], pa.int32()), "duration": pa.array([1.0] * n, pa.float32()),
        "snr_db": pa.nulls(n, pa.float32()), "rt60": pa.nulls(n, pa.float32()),
        "mean": pa.array(mean, schema.field("mean").type), "std": pa.array(mean, schema.field("std").type),
        "frames": pa.array(frames, schema.field("frames").type), "aug_params": pa.nulls(n, pa.string()),
    }, schema=schema)


@pytest.fixture
def table(tmp_path):
    """12 utterances x 2 conditions x 3 layers, utterance-major as extraction writes them, in 4 commits."""
    store = Store(str(tmp_path))
    t = store.embeddings("m", dim=DIM, meta={})
    for part in range(4):
        t.add(frame_rows([(u, c, layer) for u in UTTS[part * 3:part * 3 + 3] for c in CONDS for layer in range(3)]))
    assert len(t.to_lance().get_fragments()) == 4
    return t


def test_wanted_rows_are_the_layers_conditions_and_utterances_asked_for(table):
    uri = table.to_lance().uri
    opened, keys = wanted_rows(uri, [1], ["clean"], ["u03", "u07", "u11", "nobody"])
    assert opened.version == table.to_lance().version
    assert sorted(zip(*(keys.column(c).to_pylist() for c in ("utt_id", "condition", "layer")))) == \
        [("u03", "clean", 1), ("u07", "clean", 1), ("u11", "clean", 1)]
    assert keys.column("n_frames").to_pylist() == [2, 3, 4]  # 2 + i % 3, in storage order
    _, every = wanted_rows(uri, [0, 2], None, None)
    assert every.num_rows == 12 * 2 * 2


def test_blocks_keep_to_their_budget_and_never_split_a_key():
    keys = pa.table({ADDRESS: pa.array(np.arange(12), pa.uint64()),
                     "utt_id": [f"u{i // 6}" for i in range(12)], "condition": (["a"] * 3 + ["b"] * 3) * 2,
                     "layer": pa.array([0, 1, 2] * 4, pa.int16())})
    sizes = np.full(12, 10.0)
    blocks = address_blocks(keys, sizes, block_bytes=40)
    assert [b.num_rows for b in blocks] == [4, 4, 4]  # rows up to the budget
    assert address_blocks(keys, np.full(12, 100.0), block_bytes=40)[0].num_rows == 1  # a large row alone
    by_key = address_blocks(keys.take(np.random.default_rng(0).permutation(12)), sizes, block_bytes=40, by_key=True)
    assert [b.num_rows for b in by_key] == [3, 3, 3, 3]  # cut back to whole (utterance, condition) keys
    for b in by_key:
        assert len(set(zip(b.column("utt_id").to_pylist(), b.column("condition").to_pylist()))) == 1
        assert b.column("layer").to_pylist() == [0, 1, 2]
    assert address_blocks(keys.slice(0, 0), np.zeros(0), 40) == []


def test_rows_dataset_reads_exactly_the_planned_rows_of_the_planned_version(local_ray, table):
    uri = table.to_lance().uri
    want = ["u01", "u04", "u05", "u10"]
    ds = rows_dataset(uri, ["utt_id", "condition", "layer", "frames"], [0, 2], ["5dB"], want, block_mb=60 / 2 ** 20)
    table.delete("utt_id = 'u04'")  # a commit after the read was planned: the read keeps the version it planned on
    parts = list(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    got = pa.concat_tables(parts)
    assert len(parts) > 1  # a block of about 60 bytes of rows: one read task per row or two
    keys = sorted(zip(*(got.column(c).to_pylist() for c in ("utt_id", "condition", "layer"))))
    assert keys == sorted((u, "5dB", layer) for u in want for layer in (0, 2))
    for u, layer, frames in zip(got.column("utt_id").to_pylist(), got.column("layer").to_pylist(),
                                got.column("frames").to_pylist()):
        i = int(u[1:])
        assert len(frames) == 2 + i % 3 and {v for f in frames for v in f} == {float(layer * 1000 + i)}
    empty = rows_dataset(uri, ["utt_id", "frames"], [0], ["clean"], [])
    assert empty.count() == 0 and empty.schema().names == ["utt_id", "frames"]
