"""Emotion saliency of every layer and dimension (CCS, MIS) on speaker-independent training folds;
layer ranking and masks in the store; with --probe, a linear probe per layer and their Spearman correlation.

    python jobs/saliency.py --store store --model whisper-base --probe

Writes saliency__<model>, layer_rank__<model> and saliency_folds__<model> (rows of this condition are
replaced on a re-run), then fold_plans__<model>: each fold's plan for the experiment's train config (layers, mask,
centroids, scalers, inner split), which train and tune only read (ray_ser.analysis.fold_plans).  layer_rank holds two criteria: ``ccs_top10`` (the saliency score, for reference) and
the pipeline's layer choice ``--layer-criterion`` (default lda_inner, see the README's "does saliency pick
the layer?"); the cluster, train and tune jobs read the latter back.  Fold f's saliency uses only the utterances outside fold f; fold -1 uses all of them
(a mask for new speakers only).  With --probe the last line is ``spearman: <value>``: the rank correlation
between the layer score averaged over the training folds and the probe's out-of-fold UAR.  --probe-layers 2,3,4
adds the baseline to beat: one probe on those layers side by side, its C chosen per outer fold on that fold's
training speakers; --probe-readout none,l2,ssqrt fuses one such probe per read-out of the mean vectors.

    python jobs/saliency.py --store store --model whisper-base --study --conditions clean,5dB

prints the layer-selection study instead (ray_ser.analysis.layer_selection; computed in memory, writes nothing).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from typing import Any

import polars as pl

from ray_ser.analysis import saliency_store as ss
from ray_ser.analysis.probe import READOUTS
from ray_ser import console
from ray_ser.corpora.folds import ALL_SPEAKERS
from ray_ser.config import (
    Bind,
    ConfigError,
    ExperimentConfig,
    add_config_args,
    bound_args,
    float_list,
    from_args,
    log_folder,
    negated,
)
from ray_ser.jobs.stage import StageResult, open_store
from ray_ser.names import safe_name
from ray_ser.store import Store, catalog
from ray_ser.storage import join

KEEP_RATIOS = (0.8, 0.6, 0.4)


def parser() -> argparse.ArgumentParser:
    p = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--store", help="LanceDB store URI")
    p.add_argument("--model", help="model key the embeddings are filed under")
    p.add_argument("--condition")
    p.add_argument("--folds", help="auto (LOSO up to 12 speakers, else 5) | loso | manifest | K")
    p.add_argument("--no-mis", action="store_true", help="skip mutual-information saliency (CCS only)")
    p.add_argument("--n-bins", type=int, help="quantile bins of the MI estimator")
    p.add_argument("--seed", type=int, help="seed of the K-fold split")
    p.add_argument("--probe", action="store_true", help="fit a linear probe per layer and compare with saliency")
    p.add_argument("--probe-layers",
                   help="with --probe: also probe these layers' mean vectors side by side (e.g. 2,3,4, or auto:3 for "
                        "each fold's 3 best layers on its training speakers), C chosen per outer fold by a CV over "
                        "its training speakers")
    p.add_argument("--probe-c", type=float_list,
                   help="with --probe-layers: the C values (inverse L2 strength) to choose among, comma-separated")
    p.add_argument("--probe-readout",
                   help=f"with --probe-layers: per-utterance read-outs of the mean vectors, comma-separated, among "
                        f"{','.join(READOUTS)}; several fuse one probe each (mean probability), e.g. none,l2,ssqrt")
    p.add_argument("--layer-criterion",
                   help="criterion of the pipeline's layer choice written to layer_rank (default: "
                        "ray_ser.analysis.layer_selection.DEFAULT_CRITERION, lda_inner); none = skip")
    p.add_argument("--plot", default=None, help="PNG path (default: <store>/plots/<model>_layers.png)")
    p.add_argument("--study", action="store_true",
                   help="the layer-selection study instead (ray_ser.analysis.layer_selection): every layer score on each "
                        "outer fold's training speakers vs the probe (Spearman, regret); writes nothing")
    p.add_argument("--conditions", default=None, help="with --study: comma-separated conditions (default: --condition)")
    p.add_argument("--criteria", default=None, help="with --study: comma-separated criteria (default: all the rows support)")
    p.add_argument("--markdown", action="store_true", help="with --study: print the tables as Markdown")
    return p


BINDS = {
    "store": "store.uri", "model": Bind("extract.model", read="extract.key"), "no_mis": negated("analysis.mis"),
    **{k: f"analysis.{k}" for k in ("condition", "folds", "n_bins", "seed", "probe", "probe_layers", "probe_c",
                                    "probe_readout", "layer_criterion")},
}
"""Each flag's config key (the analysis section)."""


