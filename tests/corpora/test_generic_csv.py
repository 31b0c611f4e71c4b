"""Generic CSV adapter: columns, defaults, soft labels, path resolution, and errors that name file and row."""

from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile as sf

from ray_ser.corpora import build_manifest, generic_csv
from ray_ser.corpora.manifest import Manifest, ManifestError

SOFT = """utt_id,path,speaker,label,gender,duration,split,language,arousal,valence,arousal_std,p_angry,p_happy,p_neutral,session
a01,wav/spk1_a01.wav,spk1,happy,F,,train,de,0.7,0.8,0.1,0.0,0.75,0.25,s1
a02,wav/spk1_a02.wav,spk1,neutral,female,2.5,train,de,0.3,0.5,,0.1,0.2,0.7,s1
,wav/spk2_b01.wav,spk2,angry,M,,test,de,0.9,0.1,,1.0,0.0,0.0,
b02,wav/spk2_b02.wav,spk2,,male,,test,de,,,,,,,s2
"""

VOTES = """path,speaker,label,votes_angry,votes_happy,votes_neutral,votes_sad
x1.wav,s1,angry,3,1,1,0
x2.wav,s1,neutral,0,2,2,1
x3.wav,s2,sad,0,0,0,4
"""


def _wav(path, seconds):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full(int(16000 * seconds), 0.01, np.float32), 16000)


@pytest.fixture
def soft_csv(tmp_path):
    base = tmp_path / "mycorp"
    base.mkdir()
    _wav(base / "wav" / "spk1_a01.wav", 1.5)
    _wav(base / "wav" / "spk2_b01.wav", 0.75)  # spk1_a02 has a duration column; spk2_b02 is missing
    (base / "meta.csv").write_text(SOFT)
    return base / "meta.csv"


def by_id(m: Manifest):
    return {u.utt_id: u for u in m}


def test_columns_defaults_and_probabilities(soft_csv):
    m = generic_csv.build(soft_csv.parent.parent, csv=soft_csv)
    assert m.categories == ["angry", "happy", "neutral"]  # sorted union of labels and p_ columns
    u = by_id(m)
    assert list(u) == ["meta/a01", "meta/a02", "meta/spk2_b01", "meta/b02"]  # empty utt_id -> file stem
    a01 = u["meta/a01"]
    assert a01.path == str(soft_csv.parent / "wav" / "spk1_a01.wav")
    assert a01.speaker == "meta/spk1" and a01.corpus == "meta" and a01.gender == "female"
    assert a01.duration == pytest.approx(1.5)  # empty cell, read from the audio header
    assert (a01.split, a01.language, a01.label) == ("train", "de", "happy")
    assert a01.pdf == pytest.approx([0.0, 0.75, 0.25]) and a01.votes is None
    assert (a01.arousal, a01.valence, a01.arousal_std) == pytest.approx((0.7, 0.8, 0.1))
    assert a01.valence_std is None and a01.extra == {"session": "s1"}
    assert u["meta/a02"].duration == 2.5 and u["meta/a02"].pdf == pytest.approx([0.1, 0.2, 0.7])
    b01 = u["meta/spk2_b01"]
    assert b01.gender == "male" and b01.duration == pytest.approx(0.75) and b01.pdf == [1.0, 0.0, 0.0]
    assert b01.extra == {}
    b02 = u["meta/b02"]  # unlabelled, no audio, no soft label
    assert b02.label is None and b02.pdf is None and b02.duration is None and b02.arousal is None


def test_votes_columns_and_explicit_categories(tmp_path):
    (tmp_path / "votes.csv").write_text(VOTES)
    m = generic_csv.build(tmp_path, csv="votes.csv", corpus="crowd",
                          categories=["neutral", "happy", "sad", "angry", "fear"])
    assert m.categories == ["neutral", "happy", "sad", "angry", "fear"]
    u = by_id(m)
    x1 = u["crowd/x1"]
    assert x1.speaker == "crowd/s1" and x1.duration is None
    assert x1.votes == [1.0, 1.0, 0.0, 3.0, 0.0]  # reordered to the categories, fear has no column -> 0
    assert x1.pdf == pytest.approx([0.2, 0.2, 0.0, 0.6, 0.0])
    assert x1.n_raters == 5 and x1.agreement == pytest.approx(0.6)
    x2 = u["crowd/x2"]  # a tie still keeps the row's label; agreement is that label's share
    assert x2.pdf == pytest.approx([0.4, 0.4, 0.2, 0.0, 0.0]) and x2.agreement == pytest.approx(0.4)
    assert u["crowd/x3"].pdf == [0.0, 0.0, 1.0, 0.0, 0.0] and u["crowd/x3"].n_raters == 4


