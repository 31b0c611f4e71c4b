"""Model bundles: `ray-ser export` writes config.json, model.safetensors, a model card Hugging Face parses and
metrics.parquet; a bundle copied to a fresh folder (no store, nothing unpickled) predicts what the run predicts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest


@pytest.fixture(scope="module")
def run_dir(synth_store, tmp_path_factory) -> Path:
    from serving import write_run

    from ray_ser.evaluate.synthetic import write_synthetic_eval

    run = write_run(tmp_path_factory.mktemp("bundle_run"), synth_store)
    write_synthetic_eval(run / "eval", run=run.name, n_boot=50)
    return run


@pytest.fixture(scope="module")
def bundle_dir(run_dir, tmp_path_factory) -> Path:
    from ray_ser import cli

    out = tmp_path_factory.mktemp("bundles") / "synth"
    assert cli.main(["export", str(run_dir), "--out", str(out)]) == 0
    return out


def test_export_writes_the_bundle_files_and_config(bundle_dir, synth_store):
    from ray_ser.store.core import as_store

    assert sorted(p.name for p in bundle_dir.iterdir()) == ["README.md", "config.json", "metrics.parquet",
                                                           "model.safetensors"]
    cfg = json.loads((bundle_dir / "config.json").read_text())
    meta = as_store(synth_store).extraction_meta("tiny")
    assert cfg["kind"] == "final" and cfg["categories"] == ["calm", "excited", "sad"] and cfg["layers"] == [1, 2]
    assert cfg["foundation_model"]["weights_hash"] == meta["weights_hash"] and cfg["foundation_model"]["model"] == meta["model"]
    assert cfg["scaler"] == "per-corpus" and cfg["temperature"] == [pytest.approx(0.2)] and cfg["mask"] == [True]
    plan = cfg["members"][0]["plan"]
    assert set(plan["corpus_norm"]) == {"synth"} and len(plan["corpus_norm"]["synth"][0]) == len(plan["keep"])
    assert not {"inner", "val", "test", "cv_val"} & set(plan)  # no store's utterance ids leave with a bundle
    assert pl.read_parquet(bundle_dir / "metrics.parquet").height > 0


def test_a_bundle_in_a_fresh_folder_predicts_without_the_store_or_unpickling(bundle_dir, run_dir, synth_store,
                                                                              tmp_path, monkeypatch):
    import pickle

    import torch

    from ray_ser import load_model
    from ray_ser.store.core import as_store

    wavs = sorted(pl.from_arrow(as_store(synth_store).manifests())["path"].to_list())[:4]
    expected = load_model(run_dir).predict_many(wavs)
    fresh = tmp_path / "elsewhere" / "model"
    shutil.copytree(bundle_dir, fresh)

    def refuse(*_, **__):
        raise AssertionError("a bundle must load without unpickling or the store")

    for mod, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(mod, name, refuse)
    monkeypatch.setattr("ray_ser.store.core.as_store", refuse)
    m = load_model(fresh)
    got = m.predict_many(wavs)
    cols = [f"p_{c}" for c in m.categories]
    assert np.abs(got.select(cols).to_numpy() - expected.select(cols).to_numpy()).max() < 1e-6
    assert got["label"].to_list() == expected["label"].to_list() and m.bundle.kind == "final"


def test_the_model_card_parses_as_a_hugging_face_card_with_the_evaluation(bundle_dir, run_dir):
    from huggingface_hub import ModelCard

    card = ModelCard.load(bundle_dir / "README.md")
    assert card.data.pipeline_tag == "audio-classification" and card.data.library_name == "ray_ser"
    assert "uar" in card.data.metrics
    metrics = pl.read_parquet(run_dir / "eval" / "metrics.parquet")
    clean = metrics.filter((pl.col("group_by") == "condition") & (pl.col("condition") == "clean")
                           & (pl.col("metric") == "uar") & (pl.col("k") == 1)).row(0, named=True)
    results = {r.dataset_config: r.metric_value for r in card.data.eval_results}
    assert results["clean"] == pytest.approx(round(clean["value"], 4))
    text = card.text
    assert f"{clean['value']:.3f} [{clean['ci_low']:.3f}, {clean['ci_high']:.3f}]" in text
    for heading in ("## Evaluation protocol", "## Results", "## Calibration", "## Training config", "## Known limits"):
        assert heading in text
    assert "gap male-female" in text and "ECE" in text and "T = 0.200" in text


def test_export_of_the_fold_ensemble_holds_every_fold(run_dir, tmp_path):
    from ray_ser.jobs.export import main
    from ray_ser.serve.bundle import read_bundle

    result = main([str(run_dir), "--out", str(tmp_path / "folds"), "--model", "fold-ensemble"])
    b = read_bundle(tmp_path / "folds")
    assert result["members"] == 2 and b.kind == "fold-ensemble" and [m.name for m in b.members] == ["fold_0", "fold_1"]
