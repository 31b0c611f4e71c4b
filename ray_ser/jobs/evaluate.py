"""Evaluate a training run: out-of-fold batch predictions with Ray Data for every evaluation condition in the
store, tidy metric tables (overall, per speaker, gender, condition, corpus, gender x condition and any --by
column) with speaker-level bootstrap intervals, and an HTML report.

    python jobs/evaluate.py --store store --run runs/tcgru --out runs/tcgru/eval [--by naturalness_bin]
    python jobs/evaluate.py --store store --run runs/seed0 --run runs/seed1 --run runs/seed2 --out runs/ens/eval

Several --run folders (the same folds, e.g. one recipe trained with several --seed) are scored as one ensemble:
their class probabilities and A/V/D predictions are averaged per utterance and condition.

    python jobs/evaluate.py --store store --run runs/xc --corpus ased --out runs/xc/zero-shot-ased

--corpus scores the run's final model (jobs/train.py --final) zero-shot on corpora it never trained on, through
the run's label set (utterances outside it are left out and counted); metrics.parquet's protocol says which.

Writes DIR/predictions.parquet, DIR/metrics.parquet, DIR/confusion.parquet and DIR/report.html (+ plots/).
Query them with Polars through ray_ser.evaluate.results (see the README's "Evaluation results").
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ray_ser import console
from ray_ser.config import ExperimentConfig, add_config_args, csv_list, from_args, negated
from ray_ser.jobs.stage import StageResult, open_store
from ray_ser.store import Store
from ray_ser.storage import is_uri, join, run_path, staged


def parser() -> argparse.ArgumentParser:
    p = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--store", help="LanceDB store URI the run was trained on")
    p.add_argument("--run", action="append",
                   help="training run folder (jobs/train.py --out; default: the config's <runs>/<name>); repeat it "
                        "to score the runs' mean prediction")
    p.add_argument("--out", help="evaluation folder (default: <first run>/eval)")
    p.add_argument("--by", action="append", help="extra grouping column (manifest column, extra key, or <key>_bin)")
    p.add_argument("--conditions", type=csv_list, help="comma-separated conditions (default: every stored evaluation condition)")
    p.add_argument("--n-boot", type=int, help="speaker-level bootstrap resamples")
    p.add_argument("--seed", type=int, help="seed of the bootstrap")
    p.add_argument("--batch-size", type=int, help="utterances per prediction batch")
    p.add_argument("--corpus", type=csv_list,
                   help="C[,C...]: score the run's final model zero-shot on these corpora (ones it never trained on)")
    p.add_argument("--probe-layers",
                   help="race the model against the probe baseline on these layers (2,3,4, or auto:K: each fold's K "
                        "best on its training speakers), refitted on the run's own folds (analysis.probe_layers)")
    p.add_argument("--no-race", action="store_true", help="no race against the probe baseline")
    p.add_argument("--seeds", type=int,
                   help="score the N seed runs jobs/train.py --seeds N wrote under --run (default: the config's run "
                        "folder; <run>/seed_<s>, each into its eval/) and report the spread over the seeds "
                        "(<run>/seeds.parquet)")
    return p


BINDS = {"store": "store.uri", "run": "evaluate.runs", "corpus": "evaluate.zero_shot",
         "probe_layers": "analysis.probe_layers", "no_race": negated("evaluate.race"), "seeds": "seeds",
         **{k: f"evaluate.{k}" for k in ("by", "conditions", "n_boot", "seed", "batch_size")}}
"""Each flag's config key (the evaluate section)."""


