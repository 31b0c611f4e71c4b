"""Manifest Parquet I/O: the round trip keeps rows and the category metadata; bad rows are named precisely."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_ser.corpora.manifest import (
    CATEGORIES_KEY,
    COLUMNS,
    SCHEMA,
    Manifest,
    ManifestError,
    Utterance,
)

CATS = ["angry", "happy", "neutral"]


def _utt(i: int, **kw) -> Utterance:
    base = dict(
        utt_id=f"toy/{i:03d}", path=f"/audio/{i:03d}.wav", speaker=f"toy/s{i % 2}", corpus="toy",
        duration=1.5 + i, gender="female" if i % 2 else "male", language="en", label="happy",
        pdf=[0.1, 0.7, 0.2], votes=[1.0, 7.0, 2.0], n_raters=10, agreement=0.7,
        arousal=0.25, valence=-0.5, dominance=0.0, extra={"text": f"sentence {i}", "n": i},
    )
    base.update(kw)
    return Utterance(**base)


def _raw_rows(n: int = 3) -> list[dict]:
    return [_utt(i).to_dict() for i in range(n)]


def _write_raw(path, rows: list[dict], categories=CATS, schema: pa.Schema = SCHEMA) -> str:
    """Write rows with pyarrow directly (no validation), as another tool might."""
    table = pa.Table.from_pylist(rows, schema=schema)
    table = table.replace_schema_metadata({CATEGORIES_KEY: json.dumps(categories).encode()})
    pq.write_table(table, path)
    return str(path)


def test_round_trip_keeps_rows_and_categories(tmp_path):
    utts = [_utt(i) for i in range(4)]
    m = Manifest.from_utterances(utts, CATS)
    out = m.write(tmp_path / "sub" / "toy.parquet")
    assert out.exists() and not (tmp_path / "sub" / "toy.parquet.tmp").exists()

    meta = pq.read_schema(out).metadata
    assert json.loads(meta[CATEGORIES_KEY]) == CATS
    assert meta[b"ray_ser.corpus"] == b"toy"

    back = Manifest.read(out)
    assert back.categories == CATS
    assert back.source == str(out)
    assert len(back) == 4
    assert tuple(back.table.column_names) == COLUMNS
    for a, b in zip(utts, back):
        assert b.utt_id == a.utt_id and b.path == a.path and b.speaker == a.speaker
        assert b.gender == a.gender and b.label == a.label and b.n_raters == a.n_raters
        assert b.duration == a.duration
        assert b.pdf == pytest.approx(a.pdf, abs=1e-6)  # float32 column
        assert b.votes == pytest.approx(a.votes)
        assert b.valence == pytest.approx(a.valence)
        assert b.extra == a.extra


@pytest.mark.parametrize(
    "row, change, expected",
    [
        (1, {"pdf": [0.5, 0.4, 0.3]}, "pdf sums to 1.2000, not 1"),
        (2, {"pdf": [0.5, 0.5]}, "pdf has 2 entries for 3 categories"),
        (1, {"label": "bored"}, "label 'bored' is not in the categories"),
        (0, {"gender": "m"}, "gender must be one of"),
        (2, {"utt_id": "toy/000"}, "duplicate utt_id (first at row 0)"),
        (1, {"duration": -1.0}, "duration must be a positive number"),
    ],
    ids=["pdf-sum", "pdf-length", "unknown-label", "bad-gender", "duplicate-id", "negative-duration"],
)
def test_validation_error_names_file_row_and_utt_id(tmp_path, row, change, expected):
    rows = _raw_rows(3)
    rows[row].update(change)
    path = _write_raw(tmp_path / "bad.parquet", rows)
    with pytest.raises(ManifestError) as err:
        Manifest.read(path)
    msg = str(err.value)
    assert msg.startswith(path), msg
    assert f"row {row} (utt_id={rows[row]['utt_id']!r})" in msg, msg
    assert expected in msg, msg


def test_validation_in_memory_names_row(tmp_path):
    with pytest.raises(ManifestError, match=r"<memory> row 1 \(utt_id='toy/001'\): .*not in the categories"):
        Manifest.from_utterances([_utt(0), _utt(1, label="surprise")], CATS)


def test_missing_optional_columns_become_nulls(tmp_path):
    schema = pa.schema([SCHEMA.field(n) for n in ("utt_id", "path", "speaker", "corpus")])
    rows = [{"utt_id": f"toy/{i}", "path": f"/a/{i}.wav", "speaker": "toy/s", "corpus": "toy"} for i in range(2)]
    path = _write_raw(tmp_path / "minimal.parquet", rows, schema=schema)
    m = Manifest.read(path)
    assert tuple(m.table.column_names) == COLUMNS
    assert m.table.schema.equals(SCHEMA, check_metadata=False)
    for name in COLUMNS[4:]:
        assert m.column(name) == [None, None], name
    u = next(iter(m))
    assert u.pdf is None and u.label is None and u.extra == {}


def test_missing_required_column_raises(tmp_path):
    schema = pa.schema([SCHEMA.field(n) for n in ("utt_id", "path", "corpus")])
    path = _write_raw(tmp_path / "nospk.parquet", [{"utt_id": "a", "path": "p", "corpus": "toy"}], schema=schema)
    with pytest.raises(ManifestError, match="speaker"):
        Manifest.read(path)


def test_missing_categories_metadata_raises(tmp_path):
    path = tmp_path / "nometa.parquet"
    pq.write_table(pa.Table.from_pylist(_raw_rows(1), schema=SCHEMA), path)
    with pytest.raises(ManifestError, match="ray_ser.categories") as err:
        Manifest.read(path)
    assert str(path) in str(err.value)


def test_non_parquet_file_raises_naming_the_file(tmp_path):
    path = tmp_path / "notes.parquet"
    path.write_text("utt_id,path\nnot,parquet\n")
    with pytest.raises(ManifestError) as err:
        Manifest.read(path)
    assert str(path) in str(err.value)
    assert "not a readable Parquet manifest" in str(err.value)


def test_spread_takes_speakers_then_categories_in_turn():
    # speaker s0 holds rows 0-5 (angry, angry, angry, happy, happy, neutral), s1 rows 6-8 (all neutral); sorted by
    # speaker, as corpus adapters write them, so head(4) would be s0's alone
    spec = [("s0", "angry")] * 3 + [("s0", "happy")] * 2 + [("s0", "neutral")] + [("s1", "neutral")] * 3
    m = Manifest.from_utterances([_utt(i, speaker=f"toy/{s}", label=lab) for i, (s, lab) in enumerate(spec)], CATS)
    assert set(m.head(4).column("speaker")) == {"toy/s0"}

    def ids(n):
        return [int(u.split("/")[1]) for u in m.spread(n).column("utt_id")]

    assert ids(2) == [0, 6]                    # one row of each speaker
    assert ids(4) == [0, 3, 6, 7]              # s0's second row is its first happy one, not another angry one
    assert ids(6) == [0, 3, 5, 6, 7, 8]        # s0's three categories, s1's three rows
    assert ids(9) == ids(50) == list(range(9))  # all rows, once, in manifest order
    assert ids(0) == []
    assert m.spread(4).categories == CATS
