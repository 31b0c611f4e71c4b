"""Frame clusters (FLEA): k-means over one layer's frames per outer fold; out-of-fold cluster ids into the store.

    python jobs/frames.py --config configs/emodb.yaml [--layer 4 --k 50,100,150 --fold all]
    ray-ser frames --config configs/emodb.yaml     (`ray-ser cluster` / jobs/cluster.py: deprecated names)

For each outer fold F (of the fold assignment the stored saliency used, else the same rule computed here):
fits MiniBatchKMeans per k on a seeded sample of the --condition frames of fold F's TRAINING speakers,
stores the centroids in centroids__<model> (keyed by fold_id, fold, layer, k), assigns every frame of fold
F's test speakers (all stored conditions unless --conditions) with Ray Data into frame_clusters__<model>,
and prints the out-of-fold purity of each k against the utterance labels. --fold -1 (all speakers) is
allowed only when asked for: it is for speakers outside the corpus.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

from ray_ser.analysis.clusters import assign_frames, fit_kmeans, purity
from ray_ser import console
from ray_ser.config import Bind, ExperimentConfig, add_config_args, bound_args, csv_list, from_args, int_list, log_folder
from ray_ser.jobs.stage import StageResult, open_store
from ray_ser.store import Store, catalog


def parser() -> argparse.ArgumentParser:
    p = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--store", help="LanceDB store URI")
    p.add_argument("--model", help="model key the embeddings are filed under")
    p.add_argument("--layer",
                   help="layer index, or auto (default): per fold, the layer ray_ser.analysis.layer_selection picks on "
                        "its training speakers")
    p.add_argument("--k", type=int_list, help="comma-separated cluster counts")
    p.add_argument("--fold", help="all | F[,F...] outer folds (-1 = all speakers, never for evaluation)")
    p.add_argument("--folds", help="fold rule when the store has no saliency folds: auto | loso | K")
    p.add_argument("--condition", help="condition of the training frames and of the purity")
    p.add_argument("--conditions", type=csv_list, help="comma-separated conditions to assign (default: all stored)")
    p.add_argument("--assign", choices=("test", "all"),
                   help="label fold F's test utterances (out-of-fold, default) or every utterance")
    p.add_argument("--sample-frames", type=int, help="training frames drawn for k-means")
    p.add_argument("--seed", type=int, help="seed of the frame sample and k-means")
    return p


BINDS = {
    "store": "store.uri", "model": Bind("extract.model", read="extract.key"), "folds": "analysis.folds",
    "condition": "analysis.condition",
    **{k: f"analysis.clusters.{k}" for k in ("layer", "k", "fold", "conditions", "assign", "sample_frames", "seed")},
}
"""Each flag's config key (analysis and analysis.clusters)."""


@dataclass
class FramesResult(StageResult):
    """A frames stage: the out-of-fold purity per k (empty without categories) beside the majority-label share, the
    rows written, the fold assignment and each fold's layer, and the fit and assign times."""

    purity: dict[int, float] = field(default_factory=dict)
    majority: float | None = None
    rows: int = 0
    fit_seconds: float = 0.0
    assign_seconds: float = 0.0
    fold_id: str = ""
    layers: dict[int, int] = field(default_factory=dict)
    fold_plans: list[int] | None = None


def resolve_assignment(store: Store, model: str, condition: str, folds: str, seed: int):
    """The fold assignment of the stored saliency (so masks and centroids share folds), else computed."""
    from ray_ser.analysis import saliency_store as ss

    try:
        return ss.stored_assignment(store, model, condition)
    except KeyError:
        return ss.fold_assignment(store, model, condition, folds, seed)


def main(argv: list[str] | None = None) -> FramesResult:
    """The argparse layer: the config from the flags, the store opened once, then the stage."""
    cfg, args = from_args(parser(), argv, BINDS)
    console.setup(log_folder(cfg, args))
    return stage(args, open_store(cfg), cfg.analysis.seed)


def run(cfg: ExperimentConfig, store: Store, plans: bool = False) -> FramesResult:
    """The frames stage of ``cfg`` on ``store``: k-means per fold and k, cluster ids, out-of-fold purity; with
    ``plans`` (``ray-ser run``) then the run's fold plans, which read the centroids just fitted (a plan whose layer
    and k the stage fitted fits nothing again)."""
    args = bound_args(cfg, BINDS, parser().parse_args([]))
    return stage(args, store, cfg.analysis.seed, cfg if plans else None)


def stage(args: argparse.Namespace, store: Store, fold_seed: int, plans_of: ExperimentConfig | None = None) -> FramesResult:
    """The stage on the console: the clusters, then (``plans_of``) that config's fold plans."""
    with console.stage(f"frames {args.model}: k-means, k = {','.join(map(str, args.k))}"):
        result = cluster(args, store, fold_seed)
        if plans_of is not None:
            from ray_ser.jobs.saliency import run_plans

            result.fold_plans = run_plans(plans_of, store, args.model)
        return result


def cluster(args: argparse.Namespace, store: Store, fold_seed: int) -> FramesResult:
    """k-means per fold and k, cluster ids for the test speakers, and the out-of-fold purity."""
    from ray_ser.runtime import init_ray

    ks = list(args.k)
    assignment = resolve_assignment(store, args.model, args.condition, args.folds, fold_seed)
    folds = assignment.fold_ids if args.fold == "all" else [int(f) for f in args.fold.split(",")]
    init_ray()
    t0 = time.perf_counter()
    conditions = args.conditions or None
    rows, t_fit = 0, 0.0
    if args.layer == "auto":  # every fold's choice from one read of the store
        from ray_ser.analysis.layer_selection import layers_for_folds

        layers, source = layers_for_folds(store, args.model, assignment, folds, condition=args.condition)
        console.detail(f"layers per fold from {source}: {layers}")
    else:
        layers = {fold: int(args.layer) for fold in folds}
    for fold in folds:
        t1 = time.perf_counter()
        centroids = fit_kmeans(store, args.model, layers[fold], ks, assignment, fold, condition=args.condition,
                               sample_frames=args.sample_frames, seed=args.seed)
        t_fit += time.perf_counter() - t1
        rows += assign_frames(store, args.model, layers[fold], centroids, assignment, fold,
                              conditions=conditions, utts=args.assign)
    t_assign = time.perf_counter() - t0 - t_fit
    console.detail(f"wrote {rows} rows (utterance x condition x k) to {catalog.FRAME_CLUSTERS.name(args.model)}, "
          f"{len(folds)} fold(s) of assignment {assignment.id} ({assignment.description}); layer per fold: {layers}")
    scores, base = {}, None
    try:
        for k in ks:
            scores[k], base = purity(store, args.model, layers, k, folds, assignment.id, args.condition)
    except ValueError as e:  # a dimensional-only corpus: no categories to score the clusters against
        console.say(f"out-of-fold purity not scored: {e}")
    else:
        console.say(f"out-of-fold purity against utterance labels ({args.condition} frames; majority-label share "
                    f"{base:.4f}): " + ", ".join(f"purity k={k}: {v:.4f}" for k, v in scores.items()))
    console.detail(f"time: fit {t_fit:.1f} s, assign {t_assign:.1f} s, total {time.perf_counter() - t0:.1f} s")
    return FramesResult(purity=scores, majority=base, rows=rows, fit_seconds=t_fit, assign_seconds=t_assign,
                        fold_id=assignment.id, layers=layers)


if __name__ == "__main__":
    main()
