"""`ray-ser predict`: a folder with a bad file and a non-audio file, a CSV input; the bad file is an errors.parquet
row, the non-audio file is skipped and counted, the rest is scored in the contract's columns, exit 0; manifest inputs;
--store caching the frames."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

CONTRACT = ["path", "utt_id", "start", "end", "duration", "label", "p_calm", "p_excited", "p_sad", "model"]


@pytest.fixture(scope="module")
def run_dir(synth_store, tmp_path_factory) -> Path:
    from serving import write_run

    return write_run(tmp_path_factory.mktemp("predict_run"), synth_store, final=False)


@pytest.fixture(scope="module")
def inputs(synth_store, tmp_path_factory) -> Path:
    import shutil

    from ray_ser.store.core import as_store

    folder = tmp_path_factory.mktemp("new_audio")
    paths = sorted(pl.from_arrow(as_store(synth_store).manifests())["path"].to_list())[:3]
    (folder / "sub").mkdir()
    for i, p in enumerate(paths):
        shutil.copy(p, folder / ("sub" if i == 2 else ".") / f"clip{i}.wav")
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    (folder / "notes.txt").write_text("not audio: skipped and counted")
    return folder


def test_a_bad_file_is_an_error_row_and_the_rest_is_scored(run_dir, inputs, tmp_path, capsys):
    from ray_ser import cli

    out = tmp_path / "out" / "predictions.parquet"
    assert cli.main(["predict", "--model", str(run_dir), "--input", str(inputs), "--out", str(out)]) == 0
    pred = pl.read_parquet(out)
    assert pred.columns == CONTRACT
    assert sorted(pred["utt_id"].to_list()) == ["clip0", "clip1", "sub/clip2"]
    assert pred["model"].unique().to_list() == [f"{run_dir.name}/fold-ensemble"]
    probs = pred.select(pl.selectors.starts_with("p_")).to_numpy()
    assert abs(probs.sum(1) - 1).max() < 1e-5
    assert (pred["start"] == 0).all() and (pred["end"] == pred["duration"]).all()
    errors = pl.read_parquet(out.with_name("errors.parquet"))
    assert errors.columns == ["path", "stage", "message"] and errors.height == 1
    assert errors["path"][0].endswith("broken.wav") and errors["stage"][0] == "decode"
    assert "3 files scored" in capsys.readouterr().out
    assert errors["message"][0].startswith("corrupt audio header")


def test_a_csv_input_names_its_files_and_utterance_ids(run_dir, inputs, tmp_path):
    from ray_ser.jobs.predict import main

    csv = tmp_path / "list.csv"
    pl.DataFrame({"path": [str(inputs / "clip0.wav"), "missing.wav"], "utt_id": ["a", "b"]}).write_csv(csv)
    result = main(["--model", str(run_dir / "fold_0" / "best"), "--input", str(csv), "--out", str(tmp_path / "p.parquet")])
    assert result["scored"] == 1 and result["n_errors"] == 1 and result["skipped"] == 0
    assert pl.read_parquet(tmp_path / "p.parquet")["utt_id"].to_list() == ["a"]
    err = pl.read_parquet(tmp_path / "errors.parquet")
    assert err["path"].to_list() == [str(tmp_path / "missing.wav")] and err["message"][0] == "file not found"


def test_folder_inputs_skip_and_count_non_audio_files(inputs):
    from ray_ser.serve.inputs import collect

    found = collect([str(inputs)])
    assert found.skipped == 1 and found.skipped_examples == [str(inputs / "notes.txt")]
    assert [u for _, u in found.items] == ["broken", "clip0", "clip1", "sub/clip2"]


@pytest.mark.usefixtures("local_ray")
def test_the_ray_engine_scores_what_the_local_one_does(run_dir, inputs, tmp_path):
    import numpy as np

    from ray_ser.jobs.predict import main
    from ray_ser.serve.cache import KIND
    from ray_ser.store.core import as_store

    common = ["--model", str(run_dir), "--input", str(inputs), "--window", "0.8", "--hop", "0.4"]
    local = main([*common, "--out", str(tmp_path / "local" / "p.parquet")])
    ray = main([*common, "--out", str(tmp_path / "ray" / "p.parquet"), "--engine", "ray", "--batch-size", "2",
                "--store", str(tmp_path / "cache")])  # the actors fill one cache table side by side
    a, b = (pl.read_parquet(r["predictions"]) for r in (local, ray))
    assert a.columns == b.columns == CONTRACT and a.select("path", "start", "end").equals(b.select("path", "start", "end"))
    assert a.filter(pl.col("start").is_null()).height == 3  # a row per file besides its windows
    probs = pl.selectors.starts_with("p_")
    assert np.abs(a.select(probs).to_numpy() - b.select(probs).to_numpy()).max() < 1e-6
    assert pl.read_parquet(ray["errors"]).equals(pl.read_parquet(local["errors"]))
    cache = as_store(str(tmp_path / "cache"))
    [name] = [n for n in cache.names() if n.startswith(f"{KIND}__")]
    keys = cache.open(name).to_lance().to_table(columns=["key", "layer"])
    assert keys.num_rows == keys.group_by(["key", "layer"]).aggregate([]).num_rows > 0  # no clip computed twice


def test_a_manifest_input_names_its_files_and_utterance_ids(run_dir, inputs, tmp_path):
    from ray_ser.corpora.manifest import Manifest, Utterance
    from ray_ser.jobs.predict import main
    from ray_ser.serve.inputs import collect

    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "x.wav").write_bytes((inputs / "clip1.wav").read_bytes())
    utts = [Utterance(utt_id="spk1_happy", path=str(inputs / "clip0.wav"), speaker="1", corpus="mine"),
            Utterance(utt_id="spk2_sad", path="audio/x.wav", speaker="2", corpus="mine")]  # relative to the manifest
    manifest = Manifest.from_utterances(utts, ["calm", "excited", "sad"]).write(tmp_path / "mine.parquet")
    assert collect([str(manifest)]).items == [(str(inputs / "clip0.wav"), "spk1_happy"),
                                              (str(tmp_path / "audio" / "x.wav"), "spk2_sad")]
    result = main(["--model", str(run_dir / "fold_0" / "best"), "--input", str(manifest),
                   "--out", str(tmp_path / "p.parquet")])
    assert result["scored"] == 2 and result["n_errors"] == 0
    assert pl.read_parquet(tmp_path / "p.parquet")["utt_id"].to_list() == ["spk1_happy", "spk2_sad"]
    pl.DataFrame({"path": ["a.wav"]}).write_parquet(tmp_path / "other.parquet")  # Parquet, but no manifest
    with pytest.raises(ValueError, match="other.parquet: an input Parquet file must be a ray_ser manifest"):
        collect([str(tmp_path / "other.parquet")])


def test_store_caches_the_frames_so_a_second_run_skips_the_forward(run_dir, inputs, tmp_path, monkeypatch):
    from ray_ser.jobs.predict import main
    from ray_ser.serve.model import Predictor

    calls = []
    forward = Predictor._forward

    def counted(self, waves, layers):
        calls.extend(len(w) for w in waves)
        return forward(self, waves, layers)

    monkeypatch.setattr(Predictor, "_forward", counted)
    common = ["--input", str(inputs), "--store", str(tmp_path / "cache")]
    first = main(["--model", str(run_dir), *common, "--out", str(tmp_path / "a" / "p.parquet")])
    assert len(calls) == 3 and first["scored"] == 3  # the broken file never reaches the forward
    calls.clear()
    again = main(["--model", str(run_dir), *common, "--out", str(tmp_path / "b" / "p.parquet")])
    other = main(["--model", str(run_dir / "fold_0" / "best"), *common, "--out", str(tmp_path / "c" / "p.parquet")])
    assert calls == [] and again["scored"] == other["scored"] == 3
    assert pl.read_parquet(again["predictions"]).equals(pl.read_parquet(first["predictions"]))
    assert pl.read_parquet(again["errors"]).equals(pl.read_parquet(first["errors"]))
