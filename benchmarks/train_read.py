"""Training-reader speed, measured in one run: one epoch of collated, length-bucketed training batches

(a) from the store: the fold's Ray Dataset (lance-ray read + label join + mask, materialised once, as
    ray_ser.train.loop does), iterated through ray_ser.train.loop.epoch_batches with the trainer's shard cache (the first
    epoch reads through Ray Data, later ones draw from the worker's memory);
(a') the same without the cache (Ray Data iterated every epoch), for comparison;
(b) from the same rows already in memory as Python objects, through the same bucketing and collate;
(c) a plain torch loop: the same utterances (one condition each) padded once into one float16 tensor, each epoch a
    random permutation indexed in batches, cut to the batch's longest utterance and cast to float32 (the batches a
    hand-written trainer feeds its model; forward not included).
All are warmed by one untimed epoch. Prints utterances per second of each, ratio = (b rate)/(a rate)
(1.0 = reading from the store costs nothing once warmed; the target is <= 1.2), the cold first epoch, and last
``vs_torch <x>`` = (a rate)/(c rate) (the goal is >= 0.5).

    python benchmarks/train_read.py --store store --model whisper-base --layer 3 [--layers 2,3,4 --fold 0 --epochs 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def one_epoch(source, cfg, epoch: int, cache=None) -> tuple[int, float]:
    from ray_ser.train.loop import epoch_batches

    t0 = time.perf_counter()
    n = sum(len(b["lengths"]) for b in epoch_batches(source, cfg, epoch, True, cache=cache))
    return n, time.perf_counter() - t0


def padded(memory) -> tuple:
    """(x, lengths): one row per utterance of ``memory`` (its first condition), padded with zeros to the longest."""
    import torch

    first = {}
    for i, u in enumerate(memory.rows["utt_id"]):
        first.setdefault(u, i)
    rows = [memory.rows["x"][i] for i in first.values()]
    lengths = torch.tensor([len(r) for r in rows])
    x = torch.zeros(len(rows), int(lengths.max()), rows[0].shape[1], dtype=torch.float16)
    for i, r in enumerate(rows):
        x[i, :len(r)] = torch.from_numpy(np.asarray(r, np.float16))
    return x, lengths


def torch_epoch(x, lengths, batch_size: int, epoch: int) -> tuple[int, float]:
    """One epoch of the plain loop: shuffled batches of the padded tensor, cut to their longest, as float32."""
    import torch

    t0 = time.perf_counter()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
    n = 0
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        ln = lengths[idx]
        batch = x[idx, :int(ln.max())].float()
        n += len(batch)
    return n, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="store")
    p.add_argument("--model", default="whisper-base")
    p.add_argument("--layer", type=int, default=3)
    p.add_argument("--layers", default=None, help="several layers concatenated per frame, e.g. 2,3,4")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--keep-ratio", type=float, default=1.0)
    args = p.parse_args()

    from ray_ser.runtime import init_ray
    from ray_ser.store import Store
    from ray_ser.train.config import TrainConfig
    from ray_ser.train.plan import fold_datasets, planned_fold, resolve_assignment
    from ray_ser.train.reader import InMemorySource, ShardCache

    init_ray()
    layers = [int(x) for x in args.layers.split(",")] if args.layers else []
    cfg = TrainConfig(store=args.store, model=args.model, layer=args.layer, layers=layers, batch_size=args.batch_size,
                      keep_ratio=args.keep_ratio)
    store = Store(args.store)
    plan, labels, centroids = planned_fold(cfg, store, resolve_assignment(cfg, store), args.fold)
    t0 = time.perf_counter()
    ds = fold_datasets(cfg, store, plan, labels, centroids)["train"]
    t_read = time.perf_counter() - t0
    memory = InMemorySource.from_records(ds.take_all())
    cache = ShardCache(cfg.cache_mb * 2 ** 20)
    x, lengths = padded(memory)
    rates = {"store": [], "store, no cache": [], "memory": [], "plain torch": []}
    cold = 0.0
    for epoch in range(args.epochs + 1):
        for name, source, c in (("store", ds, cache), ("store, no cache", ds, None), ("memory", memory, None)):
            n, s = one_epoch(source, cfg, epoch, c)
            if epoch:  # epoch 0 warms all (and fills the cache)
                rates[name].append(n / s)
            elif c is not None:
                cold = s
        n, s = torch_epoch(x, lengths, cfg.batch_size, epoch)
        if epoch:
            rates["plain torch"].append(n / s)
    med = {k: float(np.median(v)) for k, v in rates.items()}
    n = len(memory)
    print(f"fold {args.fold}, layer(s) {layers or args.layer}: {n} training utterances, first read + materialise "
          f"{t_read:.1f} s, first (cold) epoch through the cache {1000 * cold:.0f} ms")
    for name, rate in med.items():
        print(f"{name}: {rate:.0f} utterances/s, {1000 * n / rate:.0f} ms/epoch (median of {args.epochs} warm epochs)")
    print(f"ratio: {med['memory'] / med['store']:.3f} (without the cache: {med['memory'] / med['store, no cache']:.3f})")
    print(f"plain torch loop: {len(x)} utterances padded to {x.shape[1]} frames x {x.shape[2]} dims")
    print(f"vs_torch {med['store'] / med['plain torch']:.3f}")


if __name__ == "__main__":
    main()
