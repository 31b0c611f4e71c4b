"""Training speed per device, measured in one run: the seconds of one epoch (train + validation) of a fold's model
on each device at hand (CPU, and CUDA when torch has it), through ray_ser.train.loop's EpochRunner, the loop a Ray
Train worker runs, on a synthetic fold held in memory (ray_ser.train.synthetic_fold; EmoDB-shaped by default: 480
training and 55 validation utterances of 100 frames of three concatenated whisper-base layers, 1,536 dims).
Runs without Ray or a store, so it runs on GPU machines where those cannot be installed.

Prints per model and device the median warm epoch, utterances per second, and ratio = CPU epoch / device epoch.

    python benchmarks/train_device.py [--epochs 3 --utts 535 --frames 100 --dim 1536 --threads N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODELS = {
    "linear": dict(arch="mlp", mlp_hidden=0, spec_augment=False),  # on the mean frame
    "mlp": dict(arch="mlp", mlp_hidden=256),
    "tcgru-mean": dict(arch="tcgru", pooling="mean"),
    "tcgru-attention": dict(arch="tcgru", pooling="attention"),
}


def epoch_seconds(cfg, fold, device, epochs: int) -> list[float]:
    """Wall time of each epoch after one warm-up epoch (device synchronised at each end)."""
    import torch

    from ray_ser.train.loop import EpochRunner

    runner = EpochRunner(cfg, fold.plan, fold.train, fold.val, device=device)
    times = []
    for i in range(epochs + 1):
        t0 = time.perf_counter()
        runner.run_epoch()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - t0)
    runner.close()
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per model and device (after one warm-up)")
    p.add_argument("--utts", type=int, default=535, help="utterances in the fold (about 10%% of them validate)")
    p.add_argument("--frames", default="100", help="frames per utterance, or MIN,MAX for ragged lengths")
    p.add_argument("--dim", type=int, default=1536)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated names from: " + ", ".join(MODELS))
    args = p.parse_args()

    import torch

    from ray_ser.train.config import TrainConfig
    from ray_ser.train.synthetic_fold import synthetic_fold

    if args.threads:
        torch.set_num_threads(args.threads)
    lo, hi = (int(v) for v in (args.frames.split(",") * 2)[:2])
    n_val = max(1, round(args.utts * 0.1))
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"fold: {args.utts - n_val} training + {n_val} validation utterances, {lo}-{hi} frames x {args.dim} dims, "
          f"batch {args.batch_size}; CPU threads {torch.get_num_threads()}; GPU: {gpu}")
    for name in args.models.split(","):
        cfg = TrainConfig(**MODELS[name.strip()], batch_size=args.batch_size, epochs=args.epochs + 1,
                          patience=args.epochs + 2)
        fold = synthetic_fold(cfg, n_train=args.utts - n_val, n_val=n_val, dim=args.dim, frames=(lo, hi))
        med = {}
        for device in devices:
            med[device.type] = float(np.median(epoch_seconds(cfg, fold, device, args.epochs)))
            print(f"{name} on {device.type}: {med[device.type]:.3f} s/epoch, "
                  f"{args.utts / med[device.type]:.0f} utterances/s (median of {args.epochs})", flush=True)
        if "cuda" in med:
            print(f"{name}: ratio CPU/CUDA {med['cpu'] / med['cuda']:.1f}", flush=True)


if __name__ == "__main__":
    main()
