"""Across corpora on a synthetic store of three corpora (tests/multicorpus.py: different category lists, a planted
offset and scale per corpus): a final model that never reads the held-out corpus, zero-shot scoring of it, the
refusal of a trained-on corpus, the matrix job's cells, and a CSV corpus scored zero-shot end to end."""

from __future__ import annotations

import json

import polars as pl
import pytest
from multicorpus import MODEL, build_multi_store

from ray_ser.evaluate.matrix import MATRIX_SCHEMA
from ray_ser.jobs import crosscorpus
from ray_ser.train.reader import READ_LOG_ENV

LINEAR = ["--arch", "mlp", "--mlp-hidden", "0", "--layer", "0", "--epochs", "8", "--patience", "4", "--lr", "0.01",
          "--no-spec-augment", "--batch-size", "8", "--label-set", "four", "--scaler", "per-corpus"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return build_multi_store(tmp_path_factory.mktemp("xc"))


def test_the_final_model_reads_only_its_corpora_and_scores_an_unseen_one(store, local_ray, tmp_path, monkeypatch):
    from ray_ser.cli import main as cli
    from ray_ser.jobs import evaluate as evaluate_job
    from ray_ser.jobs import train as train_job
    from ray_ser.train.checkpoints import final_checkpoint, fold_checkpoints

    log = tmp_path / "reads.txt"
    monkeypatch.setenv(READ_LOG_ENV, str(log))
    run = tmp_path / "run"
    summaries = train_job.main(["--store", store, "--model", MODEL, "--corpus", "alpha,beta", "--final",
                                "--folds", "none", "--out", str(run), *LINEAR])
    monkeypatch.delenv(READ_LOG_ENV)
    read = set(log.read_text().split())
    assert {u.split("/")[0] for u in read} == {"alpha", "beta"}  # never a gamma utterance
    assert not any("_fear_" in u or "_disgust_" in u for u in read)  # outside the label set: never read
    assert [s["fold"] for s in summaries] == [-1] and final_checkpoint(run) and not fold_checkpoints(run)
    info = json.loads((run / "run.json").read_text())
    assert info["label_set"]["out_of_set"] == {"alpha": 18, "beta": 18}
    assert json.loads((run / "final" / "best" / "config.json").read_text())["train"]["label_set"] == \
        ["neutral", "happy", "sad", "angry"]

    out = tmp_path / "zs"
    r = evaluate_job.main(["--store", store, "--run", str(run), "--corpus", "gamma", "--out", str(out), "--n-boot", "50",
                           "--probe-layers", "0,1"])
    pred, m = r["predictions"], r["metrics"]
    assert set(pred["corpus"]) == {"gamma"} and set(pred["model"]) == {"final"} and set(pred["protocol"]) == {"zero-shot"}
    assert pred.height == 72 * 2  # 6 speakers x 4 classes x 3, clean and 5 dB
    uar = m.filter(pl.col("group_by") == "corpus", pl.col("metric") == "uar", pl.col("k") == 1)
    assert set(uar["protocol"]) == {"zero-shot"} and sorted(uar["condition"]) == ["5dB", "clean"]
    assert uar.filter(pl.col("condition") == "clean")["value"][0] > 0.5  # chance is 0.25: the shift is undone
    # the cell against its probe cell: the probe fitted on alpha+beta, scored on the same gamma utterances, paired
    race = m.filter(pl.col("group_by") == "corpus", pl.col("metric") == "uar_minus_probe").sort("condition")
    probe = m.filter(pl.col("group_by") == "corpus", pl.col("metric") == "probe_uar").sort("condition")
    assert race["condition"].to_list() == ["5dB", "clean"] and set(race["protocol"]) == {"zero-shot"}
    assert race["n"].to_list() == uar.sort("condition")["n"].to_list() and race["ci_low"].null_count() == 0
    assert (race["value"] - (uar.sort("condition")["value"] - probe["value"])).abs().max() < 1e-12
    assert probe.filter(pl.col("condition") == "clean")["value"][0] > 0.5
    from ray_ser.evaluate.matrix import cells

    matrix = cells(m, ["alpha", "beta"], ["gamma"])
    assert matrix.filter(pl.col("metric") == "uar_minus_probe").height == 2
    assert "alpha+beta -> gamma" in crosscorpus.race_summary(matrix)

    assert cli(["evaluate", "--store", store, "--run", str(run), "--corpus", "beta", "--out", str(tmp_path / "no")]) == 2
    assert not (tmp_path / "no" / "metrics.parquet").exists()


def test_the_matrix_has_exactly_its_cells_and_resumes(store, local_ray, tmp_path):
    out = tmp_path / "xc"
    args = ["--store", store, "--model", MODEL, "--corpora", "alpha,gamma", "--fold-rule", "2", "--out", str(out),
            "--n-boot", "50", *LINEAR]
    r = crosscorpus.main(args)
    m = pl.read_parquet(out / "matrix.parquet")
    assert m.schema == pl.Schema(MATRIX_SCHEMA)
    cells = set(m.select("train_corpora", "test_corpus", "protocol", "condition").unique().iter_rows())
    assert cells == {(t, c, "out-of-fold" if t == c else "zero-shot", cond)
                     for t in ("alpha", "gamma") for c in ("alpha", "gamma") for cond in ("clean", "5dB")}
    uar = m.filter(pl.col("metric") == "uar")
    assert uar.height == 8 and uar["n"].to_list() == [72] * 8 and (uar["ci_low"] <= uar["value"]).all()
    assert (out / "report.html").read_text().count("<img") == 2
    assert (out / "plots" / "matrix_clean.png").stat().st_size > 0
    assert r["matrix"].height == m.height

    crosscorpus.main(args)  # resumed: every model and evaluation is kept
    for name in ("alpha", "gamma"):
        info = json.loads((out / "runs" / name / "run.json").read_text())
        assert all(s.get("skipped") for s in info["summaries"])
    assert pl.read_parquet(out / "matrix.parquet").equals(m)


def test_every_corpus_alone_and_every_leave_one_out_set_is_a_row():
    assert crosscorpus.plan_runs(["a", "b", "c"]) == {
        "a": (["a"], True), "b": (["b"], True), "c": (["c"], True),
        "b+c": (["b", "c"], False), "a+c": (["a", "c"], False), "a+b": (["a", "b"], False)}
    assert crosscorpus.plan_runs(["a", "b"]) == {"a": (["a"], True), "b": (["b"], True)}


def test_a_csv_corpus_in_the_same_store_is_scored_zero_shot(local_ray, tiny_model_dir, tmp_path):
    from synthetic import write_corpus

    from ray_ser.jobs import evaluate as evaluate_job
    from ray_ser.jobs import extract as extract_job
    from ray_ser.jobs import train as train_job

    uri = str(tmp_path / "store")
    for name, seed, speakers in (("synth", 0, 4), ("other", 1, 3)):
        csv = write_corpus(tmp_path / name, n_speakers=speakers, per_class=3, seed=seed)
        extract_job.main(["--corpus", "csv", "--csv", str(csv), "--csv-name", name, "--model", str(tiny_model_dir),
                          "--model-key", "tiny", "--store", uri, "--conditions", "clean"])
    run = tmp_path / "run"
    train_job.main(["--store", uri, "--model", "tiny", "--corpus", "synth", "--final", "--folds", "none",
                    "--out", str(run), "--arch", "mlp", "--mlp-hidden", "0", "--layer", "1", "--epochs", "4",
                    "--no-spec-augment", "--label-set", "neutral,happy,sad"])
    r = evaluate_job.main(["--store", uri, "--run", str(run), "--corpus", "other", "--out", str(tmp_path / "zs"),
                           "--n-boot", "20"])
    pred = r["predictions"]
    assert pred.height == 3 * 3 * 3 and set(pred["corpus"]) == {"other"}
    assert set(pred["label"]) == {"neutral", "happy", "sad"}  # calm and excited harmonised into the set
    assert set(r["metrics"]["protocol"]) == {"zero-shot"}


def test_the_final_model_can_choose_its_epochs_on_held_out_training_corpora(store, local_ray, tmp_path):
    from ray_ser.jobs import train as train_job

    run = tmp_path / "run"
    train_job.main(["--store", store, "--model", MODEL, "--corpus", "alpha,beta,gamma", "--final", "--folds", "none",
                    "--final-selection", "corpora", "--out", str(run), *LINEAR])
    plan = json.loads((run / "final" / "best" / "config.json").read_text())["plan"]
    held_out = [{u.split("/")[0] for u in part} for part in plan["cv_val"]]
    assert held_out == [{"alpha"}, {"beta"}, {"gamma"}]  # each inner fold validates on one whole training corpus
    splits = set(pl.read_parquet(run / "epochs.parquet")["split"])
    assert {"val_r0", "val_r1", "val_r2", "refit"} <= splits


def test_seeds_train_every_model_per_seed_and_report_each_cells_spread(store, local_ray, tmp_path):
    import numpy as np

    out = tmp_path / "xc"
    args = ["--store", store, "--model", MODEL, "--corpora", "alpha,gamma", "--rows", "loco", "--seeds", "2",
            "--seed", "3", "--eval-conditions", "clean", "--out", str(out), "--n-boot", "30", *LINEAR]
    r = crosscorpus.main(args)
    m = pl.read_parquet(out / "matrix.parquet")
    assert m.schema == pl.Schema(MATRIX_SCHEMA)  # the contract is unchanged: the first seed's cells
    per_seed = {}
    for seed in (3, 4):
        for train, test in (("alpha", "gamma"), ("gamma", "alpha")):
            metrics = pl.read_parquet(out / "runs" / train / f"seed_{seed}" / "zero-shot" / "metrics.parquet")
            for metric in ("uar", "uar_minus_probe"):
                row = metrics.filter(pl.col("group_by") == "corpus", pl.col("group") == test, pl.col("metric") == metric,
                                     pl.col("k").is_null() | (pl.col("k") == 1))
                per_seed[(seed, train, metric)] = (row["value"][0], row["ci_low"][0])
    first = m.filter(pl.col("train_corpora") == "alpha", pl.col("metric") == "uar")
    assert first["value"][0] == per_seed[(3, "alpha", "uar")][0]
    assert not (out / "runs" / "alpha" / "final").exists()  # every seed in its own folder
    seeds = pl.read_parquet(out / "seeds.parquet")
    assert sorted(set(seeds["seed"])) == [3, 4] and seeds.height == 2 * 2 * 2
    spread = r["spread"]
    assert spread.height == 4 and set(spread["seeds"]) == {2}
    for row in spread.iter_rows(named=True):
        values = [per_seed[(s, row["train_corpora"], row["metric"])][0] for s in (3, 4)]
        lows = [per_seed[(s, row["train_corpora"], row["metric"])][1] for s in (3, 4)]
        assert row["mean"] == pytest.approx(np.mean(values)) and row["std"] == pytest.approx(np.std(values, ddof=1))
        assert (row["min"], row["max"]) == (min(values), max(values))
        assert row["speaker_ci_low"] == pytest.approx(np.mean(lows))
    assert "Seed spread" in (out / "report.html").read_text()

    crosscorpus.main(args)  # resumed: every seed's model is kept
    for seed in (3, 4):
        info = json.loads((out / "runs" / "gamma" / f"seed_{seed}" / "run.json").read_text())
        assert all(s.get("skipped") for s in info["summaries"])
    assert pl.read_parquet(out / "seeds.parquet").equals(seeds)
