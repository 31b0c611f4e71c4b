"""Write mode "fragments": actors write Lance fragments, the driver only commits them; same rows as driver writes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from test_extract import assert_exactly_once, store_rows

from ray_ser.corpora import Manifest, build_manifest
from ray_ser.extract.program import (
    ExtractConfig,
    FragmentBuffer,
    extract,
    fragment_kwargs,
)
from ray_ser.store.core import Store, iter_frames, read_pooled

CONDS = ["clean", "5dB"]


@pytest.fixture(scope="module")
def emodb4(corpora) -> Manifest:
    return build_manifest("emodb", corpora).head(4)


@pytest.fixture(scope="module")
def both(local_ray, emodb4, tiny_model_dir, tmp_path_factory):
    out = {}
    for mode in ("driver", "fragments"):
        uri = str(tmp_path_factory.mktemp(mode))
        opts = ExtractConfig(model=str(tiny_model_dir), conditions=CONDS, batch_size=2, model_key="tiny",
                              write_mode=mode, commit_seconds=0)
        out[mode] = uri, extract(emodb4, uri, opts)
    return out


def test_fragment_writes_equal_driver_writes(both, emodb4):
    (d_uri, d_res), (f_uri, f_res) = both["driver"], both["fragments"]
    assert d_res.extracted == f_res.extracted == 8 and f_res.errors == 0
    assert_exactly_once(store_rows(f_uri, "tiny"), emodb4.column("utt_id"), CONDS, num_layers=3)
    for cond in CONDS:
        for layer in range(3):
            a, b = read_pooled(d_uri, "tiny", cond, layer), read_pooled(f_uri, "tiny", cond, layer)
            assert a["utt_id"].to_list() == b["utt_id"].to_list()
            np.testing.assert_array_equal(np.asarray(a["mean"].to_list()), np.asarray(b["mean"].to_list()))
        fa, fb = dict(iter_frames(d_uri, "tiny", cond, 2)), dict(iter_frames(f_uri, "tiny", cond, 2))
        assert fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)
    runs = Store(f_uri).runs().to_arrow()
    assert runs.column("extracted").to_pylist() == [8]


def test_a_rerun_in_fragment_mode_adds_nothing(both, emodb4, tiny_model_dir):
    f_uri, _ = both["fragments"]
    opts = ExtractConfig(model=str(tiny_model_dir), conditions=CONDS, batch_size=2, model_key="tiny",
                          write_mode="fragments")
    again = extract(emodb4, f_uri, opts)
    assert again.extracted == 0 and again.done_before == 8
    assert_exactly_once(store_rows(f_uri, "tiny"), emodb4.column("utt_id"), CONDS, num_layers=3)


def test_uncommitted_fragments_are_invisible_and_buffer_commits_in_order(tmp_path):
    import lance
    from lance.fragment import write_fragments

    store = Store(str(tmp_path / "s"))
    table = store.db.create_table("t", schema=pa.schema([("x", pa.int64())]))
    uri = table.to_lance().uri
    buf = FragmentBuffer()
    for start in (0, 10):
        frags = write_fragments(pa.table({"x": list(range(start, start + 10))}), uri, schema=table.schema)
        import json

        block = pa.table({"layer": pa.array([-2], pa.int16()), "fragments": [json.dumps([f.to_json() for f in frags])],
                          "extracted": pa.array([10], pa.int64())})
        assert buf.take(block).num_rows == 0
    assert lance.dataset(uri).count_rows() == 0  # written, not committed: no reader sees them
    assert buf.commit(table) == 20 and buf.commit(table) == 0
    assert lance.dataset(uri).to_table().column("x").to_pylist() == list(range(20))


def test_unknown_write_mode_is_an_error():
    with pytest.raises(ValueError, match="write_mode"):  # refused by the config, before any run
        ExtractConfig(write_mode="sideways")
    assert fragment_kwargs(ExtractConfig(), table=None) == {}