@dataclass
class SaliencyResult(StageResult):
    """A saliency stage: the best layer and the ranking, the pipeline's layer choice, the fold plans written and
    (analysis.probe) the probes the closing summary races: the layer-set probe and its ridge twin."""

    best_layer: int | None = None
    ranking: Any = None
    saliency_seconds: float = 0.0
    layer_choice: Any = None
    fold_plans: list[int] | None = None
    probe: Any = None
    spearman: float | None = None
    plot: str | None = None
    probe_seconds: float | None = None
    set_probe_layers: str | None = None
    set_probe: dict | None = None
    set_ridge: dict | None = None


@dataclass
class LayerStudyResult(StageResult):
    """The layer-selection study (--study): each condition's study and the criteria x conditions table."""

    results: dict | None = None
    table: Any = None


def default_plot(store: str, model: str) -> str:
    """``<store>/plots/<model>_layers.png``: beside the store's tables, on disk or on the object store (never in the
    working directory)."""
    return join(str(store), "plots", f"{safe_name(model)}_layers.png")


def study_main(args: argparse.Namespace) -> LayerStudyResult:
    """--study: per condition the per-layer table of every criterion, then the criteria x conditions table."""
    from ray_ser.analysis import layer_selection as lsel

    fmt = dict(tbl_rows=200, tbl_cols=-1, tbl_width_chars=400, float_precision=3, tbl_hide_dataframe_shape=True,
               **({"tbl_formatting": "MARKDOWN"} if args.markdown else {}))
    conditions = [c for c in (args.conditions or args.condition).split(",") if c]
    criteria = [c for c in args.criteria.split(",") if c] if args.criteria else None
    results = {}
    for cond in conditions:
        t0 = time.perf_counter()
        r = lsel.study(args.store, args.model, cond, criteria, folds=args.folds, seed=args.seed,
                       progress=lambda m: logging.info("study %s: %s", cond, m))
        print(f"layer study of {args.model} / {cond}: {r.scores['fold'].n_unique()} outer folds ({r.description}); "
              f"scores on each fold's training speakers, averaged over folds; probe = out-of-fold UAR; "
              f"regret_folds = mean over folds of best probe UAR - probe UAR of that fold's pick "
              f"({time.perf_counter() - t0:.0f} s)")
        with pl.Config(**fmt):
            print(lsel.study_table(r))
        results[cond] = r
    table = lsel.comparison_table(results)
    print(f"criteria by condition (rho: Spearman vs probe UAR; regret: mean per-fold regret; * = default "
          f"{lsel.DEFAULT_CRITERION}):")
    with pl.Config(**fmt):
        print(table)
    return LayerStudyResult(results=results, table=table)


def write_choice(args: argparse.Namespace, store: Store, assignment) -> pl.DataFrame | None:
    """The pipeline's layer ranking (``--layer-criterion``) per outer fold into layer_rank__<model>; None when
    skipped or when the rows have no categorical label to score (dimensional-only corpora)."""
    from ray_ser.analysis import layer_selection as lsel

    criterion = args.layer_criterion or lsel.DEFAULT_CRITERION
    if criterion == "none":
        return None
    try:
        return lsel.write_layer_rank(store, args.model, args.condition, assignment, criterion,
                                     folds=args.folds, seed=args.seed)
    except ValueError as e:
        logging.warning("layer choice (%s) not written: %s", criterion, e)
        return None


def probe_layer_set(args: argparse.Namespace, store: Store,
                    assignment) -> tuple[list[int] | dict[int, list[int]], str, str]:
    """--probe-layers as the probe takes it, its words, and where the layers came from: a list ("2,3,4"), or with
    "auto:K" each fold's K best layers by the pipeline's criterion on its training speakers (what jobs/train.py
    --auto-layers K reads)."""
    spec = args.probe_layers.strip()
    if spec.startswith("auto:"):
        from ray_ser.analysis import layer_selection as lsel

        k = int(spec.split(":", 1)[1])
        criterion = args.layer_criterion if args.layer_criterion not in (None, "none") else lsel.DEFAULT_CRITERION
        ranked, source = lsel.ranked_layers(store, args.model, assignment, assignment.fold_ids, k,
                                            args.condition, criterion, args.seed)
        return {f: sorted(v) for f, v in ranked.items()}, f"each fold's {k} best layers", source
    layers = [int(v) for v in spec.split(",") if v.strip()]
    return layers, "layers " + "+".join(map(str, layers)), ""