@dataclass
class Scoring:
    """What one evaluation scores and how: the runs, the options of the evaluate section and of the race."""

    store: Store
    runs: list[str]
    conditions: list[str] | None = None
    by: list[str] = field(default_factory=list)
    batch_size: int = 32
    n_boot: int = 500
    seed: int = 0
    corpus: list[str] = field(default_factory=list)  # zero-shot corpora (empty: out of fold)
    probe_layers: str | None = None  # the race's probe layers (None: no race)
    probe_c: list[float] | None = None
    probe_readout: list[str] = field(default_factory=lambda: ["none"])
    layer_criterion: str | None = None

    @classmethod
    def of(cls, cfg: ExperimentConfig, store: Store, runs: list[str], corpus: list[str] | None = None,
           by: list[str] | None = None, probe_layers: str | None = None) -> "Scoring":
        """The scoring ``cfg`` asks for on ``runs`` (``corpus``: zero-shot; ``probe_layers``: over
        analysis.probe_layers); no race when evaluate.race is off."""
        ev, an = cfg.evaluate, cfg.analysis
        layers = (probe_layers or an.probe_layers) if ev.race else None
        return cls(store=store, runs=list(runs), conditions=ev.conditions or None,
                   by=list(ev.by if by is None else by), batch_size=ev.batch_size, n_boot=ev.n_boot, seed=ev.seed,
                   corpus=list(ev.zero_shot if corpus is None else corpus), probe_layers=layers,
                   probe_c=list(an.probe_c),
                   probe_readout=[r.strip() for r in an.probe_readout.split(",") if r.strip()],
                   layer_criterion=an.layer_criterion if an.layer_criterion not in (None, "none") else None)


@dataclass
class EvaluateResult(StageResult):
    """An evaluation: its tables, the per-condition UAR the console shows, the race and the report; with several
    seeds, the first seed's plus the per-seed rows and their spread."""

    predictions: Any = None
    metrics: Any = None
    overall: Any = None
    dims: Any = None
    race: Any = None
    report: Any = None
    seconds: float = 0.0
    seed: int | None = None
    seeds: Any = None
    spread: Any = None


def main(argv: list[str] | None = None) -> EvaluateResult:
    """The argparse layer: the config from the flags, the store opened once, then :func:`run`."""
    cfg, args = from_args(parser(), argv, BINDS)
    return run(cfg, open_store(cfg), out=args.out)


def run(cfg: ExperimentConfig, store: Store, out: str | None = None) -> EvaluateResult:
    """The evaluate stage of ``cfg`` on ``store``: evaluate.runs (default the config's run folder; with several
    seeds, each seed's folder) into ``out`` (default <first run>/eval)."""
    runs = list(cfg.evaluate.runs)
    if cfg.seeds > 1 and len(runs) <= 1 and not cfg.evaluate.zero_shot:
        return evaluate_seeds(cfg, store, runs[0] if runs else str(cfg.run_dir))
    return score(cfg, Scoring.of(cfg, store, runs or [str(cfg.run_dir)]), out)


def evaluate_seeds(cfg: ExperimentConfig, store: Store, run_dir: str) -> EvaluateResult:
    """Each seed's run folder of ``jobs/train.py --seeds`` under ``run_dir`` (--run, default the config's run
    folder) scored into its own eval/, then the spread of the pooled scores over the seeds
    (``ray_ser.evaluate.seeds``) to the console and <run>/seeds.parquet; returns the first seed's result with
    ``seeds`` (per-seed rows) and ``spread``."""
    from ray_ser.evaluate.results import write_parquet
    from ray_ser.evaluate.seeds import seed_folder, seed_list, seed_spread, seed_table, spread_lines

    results = {}
    for seed in seed_list(cfg.train.seed, cfg.seeds):
        results[seed] = score(cfg, Scoring.of(cfg, store, [str(seed_folder(run_dir, seed))]))
    table = seed_table({s: r.metrics for s, r in results.items()})
    spread = seed_spread(table)
    console.detail(spread_lines(spread))  # ray-ser run prints it above its last line
    if not is_uri(run_dir):
        write_parquet(table, Path(run_dir) / "seeds.parquet", {})
    first = next(iter(results))
    return replace(results[first], seed=first, seeds=table, spread=spread)


