"""jobs/pipeline.py's closing line: the trained model's clean UAR next to the probe baseline's."""

from __future__ import annotations

from pathlib import Path

import polars as pl

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_versus_baseline_reads_the_pooled_clean_uar():
    from ray_ser.jobs import pipeline as job
    # jobs/evaluate.py's "overall": the 1-best UAR over all speakers per condition
    m = pl.DataFrame({"condition": ["5dB", "clean"], "value": [0.6, 0.914], "ci_low": [0.5, 0.891],
                      "ci_high": [0.7, 0.938], "n": [535, 535], "n_speakers": [10, 10]})
    line = job.versus_baseline(m, {"uar": 0.9252}, "mlp", "each fold's 3 best layers")
    assert line == ("clean UAR, pooled over the outer folds: mlp model 0.914 [0.891, 0.938] vs the probe baseline "
                    "(each fold's 3 best layers, C by inner CV) 0.925")
    assert job.versus_baseline(m, None, "mlp").startswith("no clean UAR")
    assert job.versus_baseline(m.filter(pl.col("condition") == "5dB"), {"uar": 0.9}, "mlp").startswith("no clean UAR")


def test_versus_baseline_says_beats_ties_or_loses_from_the_paired_race():
    from ray_ser.jobs import pipeline as job

    m = pl.DataFrame({"condition": ["clean"], "value": [0.914], "ci_low": [0.891], "ci_high": [0.938], "n": [535],
                      "n_speakers": [10]})

    def race(lo, hi, d=-0.011):
        return pl.DataFrame({"run": ["r"], "condition": ["clean"], "uar": [0.914], "probe_uar": [0.925],
                             "difference": [d], "ci_low": [lo], "ci_high": [hi], "verdict": ["?"]})

    head = ("clean UAR, pooled over the outer folds: mlp model 0.914 [0.891, 0.938] vs the probe baseline "
            "(each fold's 3 best layers, C by inner CV) 0.925 on the same folds; model minus probe ")
    tie = job.versus_baseline(m, {"uar": 0.9252}, "mlp", "each fold's 3 best layers", race(-0.03, 0.008))
    assert tie == head + "-0.011 [-0.030, +0.008] (paired speaker bootstrap): a tie: 0 is inside the interval"
    lose = job.versus_baseline(m, None, "mlp", "each fold's 3 best layers", race(-0.02, -0.004))
    assert lose.endswith("the model loses to the probe beyond the interval")
    win = job.versus_baseline(m, None, "mlp", "each fold's 3 best layers", race(0.004, 0.02, 0.011))
    assert win.endswith("+0.011 [+0.004, +0.020] (paired speaker bootstrap): the model beats the probe beyond the "
                        "interval")


def test_each_recipe_config_is_the_measured_training_config():
    """configs/emodb.yaml and configs/emodb-tcgru.yaml resolve to the training configurations docs/results.md
    measured (through jobs/train.py's own flag handling), and flags override the file's values."""
    from ray_ser.jobs import train

    def config(name, *flags):
        return train.build_config(["--config", str(CONFIGS / name), *flags])[0].train

    lin, tc = config("emodb.yaml"), config("emodb-tcgru.yaml")
    assert (lin.arch, lin.mlp_hidden, lin.auto_layers, lin.batch_size, lin.lr, lin.refit) == ("mlp", 0, 3, 16, 1e-3, True)
    assert (lin.epochs, lin.patience, lin.weight_decay, lin.spec_augment) == (60, 15, 1e-3, False)
    assert (tc.arch, tc.pooling, tc.auto_layers, tc.batch_size, tc.lr) == ("tcgru", "mean", 3, 64, 5e-4)
    assert (tc.epochs, tc.patience, tc.refit, tc.layer, tc.layers) == (40, 10, True, None, [])
    assert (lin.store, lin.model, lin.corpora) == ("store", "whisper-base", ["emodb"])
    over = config("emodb-tcgru.yaml", "--epochs", "3", "--lr", "0.01")
    assert (over.epochs, over.lr, over.patience, over.batch_size) == (3, 0.01, 10, 64)


def test_pipeline_flags_override_the_config_and_name_the_run_folder():
    from ray_ser.config import from_args
    from ray_ser.jobs import pipeline as job

    cfg, _ = from_args(job.parser(), ["--config", str(CONFIGS / "emodb.yaml"), "--limit", "60", "--epochs", "1",
                                      "--store", "/tmp/s", "--k", "8,16", "--runs", "/tmp/r"], job.BINDS)
    assert (cfg.data.limit, cfg.train.epochs, cfg.store.uri, cfg.train.store) == (60, 1, "/tmp/s", "/tmp/s")
    assert cfg.analysis.clusters.k == [8, 16] and str(cfg.run_dir) == "/tmp/r/emodb"
    assert cfg.analysis.probe and cfg.analysis.probe_layers == "auto:3"


def test_the_pipeline_calls_every_stage_with_the_config_and_one_store(tmp_path, monkeypatch):
    """`ray-ser run` calls each stage's run(cfg, store) in turn, the cross-corpus matrix too (no argv between them),
    and keeps their typed results."""
    from ray_ser.config import load
    from ray_ser.jobs import crosscorpus, evaluate, extract, frames, pipeline, saliency, train
    from ray_ser.store import Store

    results = {"extract": None, "saliency": saliency.SaliencyResult(best_layer=2),
               "frames": frames.FramesResult(rows=5), "train": train.TrainResult(folds=[{"fold": 0}]),
               "evaluate": evaluate.EvaluateResult(overall=pl.DataFrame(schema={"condition": pl.Utf8})),
               "crosscorpus": crosscorpus.CrossCorpusResult(seconds=1.0)}
    calls = []

    def stage(name):
        def run(cfg, store, **kw):
            calls.append((name, cfg, store, kw))
            return results[name]
        return run

    for module in (extract, saliency, frames, train, evaluate, crosscorpus):
        monkeypatch.setattr(module, "run", stage(module.__name__.rsplit(".", 1)[1]))
    cfg = load(None, {"runs": str(tmp_path / "runs"), "name": "x", "store": str(tmp_path / "store"),
                      "data.corpora": ["emodb", "ravdess"], "crosscorpus.enabled": True})
    store = Store(cfg.store.uri)
    got = pipeline.run(cfg, store)
    assert [c[0] for c in calls] == ["extract", "saliency", "frames", "train", "evaluate", "crosscorpus"]
    assert all(c[1] is cfg and c[2] is store for c in calls)
    assert calls[-1][3] == {"out": str(cfg.run_dir / "crosscorpus")}
    assert (got.probes, got.frames, got.train, got.crosscorpus) == (
        results["saliency"], results["frames"], results["train"], results["crosscorpus"])
    assert got.probes["best_layer"] == 2 and got.train.folds == [{"fold": 0}]
    assert (cfg.run_dir / "config.yaml").exists()
