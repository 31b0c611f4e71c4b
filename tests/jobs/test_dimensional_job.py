"""Dimensions on their own (issue 43), on a synthetic store (tests/dimensional.py): a corpus with arousal and no
category trains with the dimensional head alone on speaker-disjoint folds, its targets mapped from 1-3 to one range
and back, is evaluated (CCC, Pearson r, MAE per speaker, gender and condition, the report) and its final model is
scored zero-shot on a corpus that writes arousal on 1-5; a corpus whose rows carry a label, arousal or both trains
both heads; the ridge probe is the regression twin of the probe baseline."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from dimensional import MODEL, build_dims_store

from ray_ser.store import Store

LINEAR = ["--arch", "mlp", "--mlp-hidden", "0", "--layers", "0,1", "--epochs", "5", "--patience", "3", "--lr", "0.01",
          "--no-spec-augment", "--batch-size", "8"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return build_dims_store(tmp_path_factory.mktemp("dims"))


def test_a_dimension_only_corpus_trains_evaluates_and_is_scored_zero_shot(store, local_ray, tmp_path, capsys):
    from ray_ser.jobs import evaluate as evaluate_job
    from ray_ser.jobs import train as train_job
    from ray_ser.train.config import TrainConfig

    run = tmp_path / "run"
    # all 3 folds (2 of the 6 speakers each) and the final model; no layers named: each fold's best layer by
    # ridge_inner on its training speakers
    auto = [a for a in LINEAR if a not in ("--layers", "0,1")]
    summaries = train_job.main(["--store", store, "--model", MODEL, "--corpus", "aro3", "--fold-rule", "3", "--final",
                                "--final-inner-folds", "1", "--no-test-report", "--out", str(run), *auto])
    assert sorted(s["fold"] for s in summaries) == [-1, 0, 1, 2]
    assert all(s["val_metric"] == "mean CCC" and np.isfinite(s["best_val_score"]) for s in summaries)
    info = json.loads((run / "fold_0" / "best" / "config.json").read_text())
    assert info["plan"]["model_cfg"]["n_classes"] == 0 and info["plan"]["model_cfg"]["n_dims"] == 3
    assert info["temperature"] is None  # no categories, no temperature
    assert info["plan"]["layers"] is None and info["plan"]["layer"] in (0, 1)  # one layer, as auto_layers says
    assert info["plan"]["dim_scale"] == {"aro3": {"arousal": [1.0, 3.0]}}  # recorded: predictions map back with it
    cfg = TrainConfig(**info["train"])
    line = train_job.test_report(cfg, Store(cfg.store), summaries[0], str(run))
    assert line.startswith("fold 0 test CCC") and "clean arousal" in line and "UAR" not in line

    r = evaluate_job.main(["--store", store, "--run", str(run), "--n-boot", "50"])
    out = capsys.readouterr().out
    assert "CCC per condition and dimension" in out and "UAR (1-best)" not in out
    pred, m = r["predictions"], r["metrics"]
    assert pred.height == pred["speaker"].n_unique() * 12 * 2 and set(pred["fold"]) == {0, 1, 2}
    assert pred["probs"].null_count() == pred.height
    clean = pred.filter(pl.col("condition") == "clean")
    assert 1.0 < clean["pred_arousal"].mean() < 3.0  # on the corpus's own scale, not the training range
    cells = {(g, met) for g, met in m.select("group_by", "metric").iter_rows()}
    for met in ("ccc_arousal", "pearson_arousal", "mae_arousal"):
        assert {("all", met), ("speaker", met), ("gender", met), ("gender_gap", met), ("condition", met)} <= cells
    row = m.filter((pl.col("group_by") == "all") & (pl.col("metric") == "ccc_arousal") & (pl.col("condition") == "clean"))
    assert row["value"][0] > 0.6 and row["ci_low"][0] <= row["value"][0] <= row["ci_high"][0]
    assert not (m["metric"] == "uar").any() and not m.filter(pl.col("metric").str.contains("valence")).height
    report = (run / "eval" / "report.html").read_text()
    assert "dims_scatter.png" in report and "ccc_vs_snr.png" in report and "Confusion" not in report

    zs = evaluate_job.main(["--store", store, "--run", str(run), "--corpus", "aro5", "--out", str(tmp_path / "zs"),
                            "--n-boot", "20"])
    zpred = zs["predictions"].filter(pl.col("condition") == "clean")
    assert set(zpred["corpus"]) == {"aro5"} and set(zs["metrics"]["protocol"]) == {"zero-shot"}
    assert zpred["pred_arousal"].max() > 3.5  # mapped back to 1-5, the zero-shot corpus's scale
    assert zs["dims"].filter(pl.col("condition") == "clean")["value"][0] > 0.6


def test_rows_with_a_label_arousal_or_both_train_both_heads(store, local_ray, tmp_path, capsys):
    from ray_ser.jobs import evaluate as evaluate_job
    from ray_ser.jobs import train as train_job

    run = tmp_path / "mixed"
    summaries = train_job.main(["--store", store, "--model", MODEL, "--corpus", "mixed", "--fold-rule", "5",
                                "--folds", "0", "--out", str(run), *LINEAR])
    out = capsys.readouterr().out
    assert summaries[0]["val_metric"] == "UAR"
    assert "fold 0 test UAR" in out and "; test CCC: " in out and "clean arousal" in out
    info = json.loads((run / "fold_0" / "best" / "config.json").read_text())
    assert info["plan"]["model_cfg"]["n_classes"] == 2 and info["plan"]["dim_scale"] == {"mixed": {"arousal": [1.0, 7.0]}}
    # temperature scaling fitted on the fold's validation speakers, applied to every prediction, scored before/after
    assert 0.05 < info["temperature"] < 20.0
    r = evaluate_job.main(["--store", store, "--run", str(run), "--n-boot", "20"])
    assert r["predictions"]["temperature"].to_list() == pytest.approx([info["temperature"]] * r["predictions"].height,
                                                                       rel=1e-6)
    m = r["metrics"].filter(pl.col("group_by") == "all")
    assert {"ece", "ece_uncalibrated", "brier", "nll", "nll_uncalibrated"} <= set(m["metric"])
    uar = m.filter(pl.col("metric") == "uar", pl.col("k") == 1)
    ccc = m.filter(pl.col("metric") == "ccc_arousal")
    n_labelled = r["predictions"].filter(pl.col("condition") == "clean")["label"].drop_nulls().len()
    assert uar.height == 2 and ccc.height == 2
    assert uar["n"][0] == n_labelled < r["predictions"].height // 2  # the arousal-only rows are not scored for UAR
    assert ccc["n"][0] < r["predictions"].height // 2  # nor the label-only rows for CCC


def test_the_ridge_probe_is_the_regression_twin_of_the_probe(tmp_path, capsys):
    from ray_ser.jobs import pipeline
    from ray_ser.jobs import saliency as saliency_job

    uri = build_dims_store(tmp_path, speakers={"aro3": 6}, conditions=("clean",))
    result = saliency_job.main(["--store", uri, "--model", MODEL, "--folds", "3", "--no-mis", "--probe",
                                "--probe-layers", "0,1"])
    out = capsys.readouterr().out
    assert "per-layer UAR probe is skipped" in out and "ridge probe on layers 0+1 (arousal" in out
    ridge = result["set_ridge"]["dims"]["arousal"]
    assert ridge["ccc"] > 0.6 and len(ridge["fold_ccc"]) == len(ridge["fold_alpha"]) == 3
    assert ridge["ci"][0] <= ridge["ccc"] <= ridge["ci"][1] and ridge["n"] == 72 and ridge["n_speakers"] == 6

    dims = pl.DataFrame({"condition": ["clean", "5dB"], "metric": ["ccc_arousal"] * 2, "value": [0.7, 0.5],
                         "ci_low": [0.6, 0.4], "ci_high": [0.8, 0.6], "n": [72, 72], "n_speakers": [6, 6]})
    (line,) = pipeline.versus_ridge(dims, {"dims": {"arousal": {"ccc": 0.68, "ci": [0.6, 0.75]}}}, "mlp", "layers 0+1")
    assert line == ("clean CCC arousal, pooled over the outer folds: mlp model 0.700 [0.600, 0.800] vs the ridge probe "
                    "baseline (layers 0+1, alpha by inner CV) 0.680 [0.600, 0.750] (each inside the other's interval)")
    assert pipeline.versus_ridge(dims, None, "mlp")[0].endswith("(no ridge probe baseline)")


def test_targets_map_to_one_range_and_back():
    from ray_ser.train.reader import dim_ranges, scale_dims

    rows = {"a": {"corpus": "x", "arousal": 1.0}, "b": {"corpus": "x", "arousal": 3.0},
            "c": {"corpus": "y", "arousal": 7.0, "valence": -1.0}, "d": {"corpus": "y", "arousal": 1.0, "valence": 1.0}}
    scale = dim_ranges(rows, list(rows))
    assert scale == {"x": {"arousal": [1.0, 3.0]}, "y": {"arousal": [1.0, 7.0], "valence": [-1.0, 1.0]}}
    raw = np.array([[1.0, np.nan, np.nan], [2.0, np.nan, np.nan], [7.0, 0.0, np.nan], [4.0, -1.0, np.nan]])
    corpora = ["x", "x", "y", "y"]
    z = scale_dims(raw, corpora, scale)
    np.testing.assert_allclose(z[:, 0], [-1.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(z[2:, 1], [0.0, -1.0])
    np.testing.assert_allclose(scale_dims(z, corpora, scale, inverse=True), raw)
    assert np.isnan(z[:, 2]).all()


def test_the_cross_corpus_matrix_of_dimensional_corpora_is_ccc(tmp_path):
    from ray_ser.evaluate.matrix import MATRIX_SCHEMA, write_matrix_report
    from ray_ser.jobs.crosscorpus import summary

    rows = [("aro3", "aro3", "out-of-fold", "clean", "ccc_arousal", 0.7, 0.6, 0.8, 72, 6),
            ("aro3", "aro5", "zero-shot", "clean", "ccc_arousal", 0.5, 0.3, 0.6, 36, 3)]
    matrix = pl.DataFrame(rows, schema=MATRIX_SCHEMA, orient="row")
    text = summary(matrix)
    assert text.startswith("CCC arousal (clean)") and "0.500*" in text
    page = write_matrix_report(matrix, tmp_path).read_text()
    assert "matrix_clean_ccc_arousal.png" in page and "ccc_arousal clean" in page
