"""The train stage's fixed cost per fold, measured in one run: the stage's wall time (``ray-ser train`` of a config,
as ``make demo`` runs it, the per-fold test report included, Ray already up) against the sum of its folds' pure
compute (each fold's epochs, forward and backward, and its first read: on the pooled path the one shared read of
the mean frames, on the frame path each fold's first epoch). Ends with one line

    train_overhead fixed_per_fold_s <x> stage_s <y> compute_s <z>

where x = (y - z) / folds (negative when folds running at once hide more than the fixed costs).

    python benchmarks/train_overhead.py [--config configs/emodb.yaml] [--store STORE] [--frame-path]
    python benchmarks/train_overhead.py --synthetic      # a small synthetic store (tiny HuBERT), no corpus needed

The demo config needs its extracted store (``make demo``, or ``ray-ser extract configs/emodb.yaml`` then
``ray-ser saliency configs/emodb.yaml``); ``--frame-path`` trains as before the pooled path (train.pooled false)
for the before/after comparison.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def synthetic_store(folder: Path) -> tuple[str, str]:
    """(store URI, corpus) of the test suite's synthetic corpus extracted with a tiny random HuBERT (key "tiny")."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import save_tiny_hubert
    from synthetic import build_store

    from ray_ser.store.core import as_store

    uri = build_store(folder, save_tiny_hubert(folder / "tiny-hubert"), conditions=("clean",), n_speakers=8,
                      per_class=6)
    corpus = sorted(set(as_store(uri).manifests().column("corpus").to_pylist()))[0]
    return uri, corpus


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "emodb.yaml"))
    p.add_argument("--store", default=None, help="the extracted store (default: the config's store.uri)")
    p.add_argument("--out", default=None, help="run folder (default: a new temporary folder)")
    p.add_argument("--folds", default=None, help="outer folds to train (default: the config's)")
    p.add_argument("--frame-path", action="store_true", help="train.pooled false: a Ray Train run per fold")
    p.add_argument("--synthetic", action="store_true", help="a synthetic store and corpus instead of the config's")
    args = p.parse_args()

    from ray_ser.config import load
    from ray_ser.runtime import init_ray

    init_ray()
    tmp = Path(tempfile.mkdtemp(prefix="train_overhead_"))
    argv = ["--config", args.config, "--out", args.out or str(tmp / "run")]
    if args.synthetic:
        uri, corpus = synthetic_store(tmp / "synthetic")
        argv += ["--store", uri, "--model", "tiny", "--corpus", corpus, "--auto-layers", "2"]
    else:
        uri = args.store or load(args.config).store.uri
        if not (Path(uri) / "manifest__emodb.lance").exists() and "://" not in uri:
            sys.exit(f"no extracted demo store at {uri}: make it with `make demo` (or `ray-ser extract {args.config}` "
                     f"then `ray-ser saliency {args.config}`), pass --store, or run with --synthetic")
        argv += ["--store", uri]
    if args.folds:
        argv += ["--folds", args.folds]
    if args.frame_path:
        argv += ["--set", "train.pooled=false"]
    from ray_ser.jobs import train as train_job

    t0 = time.perf_counter()
    summaries = train_job.main(argv)
    stage = time.perf_counter() - t0
    trained = [s for s in summaries if not s.get("skipped")]
    reads = {round(s["read_s"], 6) for s in trained if "read_s" in s}  # the pooled path's one shared read
    compute = sum(s.get("compute_s", s["seconds"]) for s in trained) + sum(reads)
    for s in trained:
        print(f"fold {s['fold']}: {s['seconds']:.1f} s from start to checkpoint, compute {s.get('compute_s', float('nan')):.2f} s")
    if reads:
        print(f"shared read of the mean frames: {sum(reads):.1f} s; planning {trained[0].get('planned_s', 0):.1f} s")
    n = max(len(trained), 1)
    print(f"train_overhead fixed_per_fold_s {(stage - compute) / n:.2f} stage_s {stage:.1f} compute_s {compute:.1f}")


if __name__ == "__main__":
    main()