def score(cfg: ExperimentConfig, scoring: Scoring, out: str | None = None) -> EvaluateResult:
    """jobs/evaluate.py on ``scoring.runs`` into ``out`` (default <first run>/eval, or zero-shot-<corpora>)."""
    if scoring.corpus and len(scoring.runs) > 1:
        raise SystemExit("jobs/evaluate.py: --corpus scores one run's final model: give one --run")
    default = "eval" if not scoring.corpus else "zero-shot-" + "+".join(scoring.corpus)
    out = out or join(scoring.runs[0], default)
    console.setup(scoring.runs[0])
    what = "evaluate " + ", ".join(run_path(r).name for r in scoring.runs)
    if scoring.corpus:
        what += " zero-shot on " + ", ".join(scoring.corpus)
    with console.stage(what), staged(out) as local:  # a URI --out: written here, then copied up whole
        cfg.save(local)
        result = evaluate(scoring, local, shown=out if is_uri(out) else None)
    if is_uri(out):
        result.report = join(out, run_path(result.report).name)
    return result


def evaluate(scoring: Scoring, out: Path, shown: str | None = None) -> EvaluateResult:
    """Predictions, tables and report of ``scoring.runs`` into the folder ``out``; the per-condition UAR to the
    console (``shown``: where the files will be, when ``out`` is a staging folder for an object store)."""
    import polars as pl

    from ray_ser.evaluate.predict import ensemble_predictions, predict_run, write_predictions
    from ray_ser.evaluate.report import write_report
    from ray_ser.evaluate.tables import write_tables
    from ray_ser.runtime import init_ray

    init_ray()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    store, conditions = scoring.store, scoring.conditions or None
    if scoring.corpus:
        from ray_ser.corpora.label_sets import SetReport
        from ray_ser.evaluate.predict import predict_zero_shot

        kept = SetReport([])
        pred, categories, config = predict_zero_shot(store, scoring.runs[0], scoring.corpus, conditions, scoring.by,
                                                     scoring.batch_size, kept)
        kept.categories = categories
        config["label_set"] = kept.to_dict()
        if config["train"].get("label_set"):
            console.say(kept.line())
        if (config["train"].get("scaler") or "global") == "per-corpus":
            config["zero_shot_scaling"] = "each corpus by its own frame statistics per condition (no labels used)"
            console.say(f"zero-shot input scaling: {config['zero_shot_scaling']}")
    else:
        pred, categories, config = ensemble_predictions(
            [predict_run(store, run, conditions, scoring.by, scoring.batch_size) for run in scoring.runs])
    path = write_predictions(pred, categories, config, out / "predictions.parquet")
    t_pred = time.perf_counter() - t0
    race = race_against_probe(scoring, pred, categories, config)
    paths = write_tables(path, out, categories=categories, by=scoring.by, n_boot=scoring.n_boot, seed=scoring.seed,
                         extra=race)
    from ray_ser.evaluate.layer_weights import layer_info

    layers = layer_info(scoring.runs[0], store) if len(scoring.runs) == 1 else None  # the learned layer mix, if any
    report = write_report(out, pred, paths["metrics"], paths["confusion"], run_config=config, categories=categories,
                          layers=layers)
    m = pl.read_parquet(paths["metrics"])
    overall = (m.filter((pl.col("group_by") == "all") & (pl.col("metric") == "uar") & (pl.col("k") == 1))
               .select("condition", "value", "ci_low", "ci_high", "n", "n_speakers"))
    models = f"{pred['fold'].n_unique()} folds" if pred["model"][0] == "fold" else "the final model"
    console.say(f"{pred.height} predictions ({pred['utt_id'].n_unique()} utterances x {pred['condition'].n_unique()} "
                f"conditions, {models}) in {t_pred:.1f} s")
    if overall.height:
        console.say(uar_table(overall))
    dims = ccc_overall(m)
    if dims.height:
        console.say(ccc_table(dims))
    from ray_ser.evaluate.race import race_summary

    versus = race_summary(m)
    if versus.height:  # on the console when the stage runs alone; ray-ser run ends with the clean verdict instead
        console.detail(race_lines(versus, config))
    where = (lambda p: join(shown, Path(p).name)) if shown else str  # noqa: E731
    console.detail(f"wrote {where(path)}, {where(paths['metrics'])}, {where(paths['confusion'])}; "
                   f"total {time.perf_counter() - t0:.1f} s")
    console.say(f"report: {where(report)}")
    return EvaluateResult(predictions=pred, metrics=m, overall=overall, dims=dims, race=versus, report=report,
                          seconds=time.perf_counter() - t0)


