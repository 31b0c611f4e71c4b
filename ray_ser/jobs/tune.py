"""Ray Tune search over layer, saliency keep-ratio, frame-cluster count, adversarial weight, learning rate,
pooling and target, scored on inner validation speakers (never the outer test speakers).

    python jobs/tune.py --store store --model whisper-base --corpus emodb --out runs/search --num-samples 16

The speakers of --held-out-folds (default: the first three outer folds) are never read by the search; trials
train and validate on folds of the other speakers. ASHA stops bad trials early (on epochs), Optuna's TPE
proposes configurations. Writes DIR/trials.parquet (one row per trial), DIR/best_config.json (give it to
jobs/train.py --config ... --folds <held-out folds>, then jobs/evaluate.py scores those speakers, which neither
trained nor selected the configuration), DIR/search.json, and the Tune experiment DIR/<name> with TensorBoard
event files:
    tensorboard --logdir DIR/<name>
--resume continues a killed search from where it was (trials in flight restart from their last checkpoint).
"""

from __future__ import annotations

import argparse
import logging
import time

from ray_ser.fm.registry import DEFAULT_MODEL


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--corpus", default=None, help="comma-separated corpora (default: all in the store)")
    p.add_argument("--out", required=True)
    p.add_argument("--num-samples", type=int, default=16, help="trials")
    p.add_argument("--max-epochs", type=int, default=12, help="epochs per trial (ASHA's max_t)")
    p.add_argument("--grace-period", type=int, default=2, help="epochs before ASHA may stop a trial")
    p.add_argument("--time-budget", type=float, default=None, help="seconds for the whole search")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--held-out-folds", default=None,
                   help="outer folds whose speakers the search never reads; report the best config on these (default: first 3)")
    p.add_argument("--search-folds", type=int, default=2, help="folds of the remaining speakers each trial trains on")
    p.add_argument("--layers", default=None,
                   help="comma-separated layers to search (default: the --top-layers best by the layer prior)")
    p.add_argument("--top-layers", type=int, default=3,
                   help="layers the prior (lda_inner on the pool's speakers) ranks first to search; 0 = every layer")
    p.add_argument("--arch", choices=("tcgru", "mlp"), default="tcgru")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cpus-per-trial", type=float, default=0.5)
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--name", default="search", help="Tune experiment name under --out")
    p.add_argument("--resume", action="store_true", help="continue the search in DIR/<name>")
    return p


def main(argv: list[str] | None = None):
    import polars as pl

    from ray_ser.runtime import init_ray
    from ray_ser.train.loop import TrainConfig
    from ray_ser.train.tune import SearchOptions, run_search

    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    base = TrainConfig(store=args.store, model=args.model, arch=args.arch, batch_size=args.batch_size, seed=args.seed,
                       corpora=[c for c in (args.corpus or "").split(",") if c], epochs=args.max_epochs)
    opts = SearchOptions(
        base=base, num_samples=args.num_samples, max_epochs=args.max_epochs, grace_period=args.grace_period,
        time_budget_s=args.time_budget, seed=args.seed, cpus_per_trial=args.cpus_per_trial,
        max_concurrent=args.max_concurrent, name=args.name,
        held_out_folds=[int(f) for f in args.held_out_folds.split(",")] if args.held_out_folds else None,
        search_folds=args.search_folds,
        layers=[int(x) for x in args.layers.split(",")] if args.layers else None, top_layers=args.top_layers)
    init_ray()
    t0 = time.perf_counter()
    trials = run_search(opts, args.out, resume=args.resume)
    with pl.Config(tbl_rows=30, tbl_cols=20, tbl_hide_dataframe_shape=True):
        print(trials.head(5))
    print(f"{trials.height} trials in {time.perf_counter() - t0:.1f} s; best config: {args.out}/best_config.json")
    print(f"tensorboard --logdir {args.out}/{args.name}")
    return trials


if __name__ == "__main__":
    main()
