"""Extraction options of the GPU path through Ray Data into LanceDB: --frame-layers, --dtype in the table's
metadata (and its drift refusal), augmented copies with their drawn parameters, tables made before aug_params."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from test_extract import assert_exactly_once, direct_pooled, store_rows

from ray_ser import audio
from ray_ser.corpora import Manifest, build_manifest
from ray_ser.extract import conditions
from ray_ser.extract.program import ExtractConfig, extract, run_options
from ray_ser.store.core import (
    META_KEY,
    Store,
    embedding_schema,
    iter_frames,
    read_pooled,
)
from ray_ser.store.names import table_name

CONDS = ["clean", "aug0"]


@pytest.fixture(scope="module")
def emodb3(corpora) -> Manifest:
    return build_manifest("emodb", corpora).head(3)


@pytest.fixture(scope="module")
def extracted(local_ray, emodb3, tiny_model_dir, tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("store"))
    opts = ExtractConfig(model=str(tiny_model_dir), conditions=CONDS, batch_size=4, model_key="tiny",
                          frame_layers=[-1], seed=3)
    return uri, opts, extract(emodb3, uri, opts)


def test_frame_layers_store_frames_of_those_layers_and_pooled_vectors_of_all(extracted, emodb3):
    uri, _, result = extracted
    assert result.extracted == 6 and result.errors == 0
    assert_exactly_once(store_rows(uri, "tiny"), emodb3.column("utt_id"), CONDS, num_layers=3)
    rows = Store(uri).embeddings("tiny").to_arrow()
    stored = pa.compute.invert(rows.column("frames").is_null()).to_pylist()
    assert [layer for layer, s in zip(rows.column("layer").to_pylist(), stored) if s] == [2] * 6
    for layer in range(3):
        df = read_pooled(uri, "tiny", condition="clean", layer=layer)
        assert len(df) == 3 and np.isfinite(np.asarray(df["mean"].to_list())).all()
    frames = dict(iter_frames(uri, "tiny", condition="aug0", layer=2))
    assert len(frames) == 3 and all(f.shape[1] == 32 and f.dtype == np.float16 for f in frames.values())
    with pytest.raises(ValueError, match="without frames"):
        next(iter_frames(uri, "tiny", condition="clean", layer=0))


def test_the_table_records_the_resolved_dtype_and_frame_layers(extracted):
    uri, _, _ = extracted
    options = Store(uri).extraction_meta("tiny")["options"]
    assert options["dtype"] == "float32" and options["frame_layers"] == [2]  # auto on a CPU cluster; -1 resolved


def test_augmented_rows_hold_their_draws_and_the_audio_a_direct_call_sees(extracted, emodb3, tiny_model_dir):
    uri, opts, _ = extracted
    rows = Store(uri).embeddings("tiny").to_arrow().select(["utt_id", "condition", "layer", "aug_params"])
    for utt in emodb3:
        got = {r["condition"]: r["aug_params"] for r in rows.to_pylist() if r["utt_id"] == utt.utt_id and r["layer"] == 0}
        wave = audio.load(utt.path, 16000)
        _, params = conditions.apply_with_params(wave, 16000, "aug0", utt.utt_id, seed=3)
        assert got["clean"] is None and json.loads(got["aug0"]) == json.loads(params["aug_params"])
    df = read_pooled(uri, "tiny", condition="aug0", layer=1)
    row = df.row(0, named=True)
    want = direct_pooled(tiny_model_dir, row["utt_id"], row["path"], "aug0", seed=3)[1]
    np.testing.assert_allclose(np.asarray(row["mean"]), want, atol=2e-4, rtol=1e-3)


def test_a_rerun_with_another_dtype_is_refused(extracted, emodb3):
    uri, opts, _ = extracted
    other = ExtractConfig(**{**opts.__dict__, "dtype": "bfloat16"})
    with pytest.raises(ValueError, match="dtype"):
        extract(emodb3, uri, other)
    assert Store(uri).extraction_meta("tiny")["options"]["dtype"] == "float32"


def test_run_options_resolve_auto_per_cluster_and_check_layers():
    opts = ExtractConfig(frame_layers=[0, -1, 0])
    assert run_options(opts, num_layers=7, gpus=2).dtype == "float16"
    assert run_options(opts, num_layers=7, gpus=0).dtype == "float32"
    assert run_options(opts, num_layers=7, gpus=0).frame_layers == [0, 6]
    assert run_options(ExtractConfig(dtype="bfloat16"), 7, gpus=1).dtype == "bfloat16"
    with pytest.raises(ValueError, match="out of range"):
        run_options(ExtractConfig(frame_layers=[7]), num_layers=7, gpus=0)


def test_a_table_made_before_aug_params_gets_the_column_and_stays_readable(local_ray, emodb3, tiny_model_dir, tmp_path):
    uri = str(tmp_path / "store")
    opts = ExtractConfig(model=str(tiny_model_dir), conditions=["clean"], batch_size=4, model_key="tiny")
    old_schema = embedding_schema(32)
    old_schema = pa.schema([f for f in old_schema if f.name != "aug_params"], metadata=old_schema.metadata)
    Store(uri).db.create_table(table_name("tiny"), schema=old_schema)
    extract(emodb3.head(1), uri, opts)  # appends to the old table as it is
    table = Store(uri).embeddings("tiny")
    assert "aug_params" not in table.schema.names and table.count_rows() == 3
    extract(emodb3.head(1), uri, ExtractConfig(**{**opts.__dict__, "conditions": ["clean", "aug1"]}))
    rows = Store(uri).embeddings("tiny").to_arrow()
    assert "aug_params" in rows.column_names and rows.num_rows == 6
    params = {c: p for c, p in zip(rows.column("condition").to_pylist(), rows.column("aug_params").to_pylist())}
    assert params["clean"] is None and isinstance(json.loads(params["aug1"]), dict)
    assert META_KEY in (Store(uri).embeddings("tiny").schema.metadata or {})
    assert len(read_pooled(uri, "tiny", condition="aug1", layer=0)) == 1
