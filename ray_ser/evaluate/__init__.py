"""Evaluation from a predictions table onwards: metrics (arrays in), metric/confusion tables, the HTML report.

``metrics`` holds the numerics, ``tables`` builds metrics.parquet / confusion.parquet, ``report`` draws the
plots and report.html, ``synthetic`` makes predictions with known structure for tests and examples;
``ray_ser.evaluate.results`` reads evaluation folders back as Polars LazyFrames.
"""

from ray_ser.public import lazy_api

__all__, __getattr__, __dir__ = lazy_api(__name__, {
    "config": ["CrossCorpusConfig", "EvaluateConfig"],
    "corpus_probe": ["loco_probe"],
    "layer_weights": ["layer_info"],
    "matrix": ["cells", "row_order", "train_name", "write_matrix", "write_matrix_report"],
    "predict": ["ensemble_predictions", "evaluation_conditions", "predict_fold", "predict_run", "predict_zero_shot",
        "write_predictions"],
    "race": ["DIFFERENCE", "race_line", "race_rows", "race_summary", "verdict"],
    "report": ["write_report"],
    "results": ["write_parquet"],
    "seeds": ["matrix_seed_table", "matrix_spread", "matrix_spread_lines", "seed_folder", "seed_list", "seed_spread",
        "seed_table", "spread_lines"],
    "tables": ["condition_order", "write_tables"],
})
