"""Several seeds of one training config: the run folders (``<run>/seed_<s>``) and the spread of their pooled scores
over the seeds, shown beside the speaker-bootstrap interval (which covers new speakers, not a new initialisation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import polars as pl

SPREAD_METRICS = ("uar", "uar_minus_probe")
"""The pooled metrics whose spread over the seeds is reported (1-best UAR; the race against the probe)."""


def seed_list(seed: int, n: int) -> list[int]:
    """The seeds of ``n`` runs starting at ``seed``: seed, seed + 1, ..., seed + n - 1."""
    if n < 1:
        raise ValueError(f"seeds: need at least 1 run, got {n}")
    return [int(seed) + i for i in range(int(n))]


def seed_folder(run_dir: str | Path, seed: int) -> str:
    """Where the run of ``seed`` goes: ``<run_dir>/seed_<seed>`` (a path or URI, as ``run_dir``)."""
    from ray_ser.storage import join

    return join(str(run_dir), f"seed_{int(seed)}")


def seed_table(metrics: Mapping[int, pl.DataFrame]) -> pl.DataFrame:
    """seed, condition, metric, value, ci_low, ci_high, n_speakers: each seed's pooled (group "all") rows of
    :data:`SPREAD_METRICS` (UAR 1-best) from its metrics.parquet."""
    parts = []
    for seed, m in sorted(metrics.items()):
        rows = m.filter(pl.col("group_by") == "all", pl.col("metric").is_in(SPREAD_METRICS),
                        (pl.col("metric") != "uar") | (pl.col("k") == 1))
        parts.append(rows.select(pl.lit(int(seed), pl.Int64).alias("seed"), "condition", "metric", "value",
                                 "ci_low", "ci_high", "n_speakers"))
    return pl.concat(parts) if parts else pl.DataFrame()


def seed_spread(table: pl.DataFrame, by: tuple[str, ...] = ("condition", "metric")) -> pl.DataFrame:
    """``by`` (condition, metric), seeds, mean, std (sample, ddof 1; null for one seed), min, max over the seeds, and
    the mean speaker-bootstrap interval (ci_low, ci_high averaged over the seeds) beside it."""
    return (table.group_by(*by, maintain_order=True)
            .agg(pl.len().alias("seeds"), pl.col("value").mean().alias("mean"), pl.col("value").std(ddof=1).alias("std"),
                 pl.col("value").min().alias("min"), pl.col("value").max().alias("max"),
                 pl.col("ci_low").mean().alias("speaker_ci_low"), pl.col("ci_high").mean().alias("speaker_ci_high")))


def spread_lines(spread: pl.DataFrame) -> str:
    """The spread per condition and metric, a few aligned console lines."""
    lines = [f"over {int(spread['seeds'].max())} seeds: pooled score per condition, its spread over the seeds (std, "
             "min-max) and the mean speaker-bootstrap 95 % interval:"]
    for r in spread.iter_rows(named=True):
        std = "–" if r["std"] is None or not np.isfinite(r["std"]) else f"{r['std']:.3f}"
        ci = "" if r["speaker_ci_low"] is None else f"; speakers [{r['speaker_ci_low']:.3f}, {r['speaker_ci_high']:.3f}]"
        lines.append(f"  {r['condition']:<12} {r['metric']:<16} mean {r['mean']:.3f}, std {std}, "
                     f"min {r['min']:.3f}, max {r['max']:.3f}{ci}")
    return "\n".join(lines)


CELL_KEYS = ("train_corpora", "test_corpus", "protocol", "condition", "metric")
"""What identifies a cross-corpus matrix cell (``ray_ser.evaluate.matrix.MATRIX_SCHEMA``'s key columns)."""


def matrix_seed_table(matrices: Mapping[int, pl.DataFrame]) -> pl.DataFrame:
    """seed, the cell keys, value, ci_low, ci_high, n_speakers: each seed's matrix rows of :data:`SPREAD_METRICS`."""
    parts = [m.filter(pl.col("metric").is_in(SPREAD_METRICS))
             .select(pl.lit(int(seed), pl.Int64).alias("seed"), *CELL_KEYS, "value", "ci_low", "ci_high", "n_speakers")
             for seed, m in sorted(matrices.items())]
    return pl.concat(parts) if parts else pl.DataFrame()


def matrix_spread(table: pl.DataFrame) -> pl.DataFrame:
    """Per matrix cell (:data:`CELL_KEYS`), the spread of :func:`matrix_seed_table`'s values over the seeds, as
    :func:`seed_spread` gives it per condition, sorted as the matrix is."""
    return seed_spread(table, CELL_KEYS).sort("condition", "metric", "train_corpora", "test_corpus")


def matrix_spread_lines(spread: pl.DataFrame, condition: str = "clean") -> str:
    """``condition``'s cells: mean and spread over the seeds beside the mean speaker interval, aligned lines."""
    sub = spread.filter(pl.col("condition") == condition)
    if sub.is_empty():
        return ""
    width = max(len(f"{r['train_corpora']} -> {r['test_corpus']}") for r in sub.iter_rows(named=True))
    lines = [f"over {int(sub['seeds'].max())} seeds ({condition}): each cell's mean, its spread over the seeds (std, "
             "min-max) and the mean speaker-bootstrap 95 % interval:"]
    for r in sub.sort("metric", "train_corpora", "test_corpus", descending=[True, False, False]).iter_rows(named=True):
        std = "–" if r["std"] is None or not np.isfinite(r["std"]) else f"{r['std']:.3f}"
        ci = "" if r["speaker_ci_low"] is None else f"; speakers [{r['speaker_ci_low']:+.3f}, {r['speaker_ci_high']:+.3f}]"
        cell = f"{r['train_corpora']} -> {r['test_corpus']}"
        lines.append(f"  {cell:<{width}} {r['metric']:<16} mean {r['mean']:+.3f}, std {std}, "
                     f"min {r['min']:+.3f}, max {r['max']:+.3f}{ci}")
    return "\n".join(lines)
