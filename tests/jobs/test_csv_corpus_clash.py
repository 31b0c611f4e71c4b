"""A CSV corpus's name is checked against the store before extraction: another CSV under a name the store already
files is refused, re-running the same CSV is not (jobs/extract.py's check_clash)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from ray_ser.corpora import build_manifest
from ray_ser.jobs import extract as extract_job
from ray_ser.jobs.extract import CorpusClash, check_clash
from ray_ser.store.core import Store
from ray_ser.store.names import table_name


def make_csv(folder, stems, label="angry"):
    """``folder/list.csv`` with corpus column "shared" over short noise clips ``folder/<stem>.wav``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    for stem in stems:
        sf.write(folder / f"{stem}.wav", (0.05 * rng.standard_normal(8000)).astype(np.float32), 16000)
    rows = "".join(f"shared,{stem}.wav,spk{i % 2},{label}\n" for i, stem in enumerate(stems))
    (folder / "list.csv").write_text("corpus,path,speaker,label\n" + rows)
    return folder / "list.csv"


def manifest(csv, **options):
    return build_manifest("csv", csv.parent, csv=str(csv), categories=["angry", "sad"], **options)


def test_another_csv_under_a_stored_name_is_refused(tmp_path):
    first = manifest(make_csv(tmp_path / "a", ["x1", "x2", "x3"]))
    uri = str(tmp_path / "store")
    check_clash(uri, first)  # nothing stored yet
    Store(uri).put_manifest(first)

    check_clash(uri, first)  # the same CSV again: a resume
    check_clash(uri, first.head(1))  # another --limit
    check_clash(uri, manifest(make_csv(tmp_path / "a", ["x1", "x2", "x3", "x4"], label="sad")))  # relabelled, a row more

    same_stems = manifest(make_csv(tmp_path / "b", ["x1", "x2"]))  # shared utt_ids, other audio
    with pytest.raises(CorpusClash) as e:
        check_clash(uri, same_stems)
    msg = str(e.value)
    assert f"store {uri} already files another corpus under the name 'shared'" in msg
    assert f"audio under {tmp_path / 'a'}" in msg and f"({tmp_path / 'b' / 'list.csv'})" in msg
    assert f"audio under {tmp_path / 'b'}" in msg and "utt_id 'shared/x1' is" in msg and "--csv-name" in msg

    disjoint = manifest(make_csv(tmp_path / "c", ["y1", "y2"]))
    with pytest.raises(CorpusClash, match="the two share no utt_id"):
        check_clash(uri, disjoint)
    check_clash(uri, manifest(tmp_path / "c" / "list.csv", name="other"))  # under its own name it is fine


def test_extract_job_refuses_the_clash_before_extracting(local_ray, tiny_model_dir, tmp_path):
    uri = str(tmp_path / "store")
    first, second = make_csv(tmp_path / "a", ["x1", "x2"]), make_csv(tmp_path / "b", ["x1", "x2"])

    def extract(csv, *flags):
        return extract_job.main(["--corpus", "csv", "--csv", str(csv), *flags, "--model", str(tiny_model_dir),
                                 "--model-key", "tiny", "--store", uri, "--conditions", "clean",
                                 "--batch-size", "2", "--pool-size", "1", "--threads", "1"])

    (result,) = extract(first)
    assert result["extracted"] == 2 and result["table"] == table_name("tiny")
    (again,) = extract(first)  # re-running the same CSV resumes
    assert again["extracted"] == 0 and again["done_before"] == 2

    store = Store(uri)
    rows = store.open(table_name("tiny")).count_rows()
    with pytest.raises(CorpusClash, match=r"under the name 'shared'.*last extracted from .*a/list\.csv"):
        extract(second)
    assert store.open(table_name("tiny")).count_rows() == rows  # nothing extracted
    assert store.manifest("shared").column("path") == [str(tmp_path / "a" / f"x{i}.wav") for i in (1, 2)]

    (renamed,) = extract(second, "--csv-name", "second")
    assert renamed["extracted"] == 2 and sorted(store.manifest("second").column("utt_id")) == ["second/x1", "second/x2"]
