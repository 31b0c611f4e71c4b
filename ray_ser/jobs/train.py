"""Train emotion models on the store with Ray Train: one run per outer fold, early-stopped on inner validation
speakers, each fold's best checkpoint under --out.

    python jobs/train.py --config configs/emodb.yaml [--out runs/tcgru --arch tcgru --layer 3]

Several corpora train together through a label set (--corpus emodb,ravdess,ased --label-set four), with folds
stratified by corpus; --final adds one model on all their speakers (DIR/final/best), which jobs/evaluate.py
--corpus scores zero-shot on corpora it never saw.

Writes DIR/fold_<f>/best/{model.pt,config.json} (what jobs/evaluate.py --run DIR loads), DIR/epochs.parquet
(fold, epoch, split, metric, value), DIR/tensorboard/fold_<f> and DIR/run.json; prints each fold's best
checkpoint's UAR on that fold's test speakers per stored condition. --seeds N trains N seeds of the config (--seed,
--seed + 1, ...) on the same folds, each into its own DIR/seed_<s>/ (jobs/evaluate.py then reports their spread). Re-running the same command resumes:
finished folds are skipped, an interrupted fold restarts from its last epoch checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

from ray_ser import console
from ray_ser.corpora.folds import ALL_SPEAKERS as FINAL  # the final model's fold (ray_ser.train.checkpoints.FINAL)
from ray_ser.config import Bind, ExperimentConfig, add_config_args, csv_list, from_args, given_flags, int_list
from ray_ser.jobs.stage import StageResult
from ray_ser.store import Store

BINDS = {
    "corpus": Bind("train.corpora", csv_list), "fold_rule": "train.folds", "folds": "train.outer_folds",
    "seeds": "seeds",
    **{k: f"train.{k}" for k in (
        "store", "model", "layer", "layers", "epochs", "seed", "keep_ratio", "n_clusters", "adv_weight", "target",
        "arch", "pooling", "lr", "batch_size", "patience", "num_workers", "cpus_per_worker", "mlp_hidden",
        "weight_decay", "dropout", "refit", "spec_augment", "auto_layers", "inner_folds", "conditions", "label_set",
        "scaler", "balance", "final", "domain", "final_selection", "final_inner_folds", "device", "layer_mix")},
}
"""Each flag's config key (the train section)."""