def race_against_probe(scoring: Scoring, pred, categories: list[str], config: dict):
    """The race rows (``ray_ser.evaluate.race``) of these predictions against the probe on ``scoring.probe_layers``;
    None without probe layers or categories, or (logged, the evaluation goes on) when the probe cannot be fitted."""
    layers = scoring.probe_layers
    if not layers or not categories:
        return None
    from ray_ser.evaluate.race import race_rows

    t0 = time.perf_counter()
    try:
        rows = race_rows(scoring.store, pred, categories, config, layers, Cs=scoring.probe_c,
                         readouts=scoring.probe_readout or ("none",), criterion=scoring.layer_criterion,
                         n_boot=scoring.n_boot, seed=scoring.seed)
    except (ValueError, KeyError) as e:  # recorded; the evaluation goes on without the race
        console.say(f"no race against the probe baseline: {e}")
        return None
    console.detail(f"probe baseline on {layers} refitted and raced in {time.perf_counter() - t0:.1f} s")
    return rows


def race_lines(versus, config: dict | None = None) -> str:
    """The race per condition: model minus probe with its paired speaker-bootstrap interval and the verdict."""
    from ray_ser.evaluate.race import race_line

    arch = ((config or {}).get("train") or {}).get("arch") or "model"
    lines = ["model minus probe baseline (UAR, same folds and utterances), paired speaker-bootstrap 95 % interval:"]
    lines += ["  " + race_line(r, f"{arch} model") for r in versus.iter_rows(named=True)]
    return "\n".join(lines)


def ccc_overall(m):
    """condition, metric (ccc_<dimension>), value, ci_low, ci_high, n, n_speakers of the pooled rows (group "all")."""
    import polars as pl

    return (m.filter((pl.col("group_by") == "all") & pl.col("metric").str.starts_with("ccc_"))
            .select("condition", "metric", "value", "ci_low", "ci_high", "n", "n_speakers"))


def ccc_table(dims) -> str:
    """The per-condition CCC of each dimension with its speaker-bootstrap interval, a few aligned lines."""
    lines = ["CCC per condition and dimension, speaker-bootstrap 95 % interval:",
             f"  {'condition':<12} {'dimension':<10} {'CCC':>6}  {'interval':<16} {'utterances':>10} {'speakers':>8}"]
    for r in dims.iter_rows(named=True):
        lo = "–" if r["ci_low"] is None else f"{r['ci_low']:.3f}"
        hi = "–" if r["ci_high"] is None else f"{r['ci_high']:.3f}"
        value = float("nan") if r["value"] is None else r["value"]
        lines.append(f"  {r['condition']:<12} {r['metric'].removeprefix('ccc_'):<10} {value:>6.3f}  "
                     f"[{lo}, {hi}]   {r['n']:>10} {r['n_speakers']:>8}")
    return "\n".join(lines)


def uar_table(overall) -> str:
    """The per-condition UAR with its speaker-bootstrap interval, a few aligned lines."""
    lines = ["UAR (1-best) per condition, speaker-bootstrap 95 % interval:",
             f"  {'condition':<12} {'UAR':>6}  {'interval':<16} {'utterances':>10} {'speakers':>8}"]
    for r in overall.iter_rows(named=True):  # one speaker: no interval
        lo = "–" if r["ci_low"] is None else f"{r['ci_low']:.3f}"
        hi = "–" if r["ci_high"] is None else f"{r['ci_high']:.3f}"
        lines.append(f"  {r['condition']:<12} {r['value']:>6.3f}  [{lo}, {hi}]   {r['n']:>10} {r['n_speakers']:>8}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
