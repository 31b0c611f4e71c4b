"""Out-of-fold predictions and the evaluation job on the synthetic store: every utterance x condition is
predicted exactly once, by the fold that never trained on its speaker, and the job writes its three files."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from untrained_runs import write_untrained_run

from ray_ser.store import Store

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("local_ray")


def _write_run(out: Path, store: str, seed: int, folds=None) -> Path:
    """A training run folder with one (untrained, seeded) best checkpoint per outer fold: what evaluation reads."""
    return write_untrained_run(out, store, seed, folds, conv_channels=16, gru_hidden=16, embed_dim=8, keep_ratio=0.6)


@pytest.fixture(scope="module")
def run_dir(synth_store, tmp_path_factory) -> Path:
    return _write_run(tmp_path_factory.mktemp("run"), synth_store, seed=0)


def _folds(synth_store: str, n: int) -> list[int]:
    """The first ``n`` outer folds of the synthetic store's fold assignment."""
    from ray_ser.train.config import TrainConfig
    from ray_ser.train.plan import resolve_assignment

    return resolve_assignment(TrainConfig(store=synth_store, model="tiny"), Store(synth_store)).fold_ids[:n]


@pytest.fixture(scope="module")
def run_dir_b(synth_store, tmp_path_factory) -> Path:
    """Two of ``run_dir``'s folds, other weights: a second ensemble member of those folds, and a run that predicts
    other rows than the whole of ``run_dir``."""
    return _write_run(tmp_path_factory.mktemp("runs") / "run_b", synth_store, seed=100, folds=_folds(synth_store, 2))


@pytest.fixture(scope="module")
def predicted(synth_store, run_dir):
    """``predict_run`` of ``run_dir``, once for the module (frames are immutable, so sharing is safe)."""
    from ray_ser.evaluate.predict import predict_run

    return predict_run(Store(synth_store), run_dir, by=["gender"])


@pytest.fixture(scope="module")
def predicted_b(synth_store, run_dir_b):
    from ray_ser.evaluate.predict import predict_run

    return predict_run(Store(synth_store), run_dir_b)


def test_out_of_fold_predictions_cover_each_utterance_and_condition_once(synth_store, predicted):
    from ray_ser.train.config import TrainConfig
    from ray_ser.train.plan import resolve_assignment

    pred, categories, config = predicted  # predict_run(store, run_dir, by=["gender"])
    a = resolve_assignment(TrainConfig(store=synth_store, model="tiny"), Store(synth_store))
    assert categories == ["calm", "excited", "sad"] and config["fold_id"] == a.id
    keys = pred.select("utt_id", "condition").rows()
    assert len(keys) == len(set(keys)) == 2 * len(a.utt_ids)  # clean + 5dB, each once
    fold_of = a.fold_of()
    assert all(fold_of[u] == f for u, f in zip(pred["utt_id"], pred["fold"]))  # predicted by its own test fold
    assert pred["probs"].list.len().unique().to_list() == [3] and pred["probs"].dtype == pl.List(pl.Float32)
    assert pred.filter(pl.col("condition") == "5dB")["snr_db"].null_count() == 0
    assert pred.filter(pl.col("condition") == "clean")["snr_db"].null_count() == pred.height // 2
    assert set(pred["pred"].unique().to_list()) <= set(categories) and pred["has_votes"].all()


