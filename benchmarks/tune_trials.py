"""A Tune trial's wall time with and without actor reuse, in one run: the same small pooled search (linear head, mean
pooling, the test suite's synthetic store and tiny HuBERT) run with ``reuse_actors`` off, then on, one after the
other. Ends with one line

    tune_trials per_trial_s fresh <x> reused <y> trials <n>

where per_trial_s is the search's wall time (Tune's fit, Ray already up) over its trials.

    python benchmarks/tune_trials.py [--num-samples 6] [--max-epochs 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def saliency_store(folder: Path) -> str:
    """The synthetic store (clean only) with its saliency and layer ranking, as the tune tests use it."""
    from conftest import save_tiny_hubert
    from synthetic import build_store

    from ray_ser.analysis import saliency_store as ss

    uri = build_store(folder, save_tiny_hubert(folder / "tiny-hubert"), conditions=("clean",))
    info: dict = {}
    df = ss.compute_saliency(uri, "tiny", "clean", folds="auto", mis=False, info=info)
    ss.write_saliency(uri, df, ss.layer_ranking(df), info["assignment"])
    return uri


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-samples", type=int, default=6)
    p.add_argument("--max-epochs", type=int, default=2)
    args = p.parse_args()

    import ray

    from ray_ser.train.config import TrainConfig
    from ray_ser.store import Store
    from ray_ser.train.tune import SearchOptions, run_search

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    tmp = Path(tempfile.mkdtemp(prefix="tune_trials_"))
    uri = saliency_store(tmp / "synthetic")
    base = TrainConfig(store=uri, model="tiny", arch="mlp", mlp_hidden=0, spec_augment=False, batch_size=8, seed=3)
    per_trial = {}
    for reuse in (False, True):
        opts = SearchOptions(base, num_samples=args.num_samples, max_epochs=args.max_epochs,
                             grace_period=args.max_epochs, seed=3, held_out_folds=[0, 1], search_folds=2,
                             max_concurrent=1, reuse_actors=reuse)
        t0 = time.perf_counter()
        trials = run_search(opts, Store(opts.base.store), tmp / f"reuse_{reuse}")
        per_trial[reuse] = (time.perf_counter() - t0) / trials.height
        print(f"reuse_actors {reuse}: {trials.height} trials, {per_trial[reuse]:.1f} s per trial, "
              f"in-trial {trials['seconds'].mean():.1f} s, best val_uar {trials['val_uar'].max():.4f}")
    print(f"tune_trials per_trial_s fresh {per_trial[False]:.1f} reused {per_trial[True]:.1f} trials {args.num_samples}")


if __name__ == "__main__":
    main()
