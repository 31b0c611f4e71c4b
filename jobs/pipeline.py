"""The whole pipeline on one corpus: manifest -> all-layer extraction -> saliency + probe -> frame clusters per
fold -> an emotion model per fold (Ray Train) -> out-of-fold evaluation tables and report.

``python jobs/pipeline.py --corpus emodb --model whisper-base --store store`` is the README's main command.
Each stage is its own job (jobs/<stage>.py) and resumes on a re-run.
"""

from __future__ import annotations

import argparse
import logging

import _bootstrap  # noqa: F401  (source checkout on sys.path)

import extract as extract_job

from ray_ser.fm.registry import DEFAULT_MODEL


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--corpus", default="emodb")
    p.add_argument("--data-root", default=None)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--store", default="store")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--k", default="50,100,150", help="cluster counts of the frame k-means")
    p.add_argument("--runs", default="runs", help="folder of the training run and its evaluation")
    p.add_argument("--arch", choices=("mlp", "tcgru"), default="mlp",
                   help="model trained per fold (mlp: minutes on a laptop; tcgru: the papers' model, much slower on CPU)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 2e-3 for mlp, 1e-3 for tcgru: EmoDB is small)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import cluster as cluster_job
    import evaluate as evaluate_job
    import saliency as saliency_job
    import train as train_job

    common = ["--store", args.store, "--model", args.model]
    extract_job.main(["--corpus", args.corpus, *common, *(["--data-root", args.data_root] if args.data_root else []),
                      *(["--limit", str(args.limit)] if args.limit else [])])
    saliency_job.main([*common, "--probe"])
    # frame clusters per outer fold, of the layer the default criterion picks on that fold's training speakers
    cluster_job.main([*common, "--layer", "auto", "--k", args.k])
    # emotion models per outer fold (layer chosen per fold on its training speakers), then the evaluation report
    run_dir = f"{args.runs}/{args.arch}"
    train_job.main([*common, "--corpus", args.corpus, "--out", run_dir, "--arch", args.arch, "--epochs", str(args.epochs),
                    "--batch-size", "16", "--lr", str(args.lr or (2e-3 if args.arch == "mlp" else 1e-3))])
    evaluate_job.main(["--store", args.store, "--run", run_dir, "--out", f"{run_dir}/eval"])


if __name__ == "__main__":
    main()
