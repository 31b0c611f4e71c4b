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
import time
from dataclasses import dataclass

from ray_ser.analysis.pruned_frames import write_pruned_frames
from ray_ser import console
from ray_ser.config import Bind, ConfigError, ExperimentConfig, add_config_args, bound_args, csv_list, from_args, log_folder
from ray_ser.jobs.stage import StageResult, open_store
from ray_ser.store import Store


def parser() -> argparse.ArgumentParser:
    p = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--store", help="LanceDB store URI")
    p.add_argument("--model", help="model key the embeddings are filed under")
    p.add_argument("--layer", type=int, help="the layer whose frames are pruned (required here or in the config)")
    p.add_argument("--keep-ratio", type=float, help="fraction of dimensions each fold's mask keeps")
    p.add_argument("--conditions", type=csv_list, help="comma-separated conditions to copy (default: all with frames)")
    p.add_argument("--saliency-condition", help="the condition whose saliency ranks the dimensions")
    p.add_argument("--score", choices=["ccs", "mis"])
    return p


BINDS = {
    "store": "store.uri", "model": Bind("extract.model", read="extract.key"),
    **{k: f"analysis.prune.{k}" for k in ("layer", "keep_ratio", "conditions", "saliency_condition", "score")},
}
"""Each flag's config key (analysis.prune)."""


@dataclass
class PruneResult(StageResult):
    """A prune stage: the pruned table, its rows, stored width (the union of the folds' masks), the layer's full
    width, the dimensions each fold keeps, and the time."""

    table: str = ""
    rows: int = 0
    width: int = 0
    dim: int = 0
    kept_per_fold: int = 0
    seconds: float = 0.0


def main(argv: list[str] | None = None) -> PruneResult:
    """The argparse layer: the config from the flags, the store opened once, then :func:`run`."""
    p = parser()
    cfg, args = from_args(p, argv, BINDS)
    if args.layer is None:
        p.error("--layer (analysis.prune.layer) is required")
    console.setup(log_folder(cfg, args))
    return run(cfg, open_store(cfg))


def run(cfg: ExperimentConfig, store: Store) -> PruneResult:
    """The prune stage of ``cfg`` on ``store``: the pruned copy of ``analysis.prune.layer``'s frames."""
    args = bound_args(cfg, BINDS, parser().parse_args([]))
    if args.layer is None:
        raise ConfigError("analysis.prune.layer is required to prune frames")
    t0 = time.time()
    with console.stage(f"prune layer {args.layer} of {args.model} to keep {args.keep_ratio}"):
        info = write_pruned_frames(store, args.model, args.layer, args.keep_ratio,
                                   conditions=args.conditions or None,
                                   saliency_condition=args.saliency_condition, score=args.score)
    result = PruneResult(**info.__dict__, seconds=round(time.time() - t0, 1))
    console.say(json.dumps(info.__dict__ | {"seconds": result.seconds}, indent=2))
    return result


if __name__ == "__main__":
    main()
