"""Frame clusters (FLEA): k-means over one layer's frames, every stored frame's cluster id into the store.

    python jobs/cluster.py --store store --model whisper-base --layer 4 --k 50,100,150

Fits MiniBatchKMeans per k on a seeded sample of the --condition frames of the training utterances
(--exclude-fold F leaves out the speakers of saliency fold F), stores the centroids in centroids__<model>,
assigns every frame of the layer (all stored conditions unless --conditions) with Ray Data into
frame_clusters__<model>, and prints the purity of each k against the utterance labels.
"""

from __future__ import annotations

import argparse
import logging
import time

import _bootstrap  # noqa: F401  (source checkout on sys.path)

from ray_ser.clusters import assign_frames, fit_kmeans, frame_clusters_table_name, majority_share, purity
from ray_ser.fm.registry import DEFAULT_MODEL


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="LanceDB store URI")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--k", default="50,100,150", help="comma-separated cluster counts")
    p.add_argument("--condition", default="clean", help="condition of the training frames and of the purity")
    p.add_argument("--conditions", default=None, help="comma-separated conditions to assign (default: all stored)")
    p.add_argument("--sample-frames", type=int, default=50000, help="training frames drawn for k-means")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exclude-fold", type=int, default=None,
                   help="train on the utterances outside this fold of saliency_folds__<model> (run saliency first)")
    return p


def main(argv: list[str] | None = None) -> dict:
    from ray_ser.runtime import init_ray

    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    ks = [int(k) for k in args.k.split(",") if k.strip()]
    train_utts = None
    if args.exclude_fold is not None:
        from ray_ser.saliency_store import read_folds

        folds = read_folds(args.store, args.model, args.condition)
        train_utts = folds.filter(folds["fold"] != args.exclude_fold)["utt_id"].to_list()
    init_ray()
    t0 = time.perf_counter()
    centroids = fit_kmeans(args.store, args.model, args.layer, ks, condition=args.condition,
                           sample_frames=args.sample_frames, seed=args.seed, train_utts=train_utts)
    t_fit = time.perf_counter() - t0
    conditions = args.conditions.split(",") if args.conditions else None
    rows = assign_frames(args.store, args.model, args.layer, centroids, conditions=conditions)
    t_assign = time.perf_counter() - t0 - t_fit
    print(f"wrote {rows} rows (utterance x condition x k) to {frame_clusters_table_name(args.model)}, layer {args.layer}")
    scores = {k: purity(args.store, args.model, args.layer, k, condition=args.condition) for k in ks}
    base = majority_share(args.store, args.model, args.layer, ks[0], condition=args.condition)
    print(f"purity against utterance labels ({args.condition} frames; majority-label share {base:.4f}):")
    for k, v in scores.items():
        print(f"purity k={k}: {v:.4f}")
    print(f"time: fit {t_fit:.1f} s, assign {t_assign:.1f} s, total {time.perf_counter() - t0:.1f} s")
    return {"purity": scores, "rows": rows, "fit_seconds": t_fit, "assign_seconds": t_assign}


if __name__ == "__main__":
    main()
