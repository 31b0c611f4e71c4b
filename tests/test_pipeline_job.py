"""jobs/pipeline.py's closing line: the trained model's clean UAR next to the probe baseline's."""

from __future__ import annotations

import polars as pl

from test_probe import load_job


def test_versus_baseline_reads_the_pooled_clean_uar():
    job = load_job("pipeline")
    # jobs/evaluate.py's "overall": the 1-best UAR over all speakers per condition
    m = pl.DataFrame({"condition": ["5dB", "clean"], "value": [0.6, 0.914], "ci_low": [0.5, 0.891],
                      "ci_high": [0.7, 0.938], "n": [535, 535], "n_speakers": [10, 10]})
    line = job.versus_baseline(m, {"uar": 0.9252}, "mlp")
    assert line == ("clean UAR, pooled over the outer folds: mlp model 0.914 [0.891, 0.938] vs the probe baseline "
                    "(each fold's 3 best layers, C by inner CV) 0.925")
    assert job.versus_baseline(m, None, "mlp").startswith("no clean UAR")
    assert job.versus_baseline(m.filter(pl.col("condition") == "5dB"), {"uar": 0.9}, "mlp").startswith("no clean UAR")


def test_each_recipe_is_a_valid_training_config():
    """RECIPES parse through jobs/train.py's own flags into the configurations the README measured."""
    job, train = load_job("pipeline"), load_job("train")
    common = ["--store", "s", "--model", "whisper-base", "--corpus", "emodb", "--out", "o"]
    cfgs = {arch: train.build_config(train.parser().parse_args([*common, "--arch", arch, *flags]))
            for arch, flags in job.RECIPES.items()}
    lin, tc = cfgs["mlp"], cfgs["tcgru"]
    assert (lin.arch, lin.mlp_hidden, lin.auto_layers, lin.batch_size, lin.lr, lin.refit) == ("mlp", 0, 3, 16, 1e-3, True)
    assert (tc.arch, tc.pooling, tc.auto_layers, tc.batch_size, tc.lr) == ("tcgru", "mean", 3, 64, 5e-4)
    assert (tc.epochs, tc.patience, tc.refit, tc.layer, tc.layers) == (40, 10, True, None, [])
    # the pipeline's --epochs/--lr come after the recipe, and the last flag wins
    over = train.build_config(train.parser().parse_args([*common, *job.RECIPES["tcgru"], "--epochs", "3"]))
    assert over.epochs == 3
