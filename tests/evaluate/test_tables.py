"""metrics.parquet / confusion.parquet from synthetic predictions: groups, n, values against scikit-learn on the
same rows (calibration against scikit-learn's log loss and Brier score and torchmetrics' ECE), k-best monotonicity,
intervals, paUAR, gender gap, missing heads, errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, brier_score_loss, confusion_matrix, f1_score, log_loss
from torchmetrics.functional.classification import multiclass_calibration_error

from ray_ser import metrics as M
from ray_ser.evaluate.results import METRICS_SCHEMA
from ray_ser.evaluate.tables import (
    condition_order,
    confusion_table,
    metric_table,
    write_tables,
)


def _rows(metrics, **eq):
    f = metrics
    for col, v in eq.items():
        f = f.filter(pl.col(col).is_null()) if v is None else f.filter(pl.col(col) == v)
    return f


def _one(metrics, **eq) -> dict:
    f = _rows(metrics, **eq)
    assert f.height == 1, (eq, f)
    return f.row(0, named=True)


def _arrays(part: pl.DataFrame):
    y = part["label_index"].to_numpy().astype(int)
    probs = np.array(part["probs"].to_list(), dtype=np.float64)
    return y, probs, probs.argmax(1)


def test_schema_and_every_row_has_one_condition(metrics):
    assert metrics.schema == pl.Schema(METRICS_SCHEMA)
    assert metrics["condition"].null_count() == 0 and metrics["value"].is_not_nan().all()
    assert metrics["condition"].unique(maintain_order=True).to_list() == ["clean", "25dB", "15dB", "5dB"]
    # k on the k-best metrics only
    assert _rows(metrics, metric="uar")["k"].null_count() == 0
    assert _rows(metrics, metric="wa")["k"].null_count() == _rows(metrics, metric="wa").height


def test_one_row_per_group_with_the_right_n(metrics, predictions):
    for cond in ("clean", "5dB"):
        uar = _rows(metrics, condition=cond, metric="uar", k=1)
        counts = dict(uar.group_by("group_by").len().iter_rows())
        assert counts == {"all": 1, "condition": 1, "gender": 2, "gender:condition": 2, "gender_gap": 1, "corpus": 1,
                          "speaker": 10, "intensity": 2}
        assert _one(uar, group_by="all")["n"] == 280 and _one(uar, group_by="all")["n_speakers"] == 10
        assert _one(uar, group_by="condition")["group"] == cond
        for g in ("male", "female"):
            assert _one(uar, group_by="gender", group=g)["n"] == 140
            assert _one(uar, group_by="gender", group=g)["n_speakers"] == 5
            assert _one(uar, group_by="gender:condition", group=f"{g}:{cond}")["n"] == 140
        assert set(_rows(uar, group_by="speaker")["n"].to_list()) == {28}
        assert _rows(uar, group_by="speaker")["n_speakers"].to_list() == [1] * 10
        n_low = predictions.filter(pl.col("condition") == cond, pl.col("intensity") == "low").height
        assert _one(uar, group_by="intensity", group="low")["n"] == n_low


def test_values_equal_sklearn_on_the_same_rows(metrics, predictions):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cond in ("clean", "15dB"):
            part = predictions.filter(pl.col("condition") == cond)
            groups = [("all", "all", part), ("gender", "female", part.filter(pl.col("gender") == "female")),
                      ("speaker", "s03", part.filter(pl.col("speaker") == "s03"))]
            for group_by, group, rows in groups:
                y, _, pred = _arrays(rows)
                m = _rows(metrics, condition=cond, group_by=group_by, group=group)
                assert _one(m, metric="uar", k=1)["value"] == pytest.approx(balanced_accuracy_score(y, pred))
                assert _one(m, metric="wa")["value"] == pytest.approx(np.mean(y == pred))
                assert _one(m, metric="f1_macro")["value"] == pytest.approx(f1_score(y, pred, average="macro"))
                assert _one(m, metric="f1_micro")["value"] == pytest.approx(f1_score(y, pred, average="micro"))
                _, probs, _ = _arrays(rows)
                for k in (2, 3):
                    assert _one(m, metric="uar", k=k)["value"] == pytest.approx(M.kbest_uar(y, probs, k))
                x = rows["arousal"].to_numpy().astype(float)
                yh = rows["pred_arousal"].to_numpy().astype(float)
                assert _one(m, metric="ccc_arousal")["value"] == pytest.approx(M.ccc(x, yh), abs=1e-9)
                assert _one(m, metric="mse_arousal")["value"] == pytest.approx(M.mse(x, yh), abs=1e-9)
                pdf = np.array(rows["pdf"].to_list(), float)
                assert _one(m, metric="pdf_overlap")["value"] == pytest.approx(M.pdf_overlap(pdf, probs).mean())
                c = probs.shape[1]
                assert _one(m, metric="nll")["value"] == pytest.approx(log_loss(y, probs, labels=range(c)))
                assert _one(m, metric="brier")["value"] == pytest.approx(
                    brier_score_loss(y, probs, labels=list(range(c))))
                ece = multiclass_calibration_error(torch.tensor(probs), torch.tensor(y), num_classes=c, n_bins=15)
                assert _one(m, metric="ece")["value"] == pytest.approx(float(ece), abs=1e-6)


def test_kbest_uar_never_falls_as_k_grows(metrics):
    uar = _rows(metrics, metric="uar").filter(pl.col("group_by") != "gender_gap")  # a difference need not grow
    wide = uar.pivot(on="k", index=["group_by", "group", "condition"], values="value")
    assert wide.height == 4 * 19
    assert (wide["1"] <= wide["2"] + 1e-12).all() and (wide["2"] <= wide["3"] + 1e-12).all()
    assert (wide["1"] < wide["2"]).any()  # the synthetic confusable class makes 2-best matter


def test_intervals_bracket_the_estimate_and_are_null_for_one_speaker(metrics):
    grouped = metrics.filter(pl.col("group_by").is_in(["all", "gender"]),
                             pl.col("metric").is_in(["uar", "ccc_arousal", "ccc_valence"]))
    assert grouped["ci_low"].null_count() == 0
    assert (grouped["ci_low"] <= grouped["value"] + 1e-12).all()
    assert (grouped["value"] <= grouped["ci_high"] + 1e-12).all()
    speakers = _rows(metrics, group_by="speaker")
    assert speakers["ci_low"].null_count() == speakers.height == speakers["ci_high"].null_count()
    # five speakers prove less than ten: the gender intervals are wider than the overall one
    w = lambda r: r["ci_high"] - r["ci_low"]  # noqa: E731
    all_w = w(_one(metrics, condition="15dB", group_by="all", metric="uar", k=1))
    assert all(w(_one(metrics, condition="15dB", group_by="gender", group=g, metric="uar", k=1)) > all_w
               for g in ("male", "female"))


def test_pauar_from_the_per_speaker_rows(metrics):
    for cond in ("clean", "5dB"):
        for k in (1, 2, 3):
            su = _rows(metrics, condition=cond, group_by="speaker", metric="uar", k=k)["value"].to_numpy()
            for metric, thr in (("pauar50", 0.5), ("pauar75", 0.75)):
                row = _one(metrics, condition=cond, group_by="all", metric=metric, k=k)
                assert row["value"] == pytest.approx(M.pauar(su, thr)) and row["n_speakers"] == 10
                assert row["ci_low"] <= row["value"] <= row["ci_high"]
    # per gender too
    male = _rows(metrics, condition="5dB", group_by="speaker", metric="uar", k=1).filter(
        pl.col("group").is_in([f"s{i:02d}" for i in range(0, 10, 2)]))["value"].to_numpy()
    assert _one(metrics, condition="5dB", group_by="gender", group="male", metric="pauar50", k=1)["value"] == \
        pytest.approx(M.pauar(male, 0.5))
    assert _rows(metrics, group_by="speaker", metric="pauar50").is_empty()


def test_gender_gap_is_male_minus_female(metrics):
    for cond in ("clean", "5dB"):
        gap = _one(metrics, condition=cond, group_by="gender_gap", metric="uar", k=1)
        m = _one(metrics, condition=cond, group_by="gender", group="male", metric="uar", k=1)["value"]
        f = _one(metrics, condition=cond, group_by="gender", group="female", metric="uar", k=1)["value"]
        assert gap["group"] == "male-female" and gap["value"] == pytest.approx(m - f)
        assert gap["ci_low"] < gap["value"] < gap["ci_high"] and gap["n"] == 280


def test_mse_per_likert_bin(metrics, predictions):
    part = predictions.filter(pl.col("condition") == "clean")
    x = part["arousal"].to_numpy().astype(float)
    yh = part["pred_arousal"].to_numpy().astype(float)
    ref = M.mse_per_bin(x, yh)
    rows = _rows(metrics, condition="clean", group_by="arousal_bin", metric="mse_arousal")
    assert rows.height == len(ref)
    for b, (mse, n) in ref.items():
        row = _one(rows, group=f"{b:g}")
        assert row["value"] == pytest.approx(mse, abs=1e-9) and row["n"] == n


def test_seeded_and_deterministic(predictions, categories):
    part = predictions.filter(pl.col("condition") == "15dB")
    a = metric_table(part, categories, n_boot=100, seed=1)
    b = metric_table(part, categories, n_boot=100, seed=1)
    c = metric_table(part, categories, n_boot=100, seed=2)
    assert a.equals(b)
    assert a["value"].equals(c["value"]) and not a["ci_low"].equals(c["ci_low"])


def test_missing_heads_and_votes(predictions, categories):
    part = predictions.filter(pl.col("condition") == "clean")
    no_probs = part.with_columns(pl.lit(None, dtype=pl.List(pl.Float32)).alias("probs"))
    m = metric_table(no_probs, categories, n_boot=50)
    assert _rows(m, metric="uar").is_empty() and not _rows(m, metric="ccc_arousal").is_empty()
    no_dims = part.drop("pred_arousal", "pred_valence", "pred_dominance")
    m = metric_table(no_dims, categories, n_boot=50)
    assert m.filter(pl.col("metric").str.starts_with("ccc_")).is_empty() and not _rows(m, metric="uar").is_empty()
    # grader PDFs count only where the corpus has votes
    half = part.with_columns((pl.col("speaker") < "s05").alias("has_votes"))
    m = metric_table(half, categories, n_boot=50)
    row = _one(m, group_by="all", metric="pdf_overlap")
    assert row["n"] == half["has_votes"].sum() and row["n_speakers"] == 5
    assert _rows(m, group_by="speaker", group="s07", metric="pdf_overlap").is_empty()
    # no dominance in the synthetic data: no dominance rows at all
    assert _rows(m, metric="ccc_dominance").is_empty()


def test_two_runs_are_kept_apart(predictions, categories):
    part = predictions.filter(pl.col("condition") == "clean")
    both = pl.concat([part, part.with_columns(pl.lit("other").alias("run"))])
    m = metric_table(both, categories, n_boot=50)
    assert sorted(m["run"].unique().to_list()) == ["other", "synthetic"]
    a = _one(m, run="synthetic", group_by="all", metric="uar", k=1)
    b = _one(m, run="other", group_by="all", metric="uar", k=1)
    assert a["value"] == b["value"] and a["n"] == 280


def test_confusion_table(predictions, categories):
    conf = confusion_table(predictions, categories)
    assert conf.height == 4 * 7 * 7
    part = predictions.filter(pl.col("condition") == "5dB")
    y, _, pred = _arrays(part)
    mat = conf.filter(pl.col("condition") == "5dB").pivot(on="pred", index="true", values="count")
    np.testing.assert_array_equal(mat.select(categories).to_numpy(), confusion_matrix(y, pred, labels=range(7)))
    assert mat["true"].to_list() == categories


def test_condition_order():
    assert condition_order(["5dB", "reverb", "clean", "15dB", "25dB", "reverb+15dB"]) == \
        ["clean", "25dB", "15dB", "5dB", "reverb", "reverb+15dB"]


def test_bad_input_is_named(predictions, categories, tmp_path):
    part = predictions.filter(pl.col("condition") == "clean")
    with pytest.raises(ValueError, match="more than once"):
        metric_table(pl.concat([part, part.head(3)]), categories)
    with pytest.raises(ValueError, match="length"):
        metric_table(part, categories + ["extra"])
    with pytest.raises(ValueError, match="lack the column"):
        metric_table(part.drop("speaker"), categories)
    path = tmp_path / "predictions.parquet"
    part.write_parquet(path)  # no category metadata
    with pytest.raises(ValueError, match=str(path)):
        write_tables(path, tmp_path)


def test_write_tables_round_trip(predictions, categories, tmp_path):
    part = predictions.filter(pl.col("condition").is_in(["clean", "5dB"]))
    paths = write_tables(part, tmp_path, categories=categories, by=["intensity"], n_boot=50)
    m = pl.read_parquet(paths["metrics"])
    assert m.equals(metric_table(part, categories, by=["intensity"], n_boot=50))
    meta = pq.read_schema(paths["metrics"]).metadata
    assert json.loads(meta[b"ray_ser.categories"]) == categories
    assert json.loads(meta[b"ray_ser.bootstrap"])["n_boot"] == 50
    assert pl.read_parquet(paths["confusion"])["count"].sum() == part.height


def test_temperature_scaled_rows_also_score_the_probabilities_before_it(predictions, categories):
    from ray_ser.train.calibration import scale

    part = predictions.filter(pl.col("condition") == "clean")
    y, raw, _ = _arrays(part)
    t = 1.8
    scaled = predictions.filter(pl.col("condition") == "clean").with_columns(
        pl.Series("probs", scale(raw, t).astype(np.float32).tolist(), dtype=pl.List(pl.Float32)),
        pl.lit(t, pl.Float32).alias("temperature"))
    m = _rows(metric_table(scaled, categories, n_boot=50), group_by="all", condition="clean")
    c = len(categories)
    before = multiclass_calibration_error(torch.tensor(raw), torch.tensor(y), num_classes=c, n_bins=15)
    after = multiclass_calibration_error(torch.tensor(scale(raw, t)), torch.tensor(y), num_classes=c, n_bins=15)
    assert _one(m, metric="ece_uncalibrated")["value"] == pytest.approx(float(before), abs=1e-5)
    assert _one(m, metric="ece")["value"] == pytest.approx(float(after), abs=1e-5)
    assert _one(m, metric="nll_uncalibrated")["value"] == pytest.approx(log_loss(y, raw, labels=range(c)), rel=1e-5)
    assert _one(m, metric="uar", k=1)["value"] == pytest.approx(balanced_accuracy_score(y, raw.argmax(1)))
    # without a temperature there is nothing before it
    plain = _rows(metric_table(part, categories, n_boot=20), group_by="all")
    assert not plain.filter(pl.col("metric").str.ends_with("_uncalibrated")).height
