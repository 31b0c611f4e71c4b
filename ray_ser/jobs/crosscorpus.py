"""The cross-corpus matrix (leave-one-corpus-out): for every corpus c, one model trained on all the others and one
on c alone, each scored zero-shot on every corpus it did not train on; the in-corpus cells are c's out-of-fold
scores. Every model trains through one label set, with the training options of jobs/train.py.

    python jobs/crosscorpus.py --store store --corpora emodb,ravdess,ased --label-set four --out runs/xc \\
        --scaler per-corpus --arch mlp --mlp-hidden 0 --auto-layers 3

Writes DIR/matrix.parquet (train_corpora, test_corpus, protocol, condition, metric, value, ci_low, ci_high, n,
n_speakers), DIR/report.html (a heat map per condition, a table per test corpus) and, per training set,
DIR/runs/<corpora>/ (checkpoints, eval/ out of fold, zero-shot/). Re-running the same command resumes: finished
models and evaluations are kept. --seeds N trains N seeds of every model (--seed, --seed + 1, ...) into
DIR/runs/<corpora>/seed_<s>/: matrix.parquet holds the first seed's cells, DIR/seeds.parquet every seed's UAR and
race cells, and the console and report each cell's spread over the seeds beside its speaker interval.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_ser import console
from ray_ser.config import Bind, ExperimentConfig, csv_list, from_args
from ray_ser.jobs import train as train_job
from ray_ser.jobs.stage import StageResult
from ray_ser.storage import is_uri, join, run_path, staged
from ray_ser.store import Store

BINDS = {**{k: v for k, v in train_job.BINDS.items() if k not in ("folds", "final")},
         "corpus": Bind("train.corpora", csv_list), "rows": "crosscorpus.rows",
         **{k: f"evaluate.{k}" for k in ("n_boot", "batch_size")}, "eval_conditions": "evaluate.conditions", "seeds": "seeds"}
"""Each flag's config key: jobs/train.py's, plus the evaluation's."""


def parser() -> argparse.ArgumentParser:
    p = train_job.parser(matrix=True)
    p.description = __doc__
    p.add_argument("--corpora", dest="corpus", default=None, help="comma-separated corpora of the matrix (at least 2; "
                                                                   "--corpus is the same flag)")
    p.add_argument("--eval-conditions", type=csv_list, default=None,
                   help="conditions to score (default: every stored evaluation condition)")
    p.add_argument("--rows", choices=("all", "loco"), default=None,
                   help="all (default): every corpus alone and every leave-one-corpus-out set; loco: the "
                        "leave-one-corpus-out models only")
    p.add_argument("--seeds", type=int, default=None,
                   help="train N seeds of every model (--seed, --seed + 1, ...), each into runs/<corpora>/seed_<s>; the "
                        "spread over the seeds per cell goes to seeds.parquet, the console and the report")
    p.add_argument("--n-boot", type=int, default=None, help="speaker-level bootstrap resamples")
    p.add_argument("--eval-batch-size", dest="batch_size", type=int, default=None, help="utterances per prediction batch")
    return p


PROBE_LAYERS = "auto:3"
"""The probe each matrix cell races when analysis.probe_layers names none: the 3 best layers on the cell's training
speakers (benchmarks/crosscorpus_probe.py's bar)."""


def plan_runs(corpora: list[str], rows: str = "all") -> dict[str, tuple[list[str], bool]]:
    """{training set name: (its corpora, whether it trains outer folds too)}: every corpus alone (outer folds for
    its in-corpus cell, and a final model) and every leave-one-corpus-out set (a final model only); with two
    corpora the two coincide. ``rows="loco"``: the leave-one-corpus-out sets only."""
    from ray_ser.evaluate.matrix import train_name

    runs = {train_name([c]): ([c], True) for c in corpora} if rows == "all" else {}
    for c in corpora:
        others = [x for x in corpora if x != c]
        runs.setdefault(train_name(others), (others, False))
    return runs