def test_audio_root_relative_to_csv_folder(tmp_path):
    (tmp_path / "lists").mkdir()
    _wav(tmp_path / "audio" / "x1.wav", 0.5)
    (tmp_path / "lists" / "votes.csv").write_text(VOTES)
    m = generic_csv.build(tmp_path, csv=tmp_path / "lists" / "votes.csv", audio_root="../audio")
    x1 = by_id(m)["votes/x1"]
    assert x1.path == str(tmp_path / "audio" / "x1.wav") and x1.duration == pytest.approx(0.5)


def test_registry_and_round_trip(soft_csv):
    m = build_manifest("csv", soft_csv.parent, csv="meta.csv")  # relative csv: looked up under data_root
    back = Manifest.read(m.write(soft_csv.parent / "meta.parquet"))
    assert back.categories == m.categories and back.table.equals(m.table)
    assert [u.to_dict() for u in back] == [u.to_dict() for u in m]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("a02,wav/spk1_a02.wav,spk1,neutral", "a02,wav/spk1_a02.wav,spk1,sad"),
         r"row 2 \(line 3\): label 'sad' is not in the categories"),
        (lambda t: t.replace("0.1,0.2,0.7", "0.1,0.2,0.9"), r"row 2 \(line 3\): p_ columns sum to 1.2000, not 1"),
        (lambda t: t.replace("0.1,0.2,0.7", "0.1,,0.7"), r"row 2 \(line 3\): p_ columns \['p_happy'\] are empty"),
        (lambda t: t.replace("b02,", "a01,"), r"row 4 \(line 5\): duplicate utt_id 'meta/a01' \(first in row 1\)"),
        (lambda t: t.replace(",M,", ",x,"), r"row 3 \(line 4\): gender must be"),
        (lambda t: t.replace("0.3,0.5", "high,0.5"), r"row 2 \(line 3\): column 'arousal' is not a number: 'high'"),
        (lambda t: t.replace("female,2.5", "female,-1"), r"row 2 \(line 3\): duration must be positive"),
        (lambda t: t.replace(",spk2,angry", ",,angry"), r"row 3 \(line 4\): empty speaker"),
        (lambda t: t.replace("utt_id,path,", "utt_id,file,"), r"header \(line 1\): missing required columns \['path'\]"),
    ],
)
def test_errors_name_file_row_and_reason(soft_csv, edit, message):
    soft_csv.write_text(edit(SOFT))
    categories = ["angry", "happy", "neutral"]
    with pytest.raises(ManifestError, match=message) as e:
        generic_csv.build(soft_csv.parent, csv=soft_csv, categories=categories, strict=True)
    assert str(soft_csv) in str(e.value)
    if "header" in message:  # a faulty header stops the build in either mode
        with pytest.raises(ManifestError, match=message):
            generic_csv.build(soft_csv.parent, csv=soft_csv, categories=categories)
        return
    # By default the faulty row is left out and named; every other row is kept.
    m = generic_csv.build(soft_csv.parent, csv=soft_csv, categories=categories)
    assert len(m) == 3 and len(m.rejected) == 1
    bad = m.rejected[0]
    assert re.search(message, bad["reason"]) and str(soft_csv) in bad["reason"] and bad["source"] == str(soft_csv)
    assert bad["utt_id"] not in m.column("utt_id") or bad["reason"].count("duplicate") == 1
    row = int(re.search(r"row (\d)", message).group(1))
    assert bad["row"] == row and bad["line"] == row + 1


def test_rejected_rows_survive_parquet(soft_csv, tmp_path):
    soft_csv.write_text(SOFT.replace("0.1,0.2,0.7", "0.1,0.2,0.9").replace(",M,", ",x,"))
    m = generic_csv.build(soft_csv.parent, csv=soft_csv)
    assert [r["utt_id"] for r in m.rejected] == ["meta/a02", "meta/spk2_b01"]
    back = Manifest.read(m.write(tmp_path / "m.parquet"))
    assert back.rejected == m.rejected and back.column("utt_id") == ["meta/a01", "meta/b02"]
    assert "2 rows left out" in back.summary()


