"""The race in the evaluation job on the synthetic store: the probe refitted on the run's own outer folds, its rows
(uar_minus_probe, probe_uar) per condition and fold in metrics.parquet, the report's table, and no leak: a fold's
probe predictions do not depend on that fold's labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from untrained_runs import write_untrained_run

pytestmark = pytest.mark.usefixtures("local_ray")


def _write_run(out: Path, store: str, seed: int, folds=None) -> Path:
    """A run folder with one (untrained, seeded) best checkpoint per outer fold (``folds``: those only): what
    evaluation reads."""
    return write_untrained_run(out, store, seed, folds, arch="mlp", mlp_hidden=0)


@pytest.fixture(scope="module")
def evaluated(synth_store, tmp_path_factory):
    from ray_ser.jobs import evaluate as job

    # three of the six outer folds (the probe's least): each fold's rows and its probe's leak check need no more
    run = _write_run(tmp_path_factory.mktemp("run"), synth_store, seed=0, folds=lambda a: a.fold_ids[:3])
    out = tmp_path_factory.mktemp("eval")
    result = job.main(["--store", synth_store, "--run", str(run), "--out", str(out), "--n-boot", "50",
                       "--probe-layers", "1,2"])
    return result, out


def test_race_rows_per_condition_and_fold_in_metrics(evaluated):
    result, out = evaluated
    m = pl.read_parquet(out / "metrics.parquet")
    race = m.filter(pl.col("metric") == "uar_minus_probe")
    pooled = race.filter(pl.col("group_by") == "all")
    assert sorted(pooled["condition"].to_list()) == ["5dB", "clean"]
    assert pooled["ci_low"].null_count() == 0 and (pooled["ci_low"] <= pooled["value"]).all() \
        and (pooled["value"] <= pooled["ci_high"]).all()
    uar = m.filter(pl.col("group_by") == "all", pl.col("metric") == "uar", pl.col("k") == 1).sort("condition")
    probe = m.filter(pl.col("group_by") == "all", pl.col("metric") == "probe_uar").sort("condition")
    np.testing.assert_allclose(pooled.sort("condition")["value"].to_numpy(),
                               uar["value"].to_numpy() - probe["value"].to_numpy(), atol=1e-12)
    assert (pooled["n"].sort().to_numpy() == uar["n"].to_numpy()).all()  # the same rows
    folds = race.filter(pl.col("group_by") == "fold")
    assert folds.height == 2 * result["predictions"]["fold"].n_unique()
    assert probe["value"].to_numpy().min() > 0.5  # the synthetic classes are easy for a probe on mean vectors
    assert set(result["race"]["verdict"].to_list()) <= {"beats", "ties", "loses"}
    assert "probe baseline" in (out / "report.html").read_text(encoding="utf-8")


def test_pipeline_line_says_the_verdict(evaluated):
    from ray_ser.jobs.pipeline import VERDICT, versus_baseline

    result, _ = evaluated
    line = versus_baseline(result["overall"], None, "mlp", "layers 1+2", result["race"])
    r = result["race"].filter(pl.col("condition") == "clean").row(0, named=True)
    assert line.startswith("clean UAR, pooled over the outer folds: mlp model")
    assert line.endswith(VERDICT[r["verdict"]]) and f"{r['difference']:+.3f}" in line


def test_a_folds_probe_never_sees_that_folds_labels(evaluated, synth_store):
    from ray_ser.evaluate.race import probe_predictions

    result, _ = evaluated
    pred = result["predictions"]
    cats = ["calm", "excited", "sad"]
    layers = {int(f): [1, 2] for f in pred["fold"].unique().to_list()}
    base = probe_predictions(synth_store, "tiny", pred, cats, layers, Cs=[0.1, 1.0])
    f0 = int(pred["fold"].min())
    shuffled = pred.with_columns(pl.when(pl.col("fold") == f0).then((pl.col("label_index") + 1) % 3)
                                 .otherwise(pl.col("label_index")).alias("label_index"),
                                 pl.lit(None, pl.String).alias("label"))
    again = probe_predictions(synth_store, "tiny", shuffled, cats, layers, Cs=[0.1, 1.0])
    keys = ["condition", "utt_id"]
    a = base.filter(pl.col("fold") == f0).sort(keys)
    b = again.filter(pl.col("fold") == f0).sort(keys)
    np.testing.assert_array_equal(np.array(a["probs"].to_list()), np.array(b["probs"].to_list()))
    # and the other folds' probes did see it (their training rows changed)
    other = base.filter(pl.col("fold") != f0).sort(keys)
    assert not np.array_equal(np.array(other["probs"].to_list()),
                              np.array(again.filter(pl.col("fold") != f0).sort(keys)["probs"].to_list()))


def test_evaluate_seeds_scores_each_seed_folder_and_the_spread(synth_store, tmp_path):
    from ray_ser.jobs import evaluate as job

    for seed in (0, 1):  # three outer folds each (the probe's least): the seed table needs no more
        _write_run(tmp_path / "exp" / f"seed_{seed}", synth_store, seed=seed * 100, folds=lambda a: a.fold_ids[:3])
    r = job.main(["--store", synth_store, "--seeds", "2", "--set", f"runs={tmp_path}", "--set", "name=exp",
                  "--n-boot", "20", "--probe-layers", "1"])
    assert (tmp_path / "exp" / "seed_1" / "eval" / "metrics.parquet").is_file()
    table = pl.read_parquet(tmp_path / "exp" / "seeds.parquet")
    assert sorted(set(table["seed"])) == [0, 1] and {"uar", "uar_minus_probe"} == set(table["metric"])
    clean = r["spread"].filter(pl.col("condition") == "clean", pl.col("metric") == "uar").row(0, named=True)
    v = table.filter(pl.col("condition") == "clean", pl.col("metric") == "uar")["value"].to_numpy()
    assert clean["seeds"] == 2 and clean["std"] == pytest.approx(np.std(v, ddof=1)) and r["seed"] == 0
    (tmp_path / "exp" / "seeds.parquet").unlink()  # --run names the folder of the seeds instead of the config
    again = job.main(["--store", synth_store, "--seeds", "2", "--run", str(tmp_path / "exp"), "--n-boot", "20",
                      "--probe-layers", "1"])
    assert pl.read_parquet(tmp_path / "exp" / "seeds.parquet").equals(table) and again["seed"] == 0