def check(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """The probe read-outs, and what is wrong with the options (None: nothing)."""
    readouts = [r.strip() for r in args.probe_readout.split(",") if r.strip()]
    if args.probe_layers and not args.probe:
        return readouts, "--probe-layers needs --probe"
    if not readouts or any(r not in READOUTS for r in readouts):
        return readouts, (f"--probe-readout: expected a comma-separated list among {','.join(READOUTS)}, "
                          f"got {args.probe_readout!r}")
    return readouts, None


def main(argv: list[str] | None = None) -> SaliencyResult | LayerStudyResult:
    """The argparse layer: the config from the flags, the store opened once, then :func:`run` (or the layer study)."""
    p = parser()
    cfg, args = from_args(p, argv, BINDS)
    readouts, wrong = check(args)
    if wrong:
        p.error(wrong)
    console.setup(log_folder(cfg, args))
    tables()
    if args.study:
        return study_main(args)
    return stage(cfg, args, open_store(cfg), readouts)


def run(cfg: ExperimentConfig, store: Store, plot: str | None = None, plans: bool = True) -> SaliencyResult:
    """The saliency stage of ``cfg`` on ``store``: saliency, the layer choice and (analysis.probe) the probes, then
    (``plans``) the run's fold plans; ``ray-ser run`` writes them after the frames stage instead (its centroids)."""
    args = bound_args(cfg, BINDS, parser().parse_args([]))
    args.plot = plot
    readouts, wrong = check(args)
    if wrong:
        raise ConfigError(wrong)
    tables()
    return stage(cfg, args, store, readouts, plans)


def tables() -> None:
    """How the stage's Polars tables print."""
    pl.Config.set_tbl_rows(200)
    pl.Config.set_tbl_hide_dataframe_shape(True)


def stage(cfg: ExperimentConfig, args: argparse.Namespace, store: Store, readouts: list[str],
          plans: bool = True) -> SaliencyResult:
    """Saliency, probes, then the fold plans of the run's train config (when it trains on this store's model)."""
    with console.stage(f"saliency {args.model} / {args.condition}" + (" + probes" if args.probe else "")):
        result = saliency_main(args, store, readouts)
        if plans:
            result.fold_plans = run_plans(cfg, store, args.model)
        return result


def run_plans(cfg: ExperimentConfig, store: Store, model: str) -> list[int] | None:
    """The fold plans of ``cfg``'s train config when it trains on ``store``'s ``model`` (None when it does not)."""
    if cfg.train.model == model and cfg.train.store == store.uri:
        return write_run_plans(cfg.train, store)
    return None


def write_run_plans(train, store: Store) -> list[int]:
    """The fold plans of the run's train config (its outer folds and, with ``final``, the final model's), written
    to ``store`` (the one train.store names) after the saliency and layer ranking they read (replacing plans made
    from an earlier run's), so training only reads them; returns the folds built. A run whose rows cannot be planned
    is told on the console: training refuses it."""
    from ray_ser.analysis.fold_plans import write_fold_plans
    from ray_ser.train.checkpoints import FINAL
    from ray_ser.train.driver import final_config
    from ray_ser.train.plan import resolve_assignment, select_folds

    try:
        assignment = resolve_assignment(train, store)
        spec = train.outer_folds
        folds = [] if spec.strip().lower() == "none" else select_folds(spec, assignment)
        built = write_fold_plans(train.plan_spec(), assignment, folds, rebuild=True,  # made from what it just wrote
                                 store=store)
        if train.final:
            built += write_fold_plans(final_config(train).plan_spec(), assignment, [FINAL], rebuild=True, store=store)
    except ValueError as exc:
        console.say(f"fold plans: none written ({exc})")
        return []
    console.say(f"fold plans: {len(built)} built (analysis) in {catalog.FOLD_PLANS.name(train.model)}, fold "
                f"assignment {assignment.id}")
    return built


def saliency_main(args: argparse.Namespace, store: Store, readouts: list[str]) -> SaliencyResult:
    """Saliency, the layer choice and (with --probe) the probes; the tables go to the log (and the console when
    the stage runs on its own), the results to the console."""
    t0 = time.perf_counter()
    info: dict = {}
    df = ss.compute_saliency(store, args.model, args.condition, folds=args.folds, mis=not args.no_mis,
                             n_bins=args.n_bins, seed=args.seed, info=info)
    ranking = ss.layer_ranking(df)
    ss.write_saliency(store, df, ranking, info["assignment"])
    t_sal = time.perf_counter() - t0
    chosen = write_choice(args, store, info["assignment"])
    console.say(f"saliency of {args.model} / {args.condition}: {info['n']} utterances, {info['n_speakers']} speakers, "
          f"folds {info['folds']}, targets {','.join(info['targets'])}, MIS {'off' if args.no_mis else 'on'}")
    all_rank = ranking.filter(pl.col("fold") == ALL_SPEAKERS).select(
        "layer", pl.col("layer_score").alias("score_all"), pl.col("layer_rank").alias("rank_all"))
    folds_rank = ss.mean_over_folds(ranking).select(
        "layer", pl.col("layer_score").alias("score_folds"), pl.col("layer_rank").alias("rank_folds"))
    table = all_rank.join(folds_rank, on="layer").sort("rank_folds")
    console.detail("layer ranking (score = mean CCS of the layer's top 10% dims; rank 0 = best;"
                   " _all: fold -1 on all utterances, _folds: mean over training folds):")
    console.detail(str(table))
    best = int(table.sort("rank_all")["layer"][0])
    sizes = {r: int(ss.saliency_mask(store, args.model, best, r, fold=ALL_SPEAKERS, condition=args.condition).sum())
             for r in KEEP_RATIOS}
    n_dims = df.filter((pl.col("fold") == ALL_SPEAKERS) & (pl.col("layer") == best)).height
    console.detail(f"best layer (fold -1): {best}; masks of {n_dims} dims: "
          + ", ".join(f"keep {r} -> {n}" for r, n in sizes.items()))
    console.detail(f"wrote {catalog.SALIENCY.name(args.model)} ({df.height} rows), {catalog.LAYER_RANK.name(args.model)} "
          f"({ranking.height} rows), {catalog.FOLDS.name(args.model)} (fold assignment {info['assignment'].id})")
    if chosen is not None:
        per_fold = chosen.filter((pl.col("layer_rank") == 0) & (pl.col("fold") >= 0))
        console.say(f"pipeline layer choice ({chosen['criterion'][0]}, each fold's training speakers; used by "
              f"jobs/frames.py --layer auto, jobs/train.py without --layer and jobs/tune.py's prior): "
              + ", ".join(f"fold {f}: {k}" for f, k in zip(per_fold["fold"], per_fold["layer"]))
              + f"; all speakers: {int(chosen.filter((pl.col('layer_rank') == 0) & (pl.col('fold') == ALL_SPEAKERS))['layer'][0])}")
    result = SaliencyResult(best_layer=best, ranking=table, saliency_seconds=t_sal, layer_choice=chosen)
    if not args.probe:
        console.detail(f"time: saliency {t_sal:.1f} s")
        return result

    from ray_ser.analysis.probe import (
        layer_probe,
        layer_set_probe,
        plot_layers,
        spearman,
    )

    t1 = time.perf_counter()
    if not has_labels(store, args.model, args.condition, args.folds, args.seed):
        return dimensional_probes(args, store, info, result, t0, t1)
    probe = layer_probe(store, args.model, args.condition, folds=args.folds, seed=args.seed)
    t_probe = time.perf_counter() - t1
    folds_scores = ss.mean_over_folds(ranking)
    rho = spearman(folds_scores, probe)
    rho_all = spearman(ranking.filter(pl.col("fold") == ALL_SPEAKERS), probe)
    console.detail("probe (StandardScaler + LogisticRegression per layer; UAR of pooled out-of-fold predictions):")
    console.detail(str(probe.join(folds_scores.select("layer", "layer_score", "layer_rank"), on="layer").sort("layer")
          .select("layer", "uar", "mean_fold_uar", "layer_score", "layer_rank")))
    best_probe = int(probe.sort("uar", descending=True)["layer"][0])
    console.say(f"best layer by probe: {best_probe}; by saliency (training folds): "
          f"{int(folds_scores.sort('layer_rank')['layer'][0])}; (all utterances): {best}")
    path = plot_layers(folds_scores, probe, args.plot or default_plot(store.uri, args.model),
                       title=f"{args.model} / {args.condition}", rho=rho)
    console.detail(f"plot: {path}")
    console.detail(f"spearman (fold -1 layer score vs probe UAR): {rho_all:.4f}")
    if args.probe_layers:
        t2 = time.perf_counter()
        cs = list(args.probe_c)
        layers, result.set_probe_layers, source = probe_layer_set(args, store, info["assignment"])
        what = f"{result.set_probe_layers} ({source})" if source else result.set_probe_layers
        result.set_probe = sp = layer_set_probe(store, args.model, layers, args.condition,
                                                   folds=args.folds, seed=args.seed, Cs=cs, readouts=readouts)
        t_probe += time.perf_counter() - t2
        fused = f"read-outs {'+'.join(readouts)} fused, " if len(readouts) > 1 else ""
        console.say(f"probe on {what} ({fused}C per outer fold from {cs} by a CV over its training speakers): UAR "
              f"{sp['uar']:.4f}, mean over folds {sp['mean_fold_uar']:.4f}; per fold "
              + " ".join(f"{u:.3f}" for u in sp["fold_uar"]) + "; C per fold "
              + " ".join("/".join(f"{c[r]:g}" for r in readouts) for c in sp["fold_c"])
              + ("; layers per fold " + " ".join("+".join(map(str, v)) for v in sp["fold_layers"])
                 if isinstance(layers, dict) else ""))
        t3 = time.perf_counter()
        ridge_twin(args, store, layers, result)
        t_probe += time.perf_counter() - t3
    console.detail(f"time: saliency {t_sal:.1f} s, probe {t_probe:.1f} s, total {time.perf_counter() - t0:.1f} s")
    console.say(f"spearman: {rho:.4f}")
    result.probe, result.spearman, result.plot, result.probe_seconds = probe, rho, str(path), t_probe
    return result


def has_labels(store: Store, model: str, condition: str, folds, seed: int) -> bool:
    """Whether any of the saliency's utterances has a categorical label (the classification probes need one)."""
    rows = ss.usable_rows(store, model, condition, folds, seed)[0]
    return bool(rows["label"].is_not_null().any())


def ridge_twin(args: argparse.Namespace, store: Store, layers, result: SaliencyResult) -> dict | None:
    """The probe's regression twin on the same layers (ridge per A/V/D dimension, alpha by a CV over each outer
    fold's training speakers) when the rows have dimensions; its line to the console, its result in ``set_ridge``."""
    from ray_ser.analysis.probe import layer_set_ridge

    ridge = layer_set_ridge(store, args.model, layers, args.condition, folds=args.folds, seed=args.seed)
    if not ridge["dims"]:
        return None
    result.set_ridge = ridge
    for d, r in ridge["dims"].items():
        console.say(f"ridge probe on {result.get('set_probe_layers', 'the layers')} ({d}; alpha per outer fold by a CV "
                    f"over its training speakers): CCC {r['ccc']:.4f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}], Pearson r "
                    f"{r['pearson']:.4f}, MAE {r['mae']:.4f}; per fold " + " ".join(f"{v:.3f}" for v in r["fold_ccc"])
                    + "; alpha per fold " + " ".join(f"{a:g}" for a in r["fold_alpha"]))
    return ridge


def dimensional_probes(args: argparse.Namespace, store: Store, info: dict, result: SaliencyResult, t0: float,
                       t1: float) -> SaliencyResult:
    """--probe on rows without a categorical label (a dimensional-only corpus): no per-layer UAR probe, and with
    --probe-layers the ridge probe alone (``auto:K``: each fold's K best layers by ridge_inner, the regression twin of
    the layer criterion)."""
    console.say("no categorical labels: the per-layer UAR probe is skipped" +
                ("" if args.probe_layers else "; --probe-layers L,L,... or auto:K adds the ridge probe on A/V/D"))
    if args.probe_layers:
        layers, result.set_probe_layers, _ = probe_layer_set(args, store, info["assignment"])
        ridge_twin(args, store, layers, result)
    console.detail(f"time: probes {time.perf_counter() - t1:.1f} s, total {time.perf_counter() - t0:.1f} s")
    return result


if __name__ == "__main__":
    main()