def _fresh(eval_dir: Path, run_dir: Path) -> bool:
    """An evaluation folder newer than every checkpoint of its run (a resumed matrix keeps it)."""
    metrics = eval_dir / "metrics.parquet"
    if not metrics.exists():
        return False
    try:
        stamps = [p.stat().st_mtime for p in run_dir.glob("*/best/config.json")]
        return bool(stamps) and metrics.stat().st_mtime > max(stamps)
    except (OSError, AttributeError, TypeError):  # an object store that reports no times: score again
        return False


@dataclass
class CrossCorpusResult(StageResult):
    """A cross-corpus matrix: its cells (the first seed's), where the matrix and the report were written, with
    several seeds each cell's spread over them, and the time the console's last line gives."""

    matrix: Any = None
    matrix_path: str = ""
    report: str = ""
    spread: Any = None
    seconds: float = 0.0


def main(argv: list[str] | None = None) -> CrossCorpusResult:
    """The argparse layer: the config from the flags, the training section's store opened once, then :func:`run`."""
    cfg, args = from_args(parser(), argv, BINDS)
    corpora = list(dict.fromkeys(cfg.train.corpora))
    if len(corpora) < 2:
        raise SystemExit(f"jobs/crosscorpus.py: the matrix needs at least two corpora (--corpora A,B,...), got {corpora}")
    return run(cfg, Store(cfg.train.store), out=args.out)


def run(cfg: ExperimentConfig, store: Store, out: str | None = None) -> CrossCorpusResult:
    """The cross-corpus matrix of ``cfg``'s training corpora (at least two) into ``out`` (default
    ``<run folder>/crosscorpus``); ``store``: the training section's (``cfg.train.store``), which every evaluation
    reads (the training config names it by URI, which the Ray Train workers open)."""
    import polars as pl

    from ray_ser.errors import ConfigError
    from ray_ser.evaluate.matrix import cells, write_matrix, write_matrix_report
    from ray_ser.evaluate.seeds import matrix_seed_table, matrix_spread, matrix_spread_lines, seed_folder, seed_list
    from ray_ser.jobs.evaluate import Scoring, evaluate
    from ray_ser.runtime import init_ray
    from ray_ser.train.driver import run as train_folds

    train = cfg.train
    corpora = list(dict.fromkeys(train.corpora))
    if len(corpora) < 2:
        raise ConfigError(f"the cross-corpus matrix needs at least two training corpora (train.corpora), got {corpora}")
    out = run_path(out or join(cfg.run_dir, "crosscorpus"))
    console.setup(out)
    cfg.save(out)
    init_ray()
    t0 = time.perf_counter()
    seeds = seed_list(train.seed, cfg.seeds)
    per_seed, notes = {}, []
    for seed in seeds:
        parts = per_seed.setdefault(seed, [])
        for name, (trained, folds) in plan_runs(corpora, cfg.crosscorpus.rows).items():
            run_dir = out / "runs" / name
            run_dir = run_dir if len(seeds) == 1 else Path(seed_folder(run_dir, seed))
            unseen = [c for c in corpora if c not in trained]
            shown = name + (f" seed {seed}" if len(seeds) > 1 else "")
            with console.stage(f"train on {shown}" + (" (outer folds + final model)" if folds else " (final model)")):
                rcfg = train.model_copy(update={"corpora": trained, "final": True, "seed": seed,
                                                "outer_folds": "all" if folds else "none"})
                train_folds(rcfg, store, None, run_dir)
            evaluations = ([("out-of-fold", run_dir / "eval", [])] if folds else []) + \
                [("zero-shot", run_dir / "zero-shot", unseen)]
            for protocol, eval_dir, zero_shot in evaluations:
                if not _fresh(eval_dir, run_dir):
                    with console.stage(f"score {shown} {protocol}" + (f" on {', '.join(zero_shot)}" if zero_shot else "")):
                        scoring = Scoring.of(cfg, store, [str(run_dir)], corpus=zero_shot, by=[],
                                             probe_layers=cfg.analysis.probe_layers or PROBE_LAYERS)
                        with staged(str(eval_dir)) as local:  # on an object store: written here, copied up whole
                            evaluate(scoring, local, shown=str(eval_dir) if is_uri(eval_dir) else None)
                parts.append(cells(pl.read_parquet((eval_dir / "metrics.parquet").read_bytes()), trained,
                                   zero_shot or trained))
    if train.label_set:
        notes.append(f"Label set: {', '.join(train.label_set)}; each run's run.json and each zero-shot evaluation's "
                     "log count the utterances outside it per corpus.")
    if train.scaler == "per-corpus":
        notes.append("Input scaling per corpus: a training corpus by its training speakers' statistics, a zero-shot "
                     "corpus by its own frame statistics in each condition (no labels used).")
    spread = None
    with staged(str(out)) as local:
        matrix = pl.read_parquet(write_matrix(per_seed[seeds[0]], local))
        if len(seeds) > 1:  # the other seeds' cells, as matrix.parquet holds the first's
            table = matrix_seed_table({s: pl.concat(p) for s, p in per_seed.items()})
            table.write_parquet(Path(local) / "seeds.parquet")
            spread = matrix_spread(table)
        report = write_matrix_report(matrix, local, notes, spread)
    matrix_path, report = join(out, "matrix.parquet"), join(out, report.name)
    console.say(summary(matrix))
    if spread is not None and (lines := matrix_spread_lines(spread)):
        console.say(lines)
    if (race := race_summary(matrix)):
        console.say(race)
    seconds = time.perf_counter() - t0
    console.say(f"matrix: {matrix_path}\nreport: {report}  ({seconds:.0f} s)")
    return CrossCorpusResult(matrix=matrix, matrix_path=matrix_path, report=report, spread=spread, seconds=seconds)


