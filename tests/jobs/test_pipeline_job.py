"""jobs/pipeline.py's closing line: the trained model's clean UAR next to the probe baseline's."""

from __future__ import annotations

import polars as pl


def test_versus_baseline_reads_the_pooled_clean_uar():
    from ray_ser.jobs import pipeline as job
    # jobs/evaluate.py's "overall": the 1-best UAR over all speakers per condition
    m = pl.DataFrame({"condition": ["5dB", "clean"], "value": [0.6, 0.914], "ci_low": [0.5, 0.891],
                      "ci_high": [0.7, 0.938], "n": [535, 535], "n_speakers": [10, 10]})
    line = job.versus_baseline(m, {"uar": 0.9252}, "mlp")
    assert line == ("clean UAR, pooled over the outer folds: mlp model 0.914 [0.891, 0.938] vs the probe baseline "
                    "(each fold's 3 best layers, C by inner CV) 0.925")
    assert job.versus_baseline(m, None, "mlp").startswith("no clean UAR")
    assert job.versus_baseline(m.filter(pl.col("condition") == "5dB"), {"uar": 0.9}, "mlp").startswith("no clean UAR")


def test_each_recipe_is_a_valid_training_config():
    """The pipeline's training arguments parse through jobs/train.py's own flags into the configurations the README
    measured, and the pipeline's --epochs/--lr override the recipe's."""
    from ray_ser.jobs import pipeline as job
    from ray_ser.jobs import train

    def config(*pipeline_flags):
        argv = job.train_argv(job.parser().parse_args(list(pipeline_flags)), "o")
        return train.build_config(train.parser().parse_args(argv))

    lin, tc = config("--arch", "mlp"), config("--arch", "tcgru")
    assert (lin.arch, lin.mlp_hidden, lin.auto_layers, lin.batch_size, lin.lr, lin.refit) == ("mlp", 0, 3, 16, 1e-3, True)
    assert (tc.arch, tc.pooling, tc.auto_layers, tc.batch_size, tc.lr) == ("tcgru", "mean", 3, 64, 5e-4)
    assert (tc.epochs, tc.patience, tc.refit, tc.layer, tc.layers) == (40, 10, True, None, [])
    over = config("--arch", "tcgru", "--epochs", "3", "--lr", "0.01")
    assert (over.epochs, over.lr, over.patience, over.batch_size) == (3, 0.01, 10, 64)
