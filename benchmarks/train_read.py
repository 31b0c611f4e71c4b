"""Training-reader speed, measured in one run: one epoch of collated, length-bucketed training batches

(a) from the store: the fold's Ray Dataset (lance-ray read + label join + mask, materialised once, as
    ray_ser.train does), iterated through ray_ser.train.epoch_batches;
(b) from the same rows already in memory as Python objects, through the same bucketing and collate.
Both are warmed by one untimed epoch. Prints utterances per second of each and ratio = (b rate)/(a rate)
(1.0 = reading from the store costs nothing; the target is <= 1.2).

    python benchmarks/train_read.py --store store --model whisper-base --layer 3 [--fold 0 --epochs 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class InMemory:
    """The epoch source of (b): the same rows as the dataset, in memory, with the same iter_batches shape."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def iter_batches(self, batch_size: int, batch_format: str = "numpy", local_shuffle_buffer_size=None,
                     local_shuffle_seed=None):
        order = np.random.default_rng(local_shuffle_seed).permutation(len(self.rows)) if local_shuffle_seed is not None \
            else np.arange(len(self.rows))
        for s in range(0, len(order), batch_size):
            chunk = [self.rows[i] for i in order[s:s + batch_size]]
            out = {}
            for k in chunk[0]:
                values = [r[k] for r in chunk]
                out[k] = np.array(values + [None], dtype=object)[:-1] if isinstance(values[0], np.ndarray) and \
                    values[0].ndim == 2 else np.asarray(values)
            yield out


def one_epoch(source, cfg, epoch: int) -> tuple[int, float]:
    from ray_ser.train import epoch_batches

    t0 = time.perf_counter()
    n = sum(len(b["lengths"]) for b in epoch_batches(source, cfg, epoch, True))
    return n, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="store")
    p.add_argument("--model", default="whisper-base")
    p.add_argument("--layer", type=int, default=3)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--keep-ratio", type=float, default=1.0)
    args = p.parse_args()

    from ray_ser.runtime import init_ray
    from ray_ser.train import TrainConfig, fold_datasets, plan_fold, resolve_assignment

    init_ray()
    cfg = TrainConfig(store=args.store, model=args.model, layer=args.layer, batch_size=args.batch_size,
                      keep_ratio=args.keep_ratio)
    plan, labels, centroids = plan_fold(cfg, resolve_assignment(cfg), args.fold)
    t0 = time.perf_counter()
    ds = fold_datasets(cfg, plan, labels, centroids)["train"]
    t_read = time.perf_counter() - t0
    memory = InMemory(ds.take_all())
    rates = {"store": [], "memory": []}
    for epoch in range(args.epochs + 1):
        for name, source in (("store", ds), ("memory", memory)):
            n, s = one_epoch(source, cfg, epoch)
            if epoch:  # epoch 0 warms both
                rates[name].append(n / s)
    store_rate, memory_rate = float(np.median(rates["store"])), float(np.median(rates["memory"]))
    print(f"fold {args.fold}, layer {args.layer}: {len(memory.rows)} training utterances, first read + materialise "
          f"{t_read:.1f} s")
    print(f"store: {store_rate:.0f} utterances/s; memory: {memory_rate:.0f} utterances/s (median of {args.epochs} epochs)")
    n = len(memory.rows)
    print(f"per epoch: store {1000 * n / store_rate:.0f} ms, memory {1000 * n / memory_rate:.0f} ms "
          f"(the store's extra {1000 * n * (1 / store_rate - 1 / memory_rate):.0f} ms is Ray Data's per-epoch "
          f"iterator set-up and Arrow-to-numpy conversion)")
    print(f"ratio: {memory_rate / store_rate:.3f}")


if __name__ == "__main__":
    main()