def summary(matrix) -> str:
    """The clean UAR matrix (CCC of the first dimension when no cell has a UAR) as a few aligned console lines
    (zero-shot cells marked *)."""
    import polars as pl

    from ray_ser.evaluate.matrix import row_order

    conds = matrix["condition"].unique().to_list()
    cond = "clean" if "clean" in conds else sorted(conds)[0]
    present = set(matrix["metric"].to_list())
    metric = "uar" if "uar" in present else next((f"ccc_{d}" for d in ("arousal", "valence", "dominance")
                                                   if f"ccc_{d}" in present), "uar")  # dimensional corpora: CCC
    m = matrix.filter(pl.col("metric") == metric, pl.col("condition") == cond)
    cols = sorted(m["test_corpus"].unique().to_list())
    rows = row_order(m["train_corpora"].unique().to_list())
    width = max([len(r) for r in rows] + [10])
    name = "UAR" if metric == "uar" else f"CCC {metric.removeprefix('ccc_')}"
    lines = [f"{name} ({cond}), rows trained on, columns scored on (* zero-shot):",
             "  " + " " * width + "".join(f"{c:>12}" for c in cols)]
    look = {(r["train_corpora"], r["test_corpus"]): r for r in m.iter_rows(named=True)}
    for r in rows:
        line = "  " + f"{r:<{width}}"
        for c in cols:
            cell = look.get((r, c))
            line += f"{'':>12}" if cell is None else f"{cell['value']:>11.3f}{'*' if cell['protocol'] == 'zero-shot' else ' '}"
        lines.append(line)
    return "\n".join(lines)


def race_summary(matrix) -> str:
    """Each clean cell against its probe cell: model minus probe (UAR) with its paired interval over the test
    corpus's speakers and the verdict, a few aligned lines; empty without race rows."""
    import polars as pl

    from ray_ser.evaluate.matrix import row_order
    from ray_ser.evaluate.race import DIFFERENCE, verdict

    m = matrix.filter(pl.col("metric") == DIFFERENCE, pl.col("condition") == "clean")
    if m.is_empty():
        return ""
    lines = ["model minus probe (clean UAR; paired speaker-bootstrap 95 % interval over the test corpus's speakers):"]
    width = max(len(r) for r in m["train_corpora"].to_list())
    for train in row_order(m["train_corpora"].unique().to_list()):
        for r in m.filter(pl.col("train_corpora") == train).sort("test_corpus").iter_rows(named=True):
            v = verdict(r["value"], r["ci_low"], r["ci_high"])
            ci = f" [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]" if v != "no interval" else ""
            lines.append(f"  {train:<{width}} -> {r['test_corpus']:<10} {r['value']:+.3f}{ci}  {v}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
