"""The whole pipeline on one corpus: manifest -> all-layer extraction -> saliency + probes -> frame clusters per
fold -> an emotion model per fold (Ray Train) -> out-of-fold evaluation tables and report.

``python jobs/pipeline.py --corpus emodb --model whisper-base --store store`` is the README's main command.
Each stage is its own job (jobs/<stage>.py) and resumes on a re-run.
"""

from __future__ import annotations

import argparse
import logging

from ray_ser.fm.registry import DEFAULT_MODEL
from ray_ser.jobs import extract as extract_job

# jobs/train.py options of each model the pipeline trains (EmoDB-sized folds: a few hundred utterances)
RECIPES = {
    # a linear model on the mean frame of each fold's 3 best layers (lda_inner on its training speakers), weight
    # decay, the epoch count early-stopped on the inner validation speakers, then refit on all training speakers
    # (batch 16: ~380 inner-training utterances make only 6 steps an epoch at 64)
    "mlp": ["--mlp-hidden", "0", "--auto-layers", "3", "--weight-decay", "1e-3", "--no-spec-augment", "--refit",
            "--epochs", "60", "--patience", "15", "--lr", "1e-3", "--batch-size", "16"],
    # the papers' TC-GRU (batch 64, lr 5e-4) with mean pooling on the same 3 layers per fold, early-stopped on the
    # inner validation speakers within 40 epochs, then refit: 0.914 over EmoDB's 10 folds against 0.800 for 20
    # epochs on the best layer alone (README); 11-25 min a fold on a 2-core CPU
    "tcgru": ["--pooling", "mean", "--auto-layers", "3", "--refit", "--epochs", "40", "--patience", "10",
              "--lr", "5e-4", "--batch-size", "64"],
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--corpus", default="emodb")
    p.add_argument("--data-root", default=None)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--store", default="store")
    p.add_argument("--limit", type=int, default=None,
                   help="only N utterances, spread over the speakers and categories (smoke runs)")
    p.add_argument("--k", default="50,100,150", help="cluster counts of the frame k-means")
    p.add_argument("--runs", default="runs", help="folder of the training run and its evaluation")
    p.add_argument("--arch", choices=tuple(RECIPES), default="mlp",
                   help="model trained per fold (mlp: a linear model on 3 layers, minutes on a laptop; tcgru: the "
                        "papers' model, much slower on CPU); its options are RECIPES[arch]")
    p.add_argument("--epochs", type=int, default=None, help="most epochs per fold (default: the recipe's)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's)")
    return p


def train_argv(args: argparse.Namespace, run_dir: str) -> list[str]:
    """jobs/train.py's arguments for this run: the arch's recipe, then the pipeline's --epochs/--lr (last wins)."""
    overrides = [*(["--epochs", str(args.epochs)] if args.epochs else []), *(["--lr", str(args.lr)] if args.lr else [])]
    return ["--store", args.store, "--model", args.model, "--corpus", args.corpus, "--out", run_dir,
            "--arch", args.arch, *RECIPES[args.arch], *overrides]


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from ray_ser.jobs import cluster as cluster_job
    from ray_ser.jobs import evaluate as evaluate_job
    from ray_ser.jobs import saliency as saliency_job
    from ray_ser.jobs import train as train_job

    common = ["--store", args.store, "--model", args.model]
    extract_job.main(["--corpus", args.corpus, *common, *(["--data-root", args.data_root] if args.data_root else []),
                      *(["--limit", str(args.limit)] if args.limit else [])])
    # per-layer probe, and the baseline to beat: one probe on each fold's 3 best layers, C chosen on its training speakers
    probes = saliency_job.main([*common, "--probe", "--probe-layers", "auto:3"])
    # frame clusters per outer fold, of the layer the default criterion picks on that fold's training speakers
    cluster_job.main([*common, "--layer", "auto", "--k", args.k])
    # emotion models per outer fold (layers chosen per fold on its training speakers), then the evaluation report
    run_dir = f"{args.runs}/{args.arch}"
    train_job.main(train_argv(args, run_dir))
    evaluation = evaluate_job.main(["--store", args.store, "--run", run_dir, "--out", f"{run_dir}/eval"])
    print(versus_baseline(evaluation["overall"], probes.get("set_probe"), args.arch))


def versus_baseline(overall, set_probe: dict | None, arch: str) -> str:
    """One line: the trained model's pooled clean UAR (from jobs/evaluate.py's per-condition ``overall`` table)
    next to the probe baseline's on the same utterances."""
    import polars as pl

    clean = overall.filter(pl.col("condition") == "clean")
    if clean.height == 0 or not set_probe:
        return "no clean UAR or no probe baseline to compare"
    return (f"clean UAR, pooled over the outer folds: {arch} model {clean['value'][0]:.3f} "
            f"[{clean['ci_low'][0]:.3f}, {clean['ci_high'][0]:.3f}] vs the probe baseline (each fold's 3 best layers, "
            f"C by inner CV) {set_probe['uar']:.3f}")


if __name__ == "__main__":
    main()