def parser(matrix: bool = False) -> argparse.ArgumentParser:
    """The job's flags (``matrix``: without those jobs/crosscorpus.py sets itself: which folds, the final model and
    the per-fold report)."""
    p = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter),
                        "experiment config (YAML), or a TrainConfig JSON such as jobs/tune.py's best_config.json; "
                        "the other flags override it")
    p.add_argument("--store", default=None, help="LanceDB store URI")
    p.add_argument("--model", default=None, help="model key of the embeddings")
    p.add_argument("--corpus", default=None, help="comma-separated corpora to train on (default: the config's)")
    p.add_argument("--out", default=None, help="run folder (checkpoints, epochs.parquet, TensorBoard); "
                                                "default: the config's <runs>/<name>")
    if not matrix:
        p.add_argument("--folds", default=None, help="all | none | F[,F...] outer folds to train (none: with --final, "
                                                      "the final model only)")
        p.add_argument("--final", action=argparse.BooleanOptionalAction, default=None,
                       help="also train one model on all speakers of the training corpora (DIR/final/best), for "
                            "zero-shot scoring of other corpora (jobs/evaluate.py --corpus)")
    p.add_argument("--final-selection", choices=("speakers", "corpora"), default=None,
                   help="the final model's epoch count: by inner folds of speakers, or with each training corpus "
                        "held out in turn (selection for unseen corpora)")
    p.add_argument("--final-inner-folds", type=int, default=None, help="inner folds of speakers for the final model (3)")
    p.add_argument("--label-set", default=None,
                   help="four | five | NAME,NAME,...: the categories to train on; every corpus's labels are harmonised "
                        "into them (needed when the corpora's category lists differ)")
    p.add_argument("--scaler", choices=("global", "per-corpus"), default=None,
                   help="standardise the input with one scaler, or each corpus by its own statistics")
    p.add_argument("--balance", choices=("none", "corpus"), default=None,
                   help="corpus: corpus-balanced sampling (each epoch draws the same expected number from every corpus)")
    p.add_argument("--domain", choices=("speaker", "corpus"), default=None,
                   help="what the gradient-reversal head predicts when --adv-weight > 0 (default: corpus over several corpora)")
    p.add_argument("--fold-rule", default=None, help="auto | loso | K, when the store has no saliency folds")
    p.add_argument("--layer", type=int, default=None, help="layer to read (default: chosen per fold on its training speakers)")
    p.add_argument("--layers", type=layer_list, default=None,
                   help="several layers, e.g. 2,3,4, or all (every layer stored with frames): each frame is their "
                        "vectors concatenated (overrides --layer)")
    p.add_argument("--layer-mix", choices=("none", "learned"), default=None,
                   help="learned: a softmax-weighted sum of the layers learned with the head (without --layer/--layers: "
                        "every stored layer); each fold's weights go to DIR/layer_weights.parquet")
    p.add_argument("--auto-layers", type=int, default=None,
                   help="without --layer/--layers: concatenate each fold's K best layers on its training speakers (default 1)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    if not matrix:
        p.add_argument("--seeds", type=int, default=None,
                       help="train N seeds of the config (--seed, --seed + 1, ...), each into DIR/seed_<s>; "
                            "jobs/evaluate.py scores each and reports the spread over the seeds")
    p.add_argument("--keep-ratio", type=float, default=None, help="saliency keep ratio of the layer's dims (1.0 = all)")
    p.add_argument("--n-clusters", type=int, default=None, help="frame-cluster head k (0 = off)")
    p.add_argument("--adv-weight", type=float, default=None, help="gradient-reversal weight of the domain head (0 = off)")
    p.add_argument("--target", choices=("pdf", "onehot"), default=None)
    p.add_argument("--arch", choices=("tcgru", "mlp"), default=None)
    p.add_argument("--pooling", choices=("attention", "mean", "last"), default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW decoupled weight decay")
    p.add_argument("--dropout", type=float, default=None)
    p.add_argument("--mlp-hidden", type=int, default=None, help="MLP hidden width (0 = a linear model)")
    p.add_argument("--spec-augment", action=argparse.BooleanOptionalAction, default=None,
                   help="time and feature masking of the training frames")
    p.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                   help="after early stopping, retrain on all of the fold's training speakers for the selected epochs")
    p.add_argument("--inner-folds", type=int, default=None,
                   help="choose the epoch count on the mean validation curve of K speaker-disjoint inner folds, then "
                        "refit on all training speakers (default 1: early stopping on one inner split)")
    p.add_argument("--conditions", type=csv_list, default=None, help="training copies, e.g. clean,25dB,15dB,5dB (multi-condition)")
    p.add_argument("--num-workers", type=int, default=None, help="Ray Train workers per fold (DDP)")
    p.add_argument("--cpus-per-worker", type=float, default=None)
    p.add_argument("--device", choices=("auto", "gpu", "cpu"), default=None,
                   help="where the workers train: gpu asks Ray for a GPU each even before a GPU node is up (the "
                        "autoscaler adds them), cpu never; auto (default): gpu when a node or an autoscaler node type "
                        "has GPUs")
    if not matrix:
        p.add_argument("--no-test-report", action="store_true", help="skip the per-fold test-speaker UAR printout")
    return p


def layer_list(text: str) -> list[int] | str:
    """``--layers``: comma-separated layers, or ``all`` (every layer stored with frames)."""
    return "all" if text.strip().lower() == "all" else int_list(text)


def build_config(argv: list[str] | None) -> tuple[ExperimentConfig, argparse.Namespace]:
    """The experiment config with this job's flags over it; ``--layer`` over a config that lists layers wins."""
    p = parser()
    given = given_flags(p, argv)
    if "layer" in given and "layers" not in given:
        argv = [*(argv if argv is not None else sys.argv[1:]), "--set", "train.layers=[]"]
    cfg, args = from_args(p, argv, BINDS)
    if args.out is None:
        args.out = str(cfg.run_dir)
    return cfg, args


def _layers(summary: dict) -> str:
    layers = summary.get("layers") or [summary["layer"]]
    return f"layer {layers[0]}" if len(layers) == 1 else "layers " + ",".join(str(l) for l in layers)


def test_report(cfg, store: Store, summary: dict, out: str, pooled_reads: dict | None = None) -> str:
    """The fold's best checkpoint on its test speakers of ``store`` per condition: UAR where it has a categorical head and the
    speakers have labels, CCC per A/V/D dimension where it has a dimensional head and they have those values (the
    evaluation job makes the tables)."""
    import numpy as np
    from sklearn.metrics import balanced_accuracy_score

    from ray_ser.corpora.manifest import DIMENSIONS
    from ray_ser.metrics import ccc
    from ray_ser.evaluate.predict import predict_fold
    from ray_ser.train.checkpoints import fold_checkpoints
    from ray_ser.train.reader import load_labels

    path = fold_checkpoints(out)[summary["fold"]]
    pred = predict_fold(store, path) if pooled_reads is None else pooled_test(cfg, store, path, pooled_reads)
    labels = load_labels(store, pred["utt_id"].unique().to_list(), label_set=cfg.label_set)
    cats = {c: i for i, c in enumerate(labels.categories)}
    uar, dims = [], []
    for cond in sorted(pred["condition"].unique().to_list()):
        sub = pred.filter(pred["condition"] == cond)
        rows = [labels.rows[u] for u in sub["utt_id"].to_list()]
        if "probs" in sub.columns and cats:
            y = [cats.get(r.get("label"), -1) for r in rows]
            ok = [i for i, v in enumerate(y) if v >= 0]
            if ok:
                yp = [int(np.argmax(p)) for p in sub["probs"].to_list()]
                uar.append(f"{cond} {balanced_accuracy_score([y[i] for i in ok], [yp[i] for i in ok]):.3f}")
        scores = []
        for d in DIMENSIONS:
            if f"pred_{d}" not in sub.columns:
                continue
            x = np.array([np.nan if r.get(d) is None else r[d] for r in rows], float)
            yh = sub[f"pred_{d}"].to_numpy().astype(float)
            ok = np.isfinite(x) & np.isfinite(yh)
            if ok.sum() > 1:
                scores.append(f"{d} {ccc(x[ok], yh[ok]):.3f}")
        if scores:
            dims.append(f"{cond} " + " ".join(scores))
    where = f"({path.parent.name}, {_layers(summary)}, best epoch {summary['best_epoch']}{cap_note(summary)})"
    if dims and not uar:
        return f"fold {summary['fold']} test CCC {where}: " + ", ".join(dims)
    line = f"fold {summary['fold']} test UAR {where}: " + ", ".join(uar)
    return line + ("; test CCC: " + ", ".join(dims) if dims else "")


def pooled_test(cfg, store: Store, path, reads: dict):
    """A pooled model's test predictions from every utterance's mean frames of every evaluation condition, read
    once for all folds (``reads``: the job's {layers: PooledFrames})."""
    from ray_ser.evaluate.predict import evaluation_conditions
    from ray_ser.train.checkpoints import load_fold_model
    from ray_ser.train.pooled import pooled_predictions
    from ray_ser.train.reader import PooledFrames

    fm = load_fold_model(path, store=store)
    conditions = evaluation_conditions(store, cfg.model)
    key = tuple(fm.plan.read_layers)
    if key not in reads:
        reads[key] = PooledFrames.read(store, cfg.model, list(key), sorted({*fm.plan.inner, *fm.plan.val,
                                                                                 *fm.plan.test}), conditions)
    return pooled_predictions(fm, store, reads[key], conditions)


def cap_note(summary: dict) -> str:
    """`` of N, hit the epoch cap`` when the fold's selection stopped at its epoch budget while its validation score
    was still improving (its best epoch within the last ``patience`` epochs): more epochs might have helped."""
    return f" of {summary['epochs']}, hit the epoch cap while still improving" if summary.get("hit_cap") else ""


@dataclass
class TrainResult(StageResult):
    """A train stage: each trained fold's summary (the final model's fold is ``FINAL``; with several seeds each
    carries its ``seed``), the run folder and the time the console's closing line gives."""

    folds: list[dict] = field(default_factory=list)
    out: str = ""
    seconds: float = 0.0


def main(argv: list[str] | None = None) -> list[dict]:
    """The argparse layer: the config from the flags, the store opened once, then :func:`run`; returns the folds'
    summaries."""
    experiment, args = build_config(argv)
    return run(experiment, Store(experiment.train.store), out=args.out, report_tests=not args.no_test_report).folds


def run(experiment: ExperimentConfig, store: Store, out: str | None = None, report_tests: bool = True) -> TrainResult:
    """The train stage of ``experiment``: a model per outer fold (and the final model) into ``out`` (default the
    run folder), each seed's into its own folder; one console line per fold. ``store``: the one the training
    config names by URI, opened once by the caller and passed down to planning, training and the test report."""
    from ray_ser.runtime import init_ray
    from ray_ser.train.driver import run as train_folds
    from ray_ser.train.pooled import pooled_model

    out = out or str(experiment.run_dir)
    cfg = experiment.train
    console.setup(out)
    experiment.save(out)
    with console.stage(f"train {cfg.arch} per fold"):
        init_ray()
        t0 = time.perf_counter()

        current = {"out": out}  # the run folder being trained (a seed's, with --seeds)
        reads: dict = {}  # a pooled model's test report: mean frames read once for every fold

        def on_fold(summary: dict) -> None:
            """One console line per fold: its test speakers' UAR (or, without the report, its training summary)."""
            refit = f", refit {summary['refit_epochs']} epochs on all training speakers" if summary.get("refit_epochs") else ""
            name = "final model" if summary["fold"] == FINAL else f"fold {summary['fold']}"
            cap = " (hit the epoch cap while still improving: raise --epochs, patience stops it)" \
                if summary.get("hit_cap") else ""
            line = (f"{name}: {_layers(summary)}, best epoch {summary['best_epoch']} of "
                    f"{summary['epochs']}{cap}, val {summary.get('val_metric', 'score')} "
                    f"{summary['best_val_score']:.4f}{refit}, {summary['seconds']:.1f} s")
            if not report_tests or summary["fold"] == FINAL:
                console.say(line)
            else:
                console.detail(line)
                console.say(test_report(cfg, store, summary, current["out"], reads if pooled_model(cfg) else None))

        if experiment.seeds > 1:
            from ray_ser.evaluate.seeds import seed_folder, seed_list

            summaries = []
            for seed in seed_list(cfg.seed, experiment.seeds):
                current["out"] = seed_folder(out, seed)
                console.say(f"seed {seed} ({experiment.seeds} seeds) into {current['out']}")
                folds = train_folds(cfg.model_copy(update={"seed": seed}), store, None, seed_folder(out, seed), on_fold=on_fold)
                summaries += [{**s, "seed": seed} for s in folds]
        else:
            summaries = train_folds(cfg, store, None, out, on_fold=on_fold)
        seconds = time.perf_counter() - t0
        console.detail(f"trained {len(summaries)} fold(s) into {out} in {seconds:.1f} s")
    return TrainResult(folds=summaries, out=out, seconds=seconds)


if __name__ == "__main__":
    main()
