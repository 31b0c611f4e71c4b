"""Store bookkeeping without Ray: manifests that update, duplicate and partial keys, compaction grace, runs columns."""

from __future__ import annotations

import json
from datetime import timedelta

import lance
import pyarrow as pa
import pytest
from racing import race
from store_checks import check_compaction_grace, rows

from ray_ser.corpora import Manifest, Utterance
from ray_ser.store.core import META_KEY, RUNS_SCHEMA, Store, embedding_schema
from ray_ser.store.names import table_name

CATS = ["angry", "happy", "neutral"]


def manifest(corpus: str = "toy", n: int = 3, label: str = "happy", cats=CATS) -> Manifest:
    return Manifest.from_utterances(
        [Utterance(utt_id=f"{corpus}/u{i}", path=f"/a/{i}.wav", speaker=f"{corpus}/s{i % 2}", corpus=corpus,
                   label=label, pdf=[1.0 if c == label else 0.0 for c in cats]) for i in range(n)], cats)


def test_manifest_rows_update_on_a_changed_manifest(tmp_path):
    store = Store(str(tmp_path))
    assert store.put_manifest(manifest()) == (3, 0)
    assert store.put_manifest(manifest()) == (0, 0)  # unchanged: nothing rewritten
    relabelled = manifest(n=4, label="angry")  # corrected labels for u0..u2 and a new u3
    assert store.put_manifest(relabelled) == (1, 3)
    back = store.manifest("toy")
    assert back.categories == CATS and sorted(back.column("utt_id")) == [f"toy/u{i}" for i in range(4)]
    assert set(back.column("label")) == {"angry"}
    assert all(p == pytest.approx([1.0, 0.0, 0.0]) for p in back.column("pdf"))


def test_manifest_with_other_categories_is_refused(tmp_path):
    store = Store(str(tmp_path))
    store.put_manifest(manifest())
    with pytest.raises(ValueError, match=r"manifest__toy .*categories \['angry', 'happy', 'neutral'\].*"
                                         r"\['happy', 'angry', 'neutral'\]"):
        store.put_manifest(manifest(cats=["happy", "angry", "neutral"]))
    assert store.manifest("toy").column("label") == ["happy"] * 3


def test_multi_corpus_manifest_names_are_safe(tmp_path):
    both = Manifest(pa.concat_tables([manifest("emodb").table, manifest("ravdess").table]), CATS)
    assert both.corpus == "emodb+ravdess"
    store = Store(str(tmp_path))
    store.put_manifest(both)
    assert table_name("emodb+ravdess", "manifest") == "manifest__emodb_ravdess" and store.has("manifest__emodb_ravdess")
    assert len(store.manifest("emodb+ravdess")) == 6 and store.manifests().num_rows == 6


def test_scan_keys_finds_complete_partial_and_exact_duplicates(tmp_path):
    store = Store(str(tmp_path))
    table = store.embeddings("m", dim=4, meta={})
    full = [(u, "clean", layer) for u in ("a", "b", "c") for layer in range(3)]
    table.add(rows(full))
    table.add(rows([("b", "clean", layer) for layer in range(3)]))  # b twice: two runs wrote it
    table.add(rows([("c", "clean", 1)]))  # c's layer 1 twice
    table.add(rows([("d", "clean", 0), ("d", "clean", 1)]))  # d cut short by a crash
    scan = store.scan_keys("m", num_layers=3)
    assert scan.complete == {("a", "clean"), ("b", "clean"), ("c", "clean")} and scan.partial == {("d", "clean")}
    assert len(scan.duplicates) == 4
    assert store.delete_rows(table, scan.duplicates) == 4
    left = table.to_arrow()
    keys = list(zip(*(left.column(k).to_pylist() for k in ("utt_id", "condition", "layer"))))
    assert sorted(keys) == sorted(full + [("d", "clean", 0), ("d", "clean", 1)])  # each layer exactly once
    assert store.scan_keys("m", 3).duplicates == [] and store.keys("m", 3)[1] == {("d", "clean")}


def test_only_small_fragments_call_for_compaction(tmp_path):
    """A large corpus written in full commits has many fragments and is not rewritten (that would hold two copies
    of the store for the readers' grace); re-runs that left many small fragments are merged."""
    store = Store(str(tmp_path))
    table = store.embeddings("m", dim=4, meta={})
    row_bytes = 5 * 4 * 2 + 2 * 4 * 4  # 5 float16 frames of 4 dims, float32 mean and std
    for i in range(4):  # four "full commits" of 30 rows each
        table.add(rows([(f"u{i}_{j}", "clean", layer) for j in range(10) for layer in range(3)]))
    assert Store.small_fragments(table, commit_bytes=30 * row_bytes) == 0
    for i in range(5):  # five re-runs of one utterance each: 3 rows, a tenth of a commit
        table.add(rows([(f"late{i}", "clean", layer) for layer in range(3)]))
    assert Store.small_fragments(table, commit_bytes=30 * row_bytes) == 5
    store.finalize("m", max_fragments=5, commit_bytes=30 * row_bytes)
    assert len(table.to_lance().get_fragments()) == 9  # five small ones are not more than five: left as they are
    store.finalize("m", max_fragments=4, commit_bytes=30 * row_bytes)
    table = store.embeddings("m")  # a fresh handle: the compaction committed a new version
    assert len(table.to_lance().get_fragments()) < 9 and table.count_rows() == 135


