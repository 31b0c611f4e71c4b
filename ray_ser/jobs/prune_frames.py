"""Write a saliency-pruned copy of one layer's frames: only the dimensions saliency keeps at a keep ratio.

    python jobs/saliency.py --store store --model whisper-base
    python jobs/prune_frames.py --store store --model whisper-base --layer 3 --keep-ratio 0.6

Reads the frames extraction stored for the layer and the per-fold saliency masks jobs/saliency.py stored,
and writes pruned__<model>_L<layer>_keep<ratio>: the union of the folds' kept dimensions, from which
ray_ser.analysis.pruned_frames.iter_pruned_frames(..., fold=f) returns fold f's own dimensions. Re-running replaces it.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from ray_ser.analysis.pruned_frames import write_pruned_frames
from ray_ser.fm.registry import DEFAULT_MODEL


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="LanceDB store URI")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model key the embeddings are filed under")
    p.add_argument("--layer", type=int, required=True, help="the layer whose frames are pruned")
    p.add_argument("--keep-ratio", type=float, default=0.6, help="fraction of dimensions each fold's mask keeps")
    p.add_argument("--conditions", default=None, help="comma-separated conditions to copy (default: all with frames)")
    p.add_argument("--saliency-condition", default="clean", help="the condition whose saliency ranks the dimensions")
    p.add_argument("--score", default="ccs", choices=["ccs", "mis"])
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    t0 = time.time()
    info = write_pruned_frames(args.store, args.model, args.layer, args.keep_ratio,
                               conditions=args.conditions.split(",") if args.conditions else None,
                               saliency_condition=args.saliency_condition, score=args.score)
    print(json.dumps({**info.__dict__, "seconds": round(time.time() - t0, 1)}, indent=2))


if __name__ == "__main__":
    main()
