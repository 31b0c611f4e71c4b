"""One epoch of the same fold on the frame path and on the pooled path, in one run: the final model's first inner
fold (``--final --folds none``; its training and validation speakers, the validation pass included), its model
built from the same plan and seed on both paths.

(frame)  the fold's Ray Dataset of frames through the trainer's shard cache, timed on epochs after the first (the
         cache warm; ``--frame-stream`` also times epochs with no cache, every epoch read through Ray Data);
(pooled) the mean frames read once (:class:`~ray_ser.train.reader.PooledFrames`), in memory
         (:func:`~ray_ser.train.pooled.fold_sources`), timed likewise after a warm-up epoch.

Ends with one line ``train_epoch frame_s <x> pooled_s <y> ratio <r>`` (medians over ``--epochs`` timed epochs).

    python benchmarks/train_epoch.py --config /tmp/xc47/xc.yaml --store /tmp/xc47/store \\
        --corpus emodb,ravdess,ased --layers 2,3,4
    python benchmarks/train_epoch.py --synthetic      # a small synthetic store (tiny HuBERT), no corpus needed
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def timed_epochs(runner, n: int) -> tuple[float, list[float]]:
    """(the first epoch's seconds, the next ``n`` epochs' seconds) of an :class:`EpochRunner`."""
    t0 = time.perf_counter()
    runner.run_epoch()
    first = time.perf_counter() - t0
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        runner.run_epoch()
        times.append(time.perf_counter() - t0)
    return first, times


def inner_runner(cfg, plan, pool, cache):
    """The first inner fold's runner over ``pool`` (the fold's training utterances), as cross-validation runs it."""
    from ray_ser.train.loop import EpochRunner

    val = frozenset(plan.cv_val[0])
    everyone = frozenset([*plan.inner, *plan.val])
    round_cfg = cfg.model_copy(update={"patience": cfg.epochs + 1})
    return EpochRunner(round_cfg, plan, pool, pool, train_split="train_r0", val_split="val_r0",
                       caches={"train": cache, "val": cache}, subsets={"train": everyone - val, "val": val})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "crosscorpus.yaml"))
    p.add_argument("--store", default=None, help="the extracted store (default: the config's store.uri)")
    p.add_argument("--corpus", default=None, help="corpora to train on (default: the config's)")
    p.add_argument("--layers", default="2,3,4")
    p.add_argument("--epochs", type=int, default=5, help="timed epochs per path, after one untimed")
    p.add_argument("--frame-stream", type=int, default=0, help="also time this many epochs with no shard cache")
    p.add_argument("--synthetic", action="store_true", help="a synthetic store and corpus instead of the config's")
    args = p.parse_args()

    import torch

    from ray_ser.jobs.train import build_config
    from ray_ser.runtime import init_ray
    from ray_ser.store import Store
    from ray_ser.train.checkpoints import FINAL
    from ray_ser.train.driver import final_config
    from ray_ser.train.loop import shard_cache
    from ray_ser.train.plan import fold_datasets, plan_fold, prepare_plans, resolve_assignment
    from ray_ser.train.pooled import fold_sources
    from ray_ser.train.reader import PooledFrames, ShardCache

    init_ray()
    argv = ["--config", args.config, "--final", "--folds", "none", "--layers", args.layers, "--mlp-hidden", "0"]
    if args.synthetic:
        from train_overhead import synthetic_store

        uri, corpus = synthetic_store(Path(tempfile.mkdtemp(prefix="train_epoch_")) / "synthetic")
        argv = ["--config", str(ROOT / "configs" / "emodb.yaml"), "--final", "--folds", "none", "--layers", "1,2",
                "--mlp-hidden", "0", "--store", uri, "--model", "tiny", "--corpus", corpus, "--set", "train.arch=mlp",
                "--set", "train.spec_augment=false"]
    else:
        argv += ["--store", args.store] if args.store else []
        argv += ["--corpus", args.corpus] if args.corpus else []
    experiment, _ = build_config(argv)
    cfg = final_config(experiment.train)
    store = Store(cfg.store)
    assignment = resolve_assignment(cfg, store)
    prepare_plans(cfg, store, assignment, [FINAL])
    plan, labels, centroids = plan_fold(cfg, store, assignment, FINAL)
    torch.set_num_threads(max(1, int(round(cfg.cpus_per_worker))))
    n_train = len(set(plan.inner) | set(plan.val)) - len(plan.cv_val[0])
    print(f"fold: {n_train} training and {len(plan.cv_val[0])} validation utterances (inner fold 0 of "
          f"{len(plan.cv_val)}), layers {plan.read_layers}, conditions {cfg.conditions}, batch {cfg.batch_size}, "
          f"torch threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    pooled = PooledFrames.read(store, cfg.model, plan.read_layers, sorted({*plan.inner, *plan.val}),
                               sorted({"clean", *cfg.conditions}))
    read_s = time.perf_counter() - t0
    pool = fold_sources(cfg, plan, labels, pooled)["pool"]
    first_p, pooled_times = timed_epochs(inner_runner(cfg, plan, pool, shard_cache(cfg)), args.epochs)
    print(f"pooled: mean frames read in {read_s:.1f} s; first epoch {first_p:.3f} s; epochs "
          + " ".join(f"{t:.3f}" for t in pooled_times))

    frames = fold_datasets(cfg, store, plan, labels, centroids)["pool"]
    first_f, frame_times = timed_epochs(inner_runner(cfg, plan, frames, shard_cache(cfg)), args.epochs)
    print(f"frame: first epoch (the read) {first_f:.2f} s; warm epochs " + " ".join(f"{t:.3f}" for t in frame_times))
    if args.frame_stream:
        first, rest = timed_epochs(inner_runner(cfg, plan, frames, ShardCache(0)), args.frame_stream - 1)
        stream = [first, *rest]
        print("frame, no cache: epochs " + " ".join(f"{t:.2f}" for t in stream))
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    frame_s, pooled_s = statistics.median(frame_times), statistics.median(pooled_times)
    print(f"train_epoch frame_s {frame_s:.4f} pooled_s {pooled_s:.4f} ratio {frame_s / pooled_s:.1f}")


if __name__ == "__main__":
    main()