@pytest.mark.parametrize(("keep", "old_reader_survives"), [(None, True), (timedelta(0), False)])
def test_compaction_keeps_superseded_files_for_readers(tmp_path, keep, old_reader_survives):
    check_compaction_grace(Store(str(tmp_path)), keep, old_reader_survives)


def test_runs_table_of_an_older_store_gets_the_new_columns(tmp_path):
    store = Store(str(tmp_path))
    old_schema = pa.schema([f for f in RUNS_SCHEMA if f.name not in ("done_before", "failed_before",
                                                                   "manifest_errors", "duplicates_removed", "config")])
    store.db.create_table("runs", schema=old_schema).add(pa.table({
        "run_id": ["r0"], "model": ["m"], "table": ["emb__m"], "corpus": ["toy"], "started": [0.0], "finished": [1.0],
        "options": ["{}"], "extracted": [1], "errors": [0], "skipped": [0]}, schema=old_schema))
    runs = store.runs()
    assert runs.schema.names == RUNS_SCHEMA.names
    assert runs.to_arrow().column("failed_before").to_pylist() == [None]
    assert runs.schema.field("config").type == pa.string() and runs.to_arrow().column("config").to_pylist() == [None]


def test_extraction_meta_can_be_extended(tmp_path):
    store = Store(str(tmp_path))
    assert store.extraction_meta("m") == {}
    store.embeddings("m", dim=4, meta={"options": {"seed": 0}})
    store.update_extraction_meta("m", {"options": {"seed": 0}, "conditions": {"clean": {}}})
    assert store.extraction_meta("m")["conditions"] == {"clean": {}}
    assert json.loads(store.open("emb__m").schema.metadata[META_KEY])["options"] == {"seed": 0}


WRITER = """
import pyarrow as pa
from ray_ser.store.core import Store
Store(store_path).open_or_create("runs_like", pa.schema([("who", pa.string())])).add(pa.table({"who": [me]}))
"""


def test_writers_that_create_a_table_at_once_lose_no_row(tmp_path):
    """Six processes open-or-create the same new table and append a row at once: a create that lost the race
    must not become an Overwrite that drops the rows appended before it (LanceDB's create_table would)."""
    for trial in range(3):
        race(tmp_path / f"t{trial}", WRITER, 6)
        rows = Store(str(tmp_path / f"t{trial}" / "store")).open("runs_like").to_arrow().column("who").to_pylist()
        assert sorted(rows) == [f"p{i}" for i in range(6)], f"trial {trial}"


def test_create_exclusive_creates_once_and_keeps_what_is_there(tmp_path):
    store = Store(str(tmp_path))
    schema = embedding_schema(2, {"weights_hash": "abc"})
    assert store.create_exclusive("emb__m", schema)
    assert store.extraction_meta("m") == {"weights_hash": "abc"}  # schema metadata kept
    row = {"utt_id": "u", "condition": "clean", "layer": 0, "n_frames": 1, "duration": 1.0, "snr_db": None,
           "rt60": None, "mean": [1.0, 2.0], "std": [0.0, 0.0], "frames": [[1.0, 2.0]], "aug_params": None}
    store.open("emb__m").add(pa.Table.from_pylist([row], schema=schema))
    assert not store.create_exclusive("emb__m", schema)
    assert not store.create_exclusive("emb__m", schema, pa.Table.from_pylist([row, row], schema=schema))
    assert store.open("emb__m").count_rows() == 1
    with pytest.raises(Exception):  # neither created nor openable: the real reason, not a False
        Store(str(tmp_path / "f")).create_exclusive("x", schema, pa.table({"nope": [1]}))


def test_a_table_folder_before_its_first_commit_is_no_table(tmp_path):
    """What a racing writer sees while another creates the table: data files, no manifest yet."""
    store = Store(str(tmp_path))
    schema = pa.schema([("who", pa.string())])
    lance.fragment.write_fragments(pa.table({"who": ["a"]}), store.table_uri("t"), schema=schema)
    assert "t" in store.names() and not store.has("t")
    assert store.open_or_create("t", schema).count_rows() == 0  # created over the uncommitted files
    assert store.has("t")
