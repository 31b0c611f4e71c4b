"""Ray Tune search over layer, saliency keep-ratio, frame-cluster count, adversarial weight, learning rate,
pooling and target, scored on inner validation speakers (never the outer test speakers).

    python jobs/tune.py --config configs/emodb.yaml [--out runs/search --num-samples 16]

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
import time
from dataclasses import dataclass
from typing import Any

from ray_ser import console
from ray_ser.config import Bind, ExperimentConfig, add_config_args, csv_list, from_args, int_list
from ray_ser.jobs.stage import StageResult, open_store
from ray_ser.store import Store


def parser() -> argparse.ArgumentParser:
    p = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--store", help="LanceDB store URI")
    p.add_argument("--model", help="model key the embeddings are filed under")
    p.add_argument("--corpus", type=csv_list, help="comma-separated corpora (default: the config's)")
    p.add_argument("--out", help="search folder (default: the config's <runs>/<name>/search)")
    p.add_argument("--num-samples", type=int, help="trials")
    p.add_argument("--max-epochs", type=int, help="epochs per trial (ASHA's max_t)")
    p.add_argument("--grace-period", type=int, help="epochs before ASHA may stop a trial")
    p.add_argument("--time-budget", type=float, help="seconds for the whole search")
    p.add_argument("--seed", type=int, help="seed of the search")
    p.add_argument("--held-out-folds", type=int_list,
                   help="outer folds whose speakers the search never reads; report the best config on these (default: first 3)")
    p.add_argument("--search-folds", type=int, help="folds of the remaining speakers each trial trains on")
    p.add_argument("--layers", type=int_list,
                   help="comma-separated layers to search (default: the --top-layers best by the layer prior)")
    p.add_argument("--top-layers", type=int,
                   help="layers the prior (lda_inner on the pool's speakers) ranks first to search; 0 = every layer")
    p.add_argument("--layer-mix", choices=("none", "learned", "search"),
                   help="learned: every trial mixes every stored layer (a learned softmax); search: the mix is a choice "
                        "beside the searched layer; none (default): one searched layer")
    p.add_argument("--arch", choices=("tcgru", "mlp"))
    p.add_argument("--batch-size", type=int)
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument("--max-concurrent", type=int)
    p.add_argument("--name", help="Tune experiment name under --out")
    p.add_argument("--resume", action="store_true", help="continue the search in DIR/<name>")
    return p


BINDS = {
    "store": "store.uri", "model": Bind("extract.model", read="extract.key"), "corpus": Bind("train.corpora"),
    "time_budget": "tune.time_budget_s",
    **{k: f"tune.{k}" for k in ("num_samples", "max_epochs", "grace_period", "seed", "held_out_folds", "search_folds",
                                "layers", "top_layers", "layer_mix", "arch", "batch_size", "cpus_per_trial", "max_concurrent",
                                "name")},
}
"""Each flag's config key (the tune section, and the store, model and corpora it searches)."""


@dataclass
class TuneResult(StageResult):
    """A search: its trials (one row each, best first), its folder and the best configuration's file."""

    trials: Any = None
    out: str = ""
    best_config: str = ""
    seconds: float = 0.0


def main(argv: list[str] | None = None):
    """The argparse layer: the config from the flags, the store opened once, then :func:`run`; returns the trials."""
    cfg, args = from_args(parser(), argv, BINDS)
    return run(cfg, open_store(cfg), out=args.out, resume=args.resume).trials


def run(cfg: ExperimentConfig, store: Store, out: str | None = None, resume: bool = False) -> TuneResult:
    """The search ``cfg.tune`` describes over ``store``'s embeddings of ``cfg.extract``'s model, into ``out`` (default
    the run folder's ``search``); ``resume`` continues a killed one."""
    import polars as pl

    from ray_ser.runtime import init_ray
    from ray_ser.train.config import TrainConfig
    from ray_ser.train.tune import SearchOptions, run_search

    t = cfg.tune
    out = out or str(cfg.run_dir / "search")
    console.setup(out)
    base = TrainConfig(store=store.uri, model=cfg.extract.key, arch=t.arch, batch_size=t.batch_size, seed=t.seed,
                       corpora=list(cfg.train.corpora), epochs=t.max_epochs,
                       layer_mix="learned" if t.layer_mix == "learned" else "none")
    opts = SearchOptions(
        base=base, num_samples=t.num_samples, max_epochs=t.max_epochs, grace_period=t.grace_period,
        time_budget_s=t.time_budget_s, seed=t.seed, cpus_per_trial=t.cpus_per_trial,
        max_concurrent=t.max_concurrent, name=t.name,
        held_out_folds=t.held_out_folds, search_folds=t.search_folds, layers=t.layers,
        top_layers=t.top_layers, layer_mix=t.layer_mix)
    cfg.save(out)
    with console.stage(f"tune {t.num_samples} trials into {out}"):
        init_ray()
        t0 = time.perf_counter()
        trials = run_search(opts, store, out, resume=resume)
        with pl.Config(tbl_rows=30, tbl_cols=20, tbl_hide_dataframe_shape=True):
            console.say(str(trials.head(5)))
        seconds = time.perf_counter() - t0
        console.say(f"{trials.height} trials in {seconds:.1f} s; best config: {out}/best_config.json")
        console.say(f"tensorboard --logdir {out}/{t.name}")
    return TuneResult(trials=trials, out=out, best_config=f"{out}/best_config.json", seconds=seconds)


if __name__ == "__main__":
    main()
