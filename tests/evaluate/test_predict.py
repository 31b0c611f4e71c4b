"""Out-of-fold predictions and the evaluation job on the synthetic store: every utterance x condition is
predicted exactly once, by the fold that never trained on its speaker, and the job writes its three files."""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.fixture(scope="module")
def run_dir(synth_store, tmp_path_factory) -> Path:
    """A training run folder with one (untrained, seeded) best checkpoint per outer fold: what evaluation reads."""
    import torch

    from ray_ser.train import TrainConfig, build_fold_model, plan_fold, resolve_assignment, write_best

    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(store=synth_store, model="tiny", layer=1, conv_channels=16, gru_hidden=16, embed_dim=8,
                      keep_ratio=0.6)
    a = resolve_assignment(cfg)
    for fold in a.fold_ids:
        plan = plan_fold(cfg, a, fold)[0]
        torch.manual_seed(fold)
        state = {"best_model": build_fold_model(plan).state_dict(), "best_epoch": 0, "best_score": 0.5, "epoch": 1}
        write_best(out, cfg, plan, state)
    return out


def test_out_of_fold_predictions_cover_each_utterance_and_condition_once(synth_store, run_dir):
    from ray_ser.evaluate.predict import predict_run
    from ray_ser.train import resolve_assignment, TrainConfig

    pred, categories, config = predict_run(synth_store, run_dir, by=["gender"])
    a = resolve_assignment(TrainConfig(store=synth_store, model="tiny"))
    assert categories == ["calm", "excited", "sad"] and config["fold_id"] == a.id
    keys = pred.select("utt_id", "condition").rows()
    assert len(keys) == len(set(keys)) == 2 * len(a.utt_ids)  # clean + 5dB, each once
    fold_of = a.fold_of()
    assert all(fold_of[u] == f for u, f in zip(pred["utt_id"], pred["fold"]))  # predicted by its own test fold
    assert pred["probs"].list.len().unique().to_list() == [3]
    assert pred.filter(pl.col("condition") == "5dB")["snr_db"].null_count() == 0
    assert pred.filter(pl.col("condition") == "clean")["snr_db"].null_count() == pred.height // 2
    assert set(pred["pred"].unique().to_list()) <= set(categories) and pred["has_votes"].all()


def test_evaluate_job_writes_predictions_metrics_and_report(synth_store, run_dir, tmp_path):
    sys.path.insert(0, str(ROOT / "jobs"))
    import evaluate as job

    out = tmp_path / "eval"
    result = job.main(["--store", synth_store, "--run", str(run_dir), "--out", str(out), "--n-boot", "50"])
    for name in ("predictions.parquet", "metrics.parquet", "confusion.parquet", "report.html"):
        assert (out / name).exists(), name
    m = pl.read_parquet(out / "metrics.parquet")
    required = ["run", "group_by", "group", "condition", "metric", "k", "value", "ci_low", "ci_high", "n", "n_speakers"]
    assert set(required) <= set(m.columns)
    overall = m.filter((pl.col("group_by") == "all") & (pl.col("metric") == "uar") & (pl.col("k") == 1))
    assert sorted(overall["condition"].to_list()) == ["5dB", "clean"] and (overall["n_speakers"] == 6).all()
    assert {"speaker", "gender", "condition", "gender:condition"} <= set(m["group_by"].unique().to_list())
    assert result["predictions"].height == 2 * 72
