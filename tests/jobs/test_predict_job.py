"""`ray-ser predict`: a folder with a bad file and a non-audio file, a CSV input; the bad file is an errors.parquet
row, the non-audio file is skipped and counted, the rest is scored in the contract's columns, exit 0."""

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

    common = ["--model", str(run_dir), "--input", str(inputs), "--window", "0.8", "--hop", "0.4"]
    local = main([*common, "--out", str(tmp_path / "local" / "p.parquet")])
    ray = main([*common, "--out", str(tmp_path / "ray" / "p.parquet"), "--engine", "ray", "--batch-size", "2"])
    a, b = (pl.read_parquet(r["predictions"]) for r in (local, ray))
    assert a.columns == b.columns == CONTRACT and a.select("path", "start", "end").equals(b.select("path", "start", "end"))
    assert a.filter(pl.col("start").is_null()).height == 3  # a row per file besides its windows
    probs = pl.selectors.starts_with("p_")
    assert np.abs(a.select(probs).to_numpy() - b.select(probs).to_numpy()).max() < 1e-6
    assert pl.read_parquet(ray["errors"]).equals(pl.read_parquet(local["errors"]))