def test_prediction_rows_are_arrow_columns_of_the_model_outputs():
    """The predictor's batches reach the driver as Arrow columns (a list<float32> per row, not one ndarray object
    per row in a pandas frame): values are the softmax and the dimensional head, NaN where the model has none."""
    import numpy as np
    import pyarrow as pa
    import torch

    from ray_ser.evaluate.predict import prediction_rows

    logits, dims = torch.randn(5, 4), torch.randn(5, 3)
    ids, conds = [f"c/u{i}" for i in range(5)], ["clean"] * 5
    t = prediction_rows(np.array(ids, dtype=object), np.array(conds, dtype=object), {"logits": logits, "dims": dims})
    assert t.column_names == ["utt_id", "condition", "probs", "pred_arousal", "pred_valence", "pred_dominance"]
    assert t.schema.field("probs").type == pa.list_(pa.float32()) and t.column("utt_id").to_pylist() == ids
    np.testing.assert_allclose(np.array(t.column("probs").to_pylist()), torch.softmax(logits, -1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(t.column("pred_valence").to_numpy(), dims[:, 1].numpy())
    only_dims = prediction_rows(ids, conds, {"dims": dims})
    assert "probs" not in only_dims.column_names
    no_dims = prediction_rows(ids, conds, {"logits": logits})
    assert np.isnan(no_dims.column("pred_arousal").to_numpy()).all()


def test_evaluate_job_writes_predictions_metrics_and_report(synth_store, run_dir, tmp_path):
    from ray_ser.jobs import evaluate as job

    out = tmp_path / "eval"
    result = job.main(["--store", synth_store, "--run", str(run_dir), "--out", str(out), "--n-boot", "50"])
    for name in ("predictions.parquet", "metrics.parquet", "confusion.parquet", "report.html"):
        assert (out / name).exists(), name
    m = pl.read_parquet(out / "metrics.parquet")
    required = ["run", "group_by", "group", "condition", "metric", "k", "value", "ci_low", "ci_high", "n", "n_speakers"]
    assert set(required) <= set(m.columns)
    overall = m.filter((pl.col("group_by") == "all") & (pl.col("metric") == "uar") & (pl.col("k") == 1))
    assert sorted(overall["condition"].to_list()) == ["5dB", "clean"] and (overall["n_speakers"] == 6).all()
    # what jobs/pipeline.py sets beside the probe baseline: the same rows, returned by the job
    assert result["overall"].sort("condition")["value"].to_list() == overall.sort("condition")["value"].to_list()
    assert {"speaker", "gender", "condition", "gender:condition"} <= set(m["group_by"].unique().to_list())
    assert result["predictions"].height == 2 * 72


def test_an_ensemble_averages_its_members_probabilities_row_by_row(run_dir, run_dir_b, predicted, predicted_b):
    import numpy as np

    from ray_ser.evaluate.predict import ensemble_predictions

    b = predicted_b
    a = (predicted[0].filter(pl.col("fold").is_in(b[0]["fold"].unique().to_list())), *predicted[1:])  # b's folds
    pred, categories, config = ensemble_predictions([a, b])
    keys = ["fold", "condition", "utt_id"]
    pa, pb = a[0].sort(keys), b[0].sort(keys)
    assert pred.select(keys).equals(pa.select(keys)) and pred.height == 2 * 24  # two folds' speakers, 2 conditions
    mean = (np.asarray(pa["probs"].to_list()) + np.asarray(pb["probs"].to_list())) / 2
    assert np.abs(np.asarray(pa["probs"].to_list()) - np.asarray(pb["probs"].to_list())).max() > 1e-3  # members differ
    np.testing.assert_allclose(np.asarray(pred["probs"].to_list()), mean, atol=1e-6)
    assert pred["pred"].to_list() == [categories[i] for i in mean.argmax(1)]
    assert pred["run"].unique().to_list() == [f"{run_dir.name}+{run_dir_b.name}"]
    assert [m["run"] for m in config["ensemble"]] == [run_dir.name, run_dir_b.name]
    assert pred["label"].equals(pa["label"]) and pred["speaker"].equals(pa["speaker"])  # metadata kept
    assert ensemble_predictions([a])[0] is a[0]


def test_an_ensemble_refuses_runs_that_predict_other_rows(predicted, predicted_b):
    from ray_ser.evaluate.predict import ensemble_predictions

    with pytest.raises(ValueError, match="run_b: predicts other"):  # two of the six folds against all six
        ensemble_predictions([predicted, predicted_b])
    a = predicted
    other = (a[0], ["x", "y", "z"], a[2])
    with pytest.raises(ValueError, match="categories"):
        ensemble_predictions([a, other])


def test_evaluate_job_scores_several_runs_as_one_ensemble(synth_store, run_dir_b, tmp_path):
    from ray_ser.jobs import evaluate as job
    from ray_ser.train.config import TrainConfig
    from ray_ser.train.plan import resolve_assignment

    a = resolve_assignment(TrainConfig(store=synth_store, model="tiny"), Store(synth_store))
    folds = a.fold_ids[:2]  # run_dir_b's two folds: the job's ensemble path needs no more, and predicts a third
    run_a = _write_run(tmp_path / "run_a", synth_store, seed=0, folds=folds)
    out = tmp_path / "eval"
    result = job.main(["--store", synth_store, "--run", str(run_a), "--run", str(run_dir_b), "--out", str(out),
                       "--n-boot", "20"])
    pred = pl.read_parquet(out / "predictions.parquet")
    tested = [u for u, f in a.fold_of().items() if f in folds]
    assert pred.height == result["predictions"].height == 2 * len(tested) and len(tested) == 24
    assert set(pred["utt_id"].to_list()) == set(tested)
    assert pred["run"].unique().to_list() == ["run_a+run_b"]
    m = pl.read_parquet(out / "metrics.parquet")
    assert m["run"].unique().to_list() == ["run_a+run_b"]