def test_unreadable_audio_keeps_the_row_with_a_null_duration(soft_csv):
    (soft_csv.parent / "wav" / "spk1_a01.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")  # corrupt header
    m = generic_csv.build(soft_csv.parent, csv=soft_csv)
    a01 = by_id(m)["meta/a01"]
    assert len(m) == 4 and not m.rejected and a01.duration is None
    assert a01.extra["audio_error"].startswith("corrupt audio header") and a01.extra["session"] == "s1"
    assert m.audio_problems() == [("meta/a01", a01.path, a01.extra["audio_error"])]
    assert by_id(m)["meta/spk2_b01"].duration == pytest.approx(0.75)  # the neighbour is unaffected
    assert "1 with unreadable audio" in m.summary() and "2 whose audio file is missing" in m.summary()  # a02, b02


def test_p_column_outside_explicit_categories_is_an_error(soft_csv):
    with pytest.raises(ManifestError, match=r"meta.csv header \(line 1\): p_ columns \['p_happy'\]"):
        generic_csv.build(soft_csv.parent, csv=soft_csv, categories=["angry", "neutral"])


def test_missing_csv(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        generic_csv.build(tmp_path, csv="nope.csv")


def test_manifest_job_reports_left_out_and_unreadable_rows(soft_csv, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    (soft_csv.parent / "wav" / "spk1_a01.wav").write_bytes(b"not audio at all" * 10)
    soft_csv.write_text(SOFT.replace(",M,", ",x,"))
    job = Path(__file__).resolve().parents[2] / "jobs" / "manifest.py"
    out = subprocess.run([sys.executable, str(job), "--corpus", "csv", "--csv", str(soft_csv),
                          "--out", str(tmp_path / "m.parquet")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "1 rows left out for manifest faults, 1 with unreadable audio" in out.stdout
    assert "gender must be male/female/m/f or empty, got 'x'" in out.stdout and "not an audio file" in out.stdout
    assert Manifest.read(tmp_path / "m.parquet").rejected[0]["utt_id"] == "meta/spk2_b01"
    strict = subprocess.run([sys.executable, str(job), "--corpus", "csv", "--csv", str(soft_csv), "--strict",
                             "--out", str(tmp_path / "s.parquet")], capture_output=True, text=True, timeout=300)
    assert strict.returncode != 0 and "row 3 (line 4): gender must be" in strict.stderr


# corpus name: the name option, else the corpus column, else the stem ------------------------------------------

NAMED = """corpus,path,speaker,label
,x1.wav,s1,angry
mycorpus,x2.wav,s2,sad
mycorpus,x3.wav,mycorpus/s2,sad
"""


def test_corpus_column_names_the_corpus(tmp_path):
    (tmp_path / "list.csv").write_text(NAMED)
    m = generic_csv.build(tmp_path, csv="list.csv")
    assert m.corpus == "mycorpus" and set(m.column("corpus")) == {"mycorpus"}  # the empty cell takes the others'
    assert m.column("utt_id") == ["mycorpus/x1", "mycorpus/x2", "mycorpus/x3"]
    assert m.column("speaker") == ["mycorpus/s1", "mycorpus/s2", "mycorpus/s2"]
    assert all(u.extra == {} for u in m)  # the column names the corpus; it is not kept again in extra
    assert generic_csv.corpus_name(tmp_path, "list.csv") == "mycorpus"


def test_name_option_overrides_the_column_and_the_stem(tmp_path):
    (tmp_path / "list.csv").write_text(NAMED.replace(",x1.wav", "other,x1.wav"))  # mixed, but the option decides
    m = build_manifest("csv", tmp_path, csv="list.csv", name="renamed")
    assert m.corpus == "renamed" and m.column("utt_id")[0] == "renamed/x1"
    assert m.column("speaker") == ["renamed/s1", "renamed/s2", "renamed/mycorpus/s2"]
    assert [u.extra for u in m] == [{"corpus": "other"}, {"corpus": "mycorpus"}, {"corpus": "mycorpus"}]
    assert generic_csv.corpus_name(tmp_path, "list.csv", name="renamed") == "renamed"
    (tmp_path / "votes.csv").write_text(VOTES)  # no corpus column: the stem, unless named
    assert generic_csv.build(tmp_path, csv="votes.csv").corpus == "votes"
    assert generic_csv.build(tmp_path, csv="votes.csv", name="crowd").corpus == "crowd"


def test_a_corpus_column_naming_two_corpora_is_refused(tmp_path):
    csv = tmp_path / "list.csv"
    csv.write_text(NAMED.replace(",x1.wav", "other,x1.wav"))
    for strict in (False, True):
        with pytest.raises(ManifestError, match=r"column 'corpus' names 2 corpora: 'other' \(first in row 1, line 2\), "
                                                r"'mycorpus' \(first in row 2, line 3\)\. A CSV holds one corpus") as e:
            generic_csv.build(tmp_path, csv=csv, strict=strict)
        assert str(csv) in str(e.value) and "--csv-name" in str(e.value)


@pytest.mark.parametrize(
    ("file", "column", "option", "message"),
    [
        ("list.csv", "emodb", None, r"row 1 \(line 2\) column 'corpus': corpus name 'emodb' is a built-in adapter's; "
                                    r"the store files the emodb adapter's corpus under that name"),
        ("ravdess.csv", None, None, r"ravdess.csv \(no corpus column: the file's stem\): corpus name 'ravdess' is a "
                                    r"built-in adapter's"),
        ("list.csv", "mine", "csv", r"\(the name option\): corpus name 'csv' is a built-in adapter's"),
        ("list.csv", "my corpus", None, r"corpus name 'my corpus' is not a safe store name"),
        ("list.csv", None, "a/b", r"corpus name 'a/b' is not a safe store name"),
    ],
)
def test_unsafe_and_built_in_names_are_refused(tmp_path, file, column, option, message):
    rows = "path,speaker\nx1.wav,s1\n" if column is None else f"corpus,path,speaker\n{column},x1.wav,s1\n"
    (tmp_path / file).write_text(rows)
    with pytest.raises(ManifestError, match=message) as e:
        generic_csv.build(tmp_path, csv=file, name=option)
    assert "--csv-name" in str(e.value)
    with pytest.raises(ManifestError, match=message):
        generic_csv.corpus_name(tmp_path, file, name=option)


def test_config_corpus_names_and_csv_name(tmp_path):
    from ray_ser.config import ConfigError, DataConfig, load

    (tmp_path / "list.csv").write_text(NAMED)
    (tmp_path / "votes.csv").write_text(VOTES)
    root = str(tmp_path)
    assert DataConfig(corpora=["emodb", "csv"], csv="list.csv", data_root=root).corpus_names() == ["emodb", "mycorpus"]
    assert DataConfig(corpora=["csv"], csv="votes.csv", data_root=root).corpus_names() == ["votes"]
    assert DataConfig(corpora=["csv"], csv="list.csv", csv_name="x", data_root=root).corpus_names() == ["x"]
    assert DataConfig(corpora=["csv"], csv="elsewhere/gone.csv", data_root=root).corpus_names() == ["gone"]  # not here
    cfg = load(None, {"data.corpora": ["csv"], "data.csv": "list.csv", "data.data_root": root})
    assert cfg.train.corpora == ["mycorpus"]  # training reads the corpus under the name extraction files it
    with pytest.raises(ConfigError, match="data.csv_name: corpus name 'emodb' is a built-in adapter's"):
        load(None, {"data.corpora": ["csv"], "data.csv": "list.csv", "data.csv_name": "emodb"})


def test_manifest_job_csv_name(tmp_path):
    from ray_ser.jobs import manifest as manifest_job

    (tmp_path / "list.csv").write_text(NAMED)
    out = tmp_path / "m.parquet"
    manifest_job.main(["--corpus", "csv", "--csv", str(tmp_path / "list.csv"), "--out", str(out)])
    assert Manifest.read(out).corpus == "mycorpus"
    manifest_job.main(["--corpus", "csv", "--csv", str(tmp_path / "list.csv"), "--csv-name", "given", "--out", str(out)])
    assert Manifest.read(out).corpus == "given"


def test_an_arousal_column_without_labels_is_a_dimensional_only_corpus(tmp_path):
    """RAVDESS-intensity style: arousal 1-3 and no label column; every row is kept, with no categories or PDF."""
    (tmp_path / "intensity.csv").write_text("path,speaker,gender,arousal\na.wav,s1,f,1\nb.wav,s1,f,3\nc.wav,s2,m,2\n")
    m = generic_csv.build(tmp_path, csv="intensity.csv")
    assert m.categories == [] and not m.rejected and len(m) == 3
    rows = m.table.to_pylist()
    assert [r["arousal"] for r in rows] == [1.0, 3.0, 2.0]
    assert all(r["label"] is None and r["pdf"] is None and r["valence"] is None for r in rows)
