"""Evaluate a training run: out-of-fold batch predictions with Ray Data for every evaluation condition in the
store, tidy metric tables (overall, per speaker, gender, condition, corpus, gender x condition and any --by
column) with speaker-level bootstrap intervals, and an HTML report.

    python jobs/evaluate.py --store store --run runs/tcgru --out runs/tcgru/eval [--by naturalness_bin]
    python jobs/evaluate.py --store store --run runs/seed0 --run runs/seed1 --run runs/seed2 --out runs/ens/eval

Several --run folders (the same folds, e.g. one recipe trained with several --seed) are scored as one ensemble:
their class probabilities and A/V/D predictions are averaged per utterance and condition.

Writes DIR/predictions.parquet, DIR/metrics.parquet, DIR/confusion.parquet and DIR/report.html (+ plots/).
Query them with Polars through ray_ser.evaluate.results (see the README's "Evaluation results").
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="LanceDB store URI the run was trained on")
    p.add_argument("--run", required=True, action="append",
                   help="training run folder (jobs/train.py --out); repeat it to score the runs' mean prediction")
    p.add_argument("--out", required=True, help="evaluation folder")
    p.add_argument("--by", action="append", default=[], help="extra grouping column (manifest column, extra key, or <key>_bin)")
    p.add_argument("--conditions", default=None, help="comma-separated conditions (default: every stored evaluation condition)")
    p.add_argument("--n-boot", type=int, default=500, help="speaker-level bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    return p


def main(argv: list[str] | None = None) -> dict:
    import polars as pl

    from ray_ser.evaluate.predict import (
        ensemble_predictions,
        predict_run,
        write_predictions,
    )
    from ray_ser.evaluate.report import write_report
    from ray_ser.evaluate.tables import write_tables
    from ray_ser.runtime import init_ray

    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    init_ray()
    t0 = time.perf_counter()
    conditions = args.conditions.split(",") if args.conditions else None
    pred, categories, config = ensemble_predictions(
        [predict_run(args.store, run, conditions, args.by, args.batch_size) for run in args.run])
    path = write_predictions(pred, categories, config, out / "predictions.parquet")
    t_pred = time.perf_counter() - t0
    paths = write_tables(path, out, categories=categories, by=args.by, n_boot=args.n_boot, seed=args.seed)
    report = write_report(out, pred, paths["metrics"], paths["confusion"], run_config=config, categories=categories)
    m = pl.read_parquet(paths["metrics"])
    overall = (m.filter((pl.col("group_by") == "all") & (pl.col("metric") == "uar") & (pl.col("k") == 1))
               .select("condition", "value", "ci_low", "ci_high", "n", "n_speakers"))
    print(f"{pred.height} predictions ({pred['utt_id'].n_unique()} utterances x {pred['condition'].n_unique()} "
          f"conditions, {pred['fold'].n_unique()} folds) in {t_pred:.1f} s")
    print("UAR (1-best) per condition, speaker-bootstrap 95 % interval:")
    with pl.Config(tbl_rows=60, tbl_hide_dataframe_shape=True):
        print(overall)
    print(f"wrote {path}, {paths['metrics']}, {paths['confusion']}, {report}; total {time.perf_counter() - t0:.1f} s")
    return {"predictions": pred, "metrics": m, "overall": overall, "report": report, "seconds": time.perf_counter() - t0}


if __name__ == "__main__":
    main()
