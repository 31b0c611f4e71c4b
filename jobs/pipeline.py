"""The whole pipeline on one corpus: manifest -> all-layer extraction -> saliency + probe -> frame clusters.

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
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import cluster as cluster_job
    import saliency as saliency_job

    from ray_ser.saliency_store import best_layer

    common = ["--store", args.store, "--model", args.model]
    extract_job.main(["--corpus", args.corpus, *common, *(["--data-root", args.data_root] if args.data_root else []),
                      *(["--limit", str(args.limit)] if args.limit else [])])
    saliency_job.main([*common, "--probe"])
    # frame clusters of the layer the saliency ranks first on all utterances (fold -1)
    cluster_job.main([*common, "--layer", str(best_layer(args.store, args.model)), "--k", args.k])


if __name__ == "__main__":
    main()
