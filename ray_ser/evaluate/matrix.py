"""The cross-corpus matrix: one row per (training corpora, test corpus, protocol, condition, metric) from the
evaluation folders of the leave-one-corpus-out and single-corpus runs, a heat map per condition (rows: training
set, columns: test corpus, cells: UAR and its speaker-bootstrap interval) and an HTML page with both."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from ray_ser.evaluate.tables import condition_order

MATRIX_SCHEMA = {
    "train_corpora": pl.String, "test_corpus": pl.String, "protocol": pl.String, "condition": pl.String,
    "metric": pl.String, "value": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "n": pl.Int64,
    "n_speakers": pl.Int64,
}
"""Columns of ``matrix.parquet`` (the contract)."""


def train_name(corpora: Sequence[str]) -> str:
    """How a training set is written in the matrix: its corpora, sorted, joined by ``+``."""
    return "+".join(sorted(corpora))


def row_order(train_sets: Sequence[str]) -> list[str]:
    """Training sets in the order the matrix shows them: single corpora first, then larger sets, by name."""
    return sorted(train_sets, key=lambda r: (r.count("+"), r))


def cells(metrics: pl.DataFrame, train_corpora: Sequence[str], test_corpora: Sequence[str] | None = None) -> pl.DataFrame:
    """The matrix rows of one evaluation's metrics.parquet: its ``group_by == "corpus"`` rows (the 1-best value of
    k-best metrics), for ``test_corpora`` when given."""
    m = metrics.filter(pl.col("group_by") == "corpus", pl.col("k").is_null() | (pl.col("k") == 1))
    if test_corpora is not None:
        m = m.filter(pl.col("group").is_in(list(test_corpora)))
    if "protocol" not in m.columns:
        m = m.with_columns(pl.lit("out-of-fold").alias("protocol"))
    return m.select(pl.lit(train_name(train_corpora)).alias("train_corpora"), pl.col("group").alias("test_corpus"),
                    "protocol", "condition", "metric", "value", "ci_low", "ci_high", "n", "n_speakers"
                    ).cast(MATRIX_SCHEMA)


def write_matrix(parts: Sequence[pl.DataFrame], out_dir: str | Path) -> Path:
    """``DIR/matrix.parquet`` from the cells of every evaluation (atomic)."""
    df = pl.concat([p.cast(MATRIX_SCHEMA) for p in parts]) if parts else pl.DataFrame(schema=MATRIX_SCHEMA)
    df = df.sort("condition", "metric", "train_corpora", "test_corpus")
    path = Path(out_dir) / "matrix.parquet"
    tmp = path.with_name(path.name + ".tmp")
    df.write_parquet(tmp)
    tmp.replace(path)
    return path


def heat_map(matrix: pl.DataFrame, condition: str, path: str | Path, metric: str = "uar") -> Path | None:
    """One condition's matrix as a heat map PNG: rows training sets, columns test corpora, cells the metric with its
    interval; zero-shot cells framed apart from the out-of-fold ones."""
    m = matrix.filter(pl.col("condition") == condition, pl.col("metric") == metric)
    if m.is_empty():
        return None
    rows = row_order(m["train_corpora"].unique().to_list())
    cols = sorted(m["test_corpus"].unique().to_list())
    grid = np.full((len(rows), len(cols)), np.nan)
    fig = Figure(figsize=(1.9 * len(cols) + 2.5, 0.8 * len(rows) + 1.5))
    ax = fig.subplots()
    lookup = {(r["train_corpora"], r["test_corpus"]): r for r in m.iter_rows(named=True)}
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            if (r, c) in lookup:
                grid[i, j] = lookup[(r, c)]["value"]
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            cell = lookup.get((r, c))
            if cell is None:
                continue
            text = f"{cell['value']:.3f}"
            if cell["ci_low"] is not None and cell["ci_high"] is not None:
                text += f"\n[{cell['ci_low']:.2f}, {cell['ci_high']:.2f}]"
            text += "\nout-of-fold" if cell["protocol"] == "out-of-fold" else "\nzero-shot"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="black" if cell["value"] > 0.6 else "white")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("test corpus")
    ax.set_ylabel("trained on")
    ax.set_title(f"{metric.upper()} ({condition}), speaker-bootstrap 95 % intervals")
    fig.colorbar(image, ax=ax, fraction=0.04)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _cell(r: dict | None) -> str:
    if r is None:
        return "–"
    text = f"{r['value']:.3f}"
    if r["ci_low"] is not None and r["ci_high"] is not None:
        text += f" <span class=ci>[{r['ci_low']:.3f}, {r['ci_high']:.3f}]</span>"
    return text


def write_matrix_report(matrix: pl.DataFrame, out_dir: str | Path, notes: Sequence[str] = (),
                        spread: pl.DataFrame | None = None) -> Path:
    """``DIR/report.html``: the heat map of every condition, then per test corpus a table of every training set's
    UAR, WA and macro F1 by condition, ``notes`` (label-set counts, scaling) and, with several seeds, each cell's
    ``spread`` over them (``ray_ser.evaluate.seeds.matrix_spread``)."""
    out_dir = Path(out_dir)
    conds = condition_order(matrix["condition"].unique().to_list()) if matrix.height else []
    parts = ["<!doctype html><meta charset=utf-8><title>cross-corpus matrix</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}.ci{color:#777;font-size:85%}</style>",
             "<h1>Cross-corpus matrix</h1>",
             "<p>Rows: the corpora a model trained on; columns: the corpus it was scored on. A corpus in its own row "
             "is scored out of fold (its outer folds' test speakers); every other cell is zero-shot (a model trained "
             "on all speakers of the row's corpora, never on the column's). Intervals: speaker-level bootstrap. "
             "probe_uar: the linear probe on the same training rows and test utterances; uar_minus_probe: the "
             "model's UAR minus the probe's, its interval paired (the same resampled test speakers for both).</p>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    present = set(matrix["metric"].to_list()) if matrix.height else set()
    dims = [f"ccc_{d}" for d in ("arousal", "valence", "dominance") if f"ccc_{d}" in present]
    headline = (["uar"] if "uar" in present else []) + dims  # a dimensional corpus's cells are CCC
    for cond in conds:
        for metric in headline:
            suffix = "" if metric == "uar" else f"_{metric}"
            png = heat_map(matrix, cond, out_dir / "plots" / f"matrix_{cond}{suffix}.png", metric)
            if png is not None:
                parts.append(f"<h2>{html.escape(cond)}{' ' + html.escape(metric) if suffix else ''}</h2>"
                             f"<img src='plots/{png.name}'>")
    metrics = [m for m in ("uar", "wa", "f1_macro", "probe_uar", "uar_minus_probe") if m in present] + dims
    for test in sorted(matrix["test_corpus"].unique().to_list()) if matrix.height else []:
        sub = matrix.filter(pl.col("test_corpus") == test)
        parts.append(f"<h2>Test corpus {html.escape(test)}</h2><table><tr><th>trained on</th><th>protocol</th>"
                     + "".join(f"<th>{html.escape(m)} {html.escape(c)}</th>" for m in metrics for c in conds) + "</tr>")
        for train in row_order(sub["train_corpora"].unique().to_list()):
            rows = {(r["metric"], r["condition"]): r for r in sub.filter(pl.col("train_corpora") == train).iter_rows(named=True)}
            proto = next(iter(rows.values()))["protocol"]
            parts.append(f"<tr><td>{html.escape(train)}</td><td>{proto}</td>"
                         + "".join(f"<td>{_cell(rows.get((m, c)))}</td>" for m in metrics for c in conds) + "</tr>")
        parts.append("</table>")
    if spread is not None and spread.height:
        parts.append(f"<h2>Seed spread</h2><p>Over {int(spread['seeds'].max())} seeds (the cells above are the first "
                     "seed's): each cell's mean, sample standard deviation and range over the seeds, beside the mean "
                     "speaker-bootstrap 95 % interval.</p><table><tr><th>trained on</th><th>test corpus</th>"
                     "<th>condition</th><th>metric</th><th>seeds</th><th>mean</th><th>std</th><th>min</th><th>max</th>"
                     "<th>speaker interval</th></tr>")
        for r in spread.iter_rows(named=True):
            num = [f"{r[k]:.3f}" if r[k] is not None else "–" for k in ("mean", "std", "min", "max")]
            ci = "–" if r["speaker_ci_low"] is None else f"[{r['speaker_ci_low']:.3f}, {r['speaker_ci_high']:.3f}]"
            parts.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
                r["train_corpora"], r["test_corpus"], r["condition"], r["metric"], r["seeds"], *num, ci)) + "</tr>")
        parts.append("</table>")
    path = out_dir / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
