"""Metric tables from a predictions table: the long, tidy metrics.parquet (columns: ``ray_ser.evaluate.results.METRICS_SCHEMA``)
and confusion.parquet, grouped overall, by speaker, gender, condition, corpus, gender x condition and user columns.

Every row belongs to one (run, condition). Each cell's 95 % interval is a speaker-level bootstrap: the group's
speakers are resampled with replacement (``n_boot`` times, seeded per run/condition/group) and the metric is
recomputed on the pooled utterances of the drawn speakers. The interval is null where the group has a single
speaker (group_by "speaker", or a gender with one speaker): one speaker says nothing about other speakers.
Extra rows beyond the agreed groups: group_by "gender_gap" (group "male-female": male minus female, interval
from independent resamples of each gender's speakers) and "<dimension>_bin" (MSE per Likert bin of the target).
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from ray_ser import metrics as M
from ray_ser.corpora.manifest import DIMENSIONS
from ray_ser.evaluate.results import (
    CONFUSION_SCHEMA,
    METRICS_SCHEMA,
    PROTOCOLS,
    read_predictions,
    write_parquet,
)

GROUP_BYS = ("all", "condition", "gender", "gender:condition", "gender_gap", "corpus", "speaker")
KS = (1, 2, 3)
PAUAR_THRESHOLDS = {"pauar50": 0.50, "pauar75": 0.75}
GENDER_GAP = ("male", "female")
CALIBRATION = {"ece": M.ece_from_counts, "brier": M.brier_from_counts, "nll": M.nll_from_counts}
"""Calibration of the category probabilities: ECE (15 confidence bins), multi-class Brier score, NLL (nats); where
the predictions carry a ``temperature``, the same three of the probabilities before it, as ``<metric>_uncalibrated``."""


def condition_order(conditions) -> list[str]:
    """Conditions for display: "clean" first, then "<x>dB" by falling SNR (25dB, 15dB, 5dB), then the rest
    ("reverb", "reverb+15dB", ...) alphabetically."""
    def key(c: str):
        m = re.fullmatch(r"(-?\d+(?:\.\d+)?)\s*dB", c)
        return (0, 0.0, c) if c == "clean" else (1, -float(m.group(1)), c) if m else (2, 0.0, c)
    return sorted(dict.fromkeys(conditions), key=key)


@dataclass
class _Cell:
    """The arrays of one (run, condition) slice of the predictions."""

    run: str
    condition: str
    spk: np.ndarray  # speaker code of each row
    spk_names: np.ndarray  # code -> speaker
    columns: dict[str, np.ndarray]  # grouping columns as strings (None = null)
    y: np.ndarray  # true class index, -1 = none
    probs: np.ndarray  # (n, C), NaN rows where the model gave none
    cat: np.ndarray  # rows with a label and probabilities
    votes: np.ndarray  # rows with grader PDFs (has_votes), a pdf and probabilities
    overlap: np.ndarray
    js: np.ndarray
    dims: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)  # d -> (x, y, ok)
    raw_probs: np.ndarray | None = None  # (n, C) before temperature scaling, where the rows carry a temperature


def list_matrix(df: pl.DataFrame, col: str, c: int) -> np.ndarray:
    """A list column of per-class values (``probs``, ``pdf``) as an (n, c) float64 matrix; NaN where the column is
    absent, an error naming it when its lists are not c long."""
    if col not in df.columns or c == 0 or df[col].null_count() == df.height:
        return np.full((df.height, c), np.nan)
    s = df[col]
    lengths = s.list.len().drop_nulls().unique().to_list()
    if any(n != c for n in lengths):
        raise ValueError(f"column {col!r} holds lists of length {sorted(lengths)} but there are {c} categories")
    return s.list.to_array(c).to_numpy().astype(np.float64) if df.height else np.zeros((0, c))


def _strings(df: pl.DataFrame, col: str) -> np.ndarray:
    return np.asarray(df[col].cast(pl.String).to_list(), dtype=object)


def _validate(df: pl.DataFrame, categories: Sequence[str], by: Sequence[str]) -> None:
    missing = [c for c in ("run", "condition", "speaker") if c not in df.columns]
    missing += [c for c in by if c not in df.columns]
    if missing:
        raise ValueError(f"predictions lack the column(s) {missing}")
    for c in ("run", "condition", "speaker"):
        if df[c].null_count():
            raise ValueError(f"predictions: column {c!r} has {df[c].null_count()} null value(s)")
    if "label_index" not in df.columns and "label" not in df.columns:
        raise ValueError("predictions have neither 'label_index' nor 'label'")
    if "utt_id" in df.columns:
        dup = df.group_by("run", "condition", "utt_id").len().filter(pl.col("len") > 1)
        if dup.height:
            raise ValueError(f"predictions: {dup.height} (run, condition, utt_id) rows occur more than once, "
                             f"e.g. {dup.row(0)[:3]}; each utterance x condition must be predicted once")
    if len(categories) < 2 and not dimensional(df):
        raise ValueError(f"need at least 2 categories (or A/V/D predictions), got {list(categories)}")


def dimensional(df: pl.DataFrame) -> list[str]:
    """The A/V/D dimensions a predictions table scores: a true value and a prediction on some row."""
    return [d for d in DIMENSIONS if d in df.columns and f"pred_{d}" in df.columns
            and (df[d].is_not_null() & df[f"pred_{d}"].is_not_null() & df[f"pred_{d}"].is_not_nan()).any()]


def true_index(df: pl.DataFrame, categories: Sequence[str]) -> np.ndarray:
    """Each row's category index (from `label_index`, else `label` among ``categories``); -1 where it has none."""
    c = len(categories)
    y = np.full(df.height, -1, np.int64)
    if "label_index" in df.columns:
        li = df["label_index"].cast(pl.Int64).fill_null(-1).to_numpy()
        y = np.where(li >= 0, li, -1)
    if "label" in df.columns:
        lookup = {name: i for i, name in enumerate(categories)}
        labels = df["label"].to_list()
        unknown = sorted({l for l in labels if l is not None and l not in lookup})
        if unknown:
            raise ValueError(f"predictions: label(s) {unknown} are not among the categories {list(categories)}")
        from_label = np.asarray([-1 if l is None else lookup[l] for l in labels], np.int64)
        y = np.where(y >= 0, y, from_label)
    if (y >= c).any():
        raise ValueError(f"predictions: label_index up to {y.max()} but only {c} categories")
    return y


def _cells(df: pl.DataFrame, categories: Sequence[str], group_cols: Sequence[str]) -> list[_Cell]:
    c = len(categories)
    cells = []
    for (run, cond), part in df.partition_by("run", "condition", as_dict=True, maintain_order=True).items():
        y = true_index(part, categories)
        probs = list_matrix(part, "probs", c)
        pdf = list_matrix(part, "pdf", c)
        has_probs = np.isfinite(probs).all(axis=1) & (c > 0)
        has_votes = part["has_votes"].fill_null(False).to_numpy() if "has_votes" in part.columns else \
            np.zeros(part.height, bool)
        votes = has_votes & has_probs & np.isfinite(pdf).all(axis=1) & (np.nan_to_num(pdf).sum(axis=1) > 0)
        overlap = np.full(part.height, np.nan)
        js = np.full(part.height, np.nan)
        if votes.any():
            overlap[votes] = M.pdf_overlap(pdf[votes], probs[votes])
            js[votes] = M.js_divergence(pdf[votes], probs[votes])
        spk_names, spk = np.unique(_strings(part, "speaker").astype(str), return_inverse=True)
        cell = _Cell(run=str(run), condition=str(cond), spk=spk, spk_names=spk_names,
                     columns={col: _strings(part, col) for col in group_cols if col in part.columns},
                     y=y, probs=probs, cat=(y >= 0) & has_probs, votes=votes, overlap=overlap, js=js)
        if "temperature" in part.columns and part["temperature"].is_not_null().any():
            from ray_ser.train.calibration import scale

            # the probabilities before temperature scaling: a temperature of 1 / T undoes T
            t = part["temperature"].cast(pl.Float64).fill_null(1.0).to_numpy()
            raw = scale(np.nan_to_num(probs, nan=1.0), 1.0 / t)
            cell.raw_probs = np.where(has_probs[:, None], raw, np.nan)
        for d in DIMENSIONS:
            if d in part.columns and f"pred_{d}" in part.columns:
                x = part[d].cast(pl.Float64).fill_null(np.nan).to_numpy()
                yh = part[f"pred_{d}"].cast(pl.Float64).fill_null(np.nan).to_numpy()
                ok = np.isfinite(x) & np.isfinite(yh)
                if ok.any():
                    cell.dims[d] = (x, yh, ok)
        cells.append(cell)
    return cells


def _seed(seed: int, *key: str) -> list[int]:
    return [int(seed), zlib.crc32("|".join(key).encode())]


Row = tuple  # (metric, k, value, ci_low, ci_high, n, n_speakers)


class _GroupResult:
    """Rows of one group, plus the bootstrap replicates of each (metric, k) for the gender gap; the intervals
    are computed for all rows at once in ``rows()``."""

    def __init__(self) -> None:
        self.values: list[tuple[str, int | None, float, int, int]] = []
        self.reps: dict[tuple[str, int | None], np.ndarray | None] = {}

    def add(self, metric: str, k: int | None, value: float, reps: np.ndarray | None, n: int, s: int) -> None:
        self.values.append((metric, k, float(value), int(n), int(s)))
        self.reps[(metric, k)] = reps

    def rows(self, level: float) -> list[Row]:
        with_reps = [i for i, v in enumerate(self.values) if self.reps[v[:2]] is not None]
        lo = np.full(len(self.values), np.nan)
        hi = np.full(len(self.values), np.nan)
        if with_reps:
            stacked = np.stack([self.reps[self.values[i][:2]] for i in with_reps])
            lo[with_reps], hi[with_reps] = M.percentile_interval(stacked, level)
        return [(m, k, v, float(l), float(h), n, s) for (m, k, v, n, s), l, h in zip(self.values, lo, hi)]


def _speakers(cell: _Cell, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(local speaker code of each selected row, the speakers' names) of the rows in ``rows``."""
    ids, codes = np.unique(cell.spk[rows], return_inverse=True)
    return codes, cell.spk_names[ids]


def _group(cell: _Cell, mask: np.ndarray, c: int, ks: Sequence[int], n_boot: int, seed: list[int],
           speaker_level: bool = True,
           per_speaker: dict[str, _GroupResult] | None = None) -> _GroupResult:
    """Every metric of the rows in ``mask``, with bootstrap intervals when they span >= 2 speakers; with
    ``per_speaker`` (a dict to fill) also each speaker's own values, from the same per-speaker statistics."""
    res = _GroupResult()
    draws: dict[int, np.ndarray] = {}

    def counts(n_speakers: int) -> np.ndarray:  # one set of resamples per group and speaker count
        if n_speakers not in draws:
            draws[n_speakers] = M.speaker_resample_counts(n_speakers, n_boot, seed)
        return draws[n_speakers]

    def each_speaker(names, metric, k, values, counts):
        if per_speaker is not None:
            for name, v, n in zip(names, values, counts):
                if n > 0:
                    per_speaker.setdefault(name, _GroupResult()).add(metric, k, v, None, n, 1)

    rows = mask & cell.cat
    if rows.any():
        codes, names = _speakers(cell, rows)
        s = len(names)
        y, probs = cell.y[rows], cell.probs[rows]
        pred = probs.argmax(axis=1)
        conf = M.confusion_counts(codes, y, pred, s, c)  # (S, C, C)
        ks_ = [k for k in ks if k <= c]
        hits = M.kbest_hits(codes, y, probs, s, ks_)  # (K, S, C)
        totals = conf.sum(axis=2)  # (S, C)
        boot = s >= 2
        w = counts(s) if boot else None
        rconf = M.resample_stats(conf, w) if boot else None
        rhits = np.einsum("bs,ksc->kbc", w.astype(np.float64), hits) if boot else None
        n = int(rows.sum())
        n_spk = totals.sum(axis=1)
        pooled = conf.sum(axis=0)  # point values from the pooled counts (equal to scikit-learn's: tested)
        su = M.recall_uar(hits, totals[None])  # (K, S) per-speaker k-best UAR
        for i, k in enumerate(ks_):
            res.add("uar", k, M.recall_uar(hits[i].sum(0), totals.sum(0)),
                    M.recall_uar(rhits[i], rconf.sum(-1)) if boot else None, n, s)
            each_speaker(names, "uar", k, su[i], n_spk)
        wa = M.wa_from_confusion(rconf) if boot else None
        res.add("wa", None, M.wa_from_confusion(pooled), wa, n, s)
        res.add("f1_macro", None, M.f1_macro_from_confusion(pooled),
                M.f1_macro_from_confusion(rconf) if boot else None, n, s)
        res.add("f1_micro", None, M.wa_from_confusion(pooled), wa, n, s)
        each_speaker(names, "wa", None, M.wa_from_confusion(conf), n_spk)
        each_speaker(names, "f1_macro", None, M.f1_macro_from_confusion(conf), n_spk)
        each_speaker(names, "f1_micro", None, M.wa_from_confusion(conf), n_spk)
        versions = [("", probs)] + ([("_uncalibrated", cell.raw_probs[rows])] if cell.raw_probs is not None else [])
        for suffix, p in versions:
            cal = M.calibration_counts(codes, y, p, s)  # (S, bins + 1, 3)
            rcal = M.resample_stats(cal, w) if boot else None
            for metric, fn in CALIBRATION.items():
                res.add(metric + suffix, None, fn(cal.sum(axis=0)), fn(rcal) if boot else None, n, s)
                each_speaker(names, metric + suffix, None, fn(cal), n_spk)
        if speaker_level:
            for metric, thr in PAUAR_THRESHOLDS.items():
                ind = (su >= thr - M.THRESHOLD_EPS).astype(np.float64)
                reps = (w @ ind.T / s) if boot else None  # (B, K)
                for i, k in enumerate(ks_):
                    res.add(metric, k, ind[i].mean(), None if reps is None else reps[:, i], n, s)
    rows = mask & cell.votes
    if rows.any():
        codes, names = _speakers(cell, rows)
        s = len(names)
        stats = np.stack([np.bincount(codes, cell.overlap[rows], s), np.bincount(codes, cell.js[rows], s),
                          np.bincount(codes, minlength=s).astype(np.float64)], axis=1)
        boot = s >= 2
        r = M.resample_stats(stats, counts(s)) if boot else None
        n = int(rows.sum())
        tot = stats.sum(axis=0)
        res.add("pdf_overlap", None, tot[0] / tot[2], r[:, 0] / r[:, 2] if boot else None, n, s)
        res.add("js_divergence", None, tot[1] / tot[2], r[:, 1] / r[:, 2] if boot else None, n, s)
        each_speaker(names, "pdf_overlap", None, stats[:, 0] / stats[:, 2], stats[:, 2])
        each_speaker(names, "js_divergence", None, stats[:, 1] / stats[:, 2], stats[:, 2])
    for d, (x, yh, ok) in cell.dims.items():
        rows = mask & ok
        if not rows.any():
            continue
        codes, names = _speakers(cell, rows)
        s = len(names)
        m = M.moments(x[rows], yh[rows], codes, s)  # (S, 6)
        boot = s >= 2
        w = counts(s) if boot else None
        r = M.resample_stats(m, w) if boot else None
        n = int(rows.sum())
        pooled = m.sum(axis=0)
        for name, fn in (("ccc", M.ccc_from_moments), ("pearson", M.pearson_from_moments),
                         ("mse", M.mse_from_moments)):
            res.add(f"{name}_{d}", None, fn(pooled), fn(r) if boot else None, n, s)
            each_speaker(names, f"{name}_{d}", None, fn(m), m[:, 0].astype(np.int64))
        ae = np.stack([np.bincount(codes, np.abs(x[rows] - yh[rows]), s), m[:, 0]], axis=1)  # (S, 2) sum |e|, n
        ra = M.resample_stats(ae, w) if boot else None
        res.add(f"mae_{d}", None, ae[:, 0].sum() / ae[:, 1].sum(), ra[:, 0] / ra[:, 1] if boot else None, n, s)
        each_speaker(names, f"mae_{d}", None, ae[:, 0] / np.maximum(ae[:, 1], 1), m[:, 0].astype(np.int64))
    return res


def _bins(cell: _Cell, n_boot: int, seed: int) -> list[tuple[str, str, _GroupResult]]:
    out = []
    for d, (x, yh, ok) in cell.dims.items():
        bins = M.likert_bins(np.where(ok, x, np.nan))
        for b in np.unique(bins[ok]):
            rows = ok & (bins == b)
            codes, names = _speakers(cell, rows)
            s = len(names)
            m = M.moments(x[rows], yh[rows], codes, s)
            res = _GroupResult()
            label = f"{b:g}"
            r = M.resample_stats(m, M.speaker_resample_counts(
                s, n_boot, _seed(seed, cell.run, cell.condition, f"{d}_bin", label))) if s >= 2 else None
            res.add(f"mse_{d}", None, M.mse_from_moments(m.sum(axis=0)), None if r is None else M.mse_from_moments(r),
                    int(rows.sum()), s)
            out.append((f"{d}_bin", label, res))
    return out


def _gap(a: _GroupResult, b: _GroupResult) -> _GroupResult:
    res = _GroupResult()
    b_values = {v[:2]: v for v in b.values}
    for key_a in a.values:
        key = key_a[:2]
        if key not in b_values:
            continue
        (_, _, va, na, sa), (_, _, vb, nb, sb) = key_a, b_values[key]
        ra, rb = a.reps[key], b.reps[key]
        res.add(key[0], key[1], va - vb, ra - rb if ra is not None and rb is not None else None, na + nb, sa + sb)
    return res


def metric_table(predictions: pl.DataFrame | pl.LazyFrame, categories: Sequence[str], by: Sequence[str] = (),
                 n_boot: int = 500, seed: int = 0, ks: Sequence[int] = KS, level: float = 0.95) -> pl.DataFrame:
    """metrics.parquet of a predictions table (``METRICS_SCHEMA``): every metric per run x condition x group
    ("all", "condition", "speaker", "gender", "gender:condition", "corpus", each ``by`` column), k-best UAR and
    paUAR-50/75 for each k, and speaker-level bootstrap intervals (null for single-speaker groups); ``protocol`` from
    the predictions' column (out-of-fold when it has none)."""
    df = predictions.collect() if isinstance(predictions, pl.LazyFrame) else predictions
    by = list(dict.fromkeys(by))
    _validate(df, categories, by)
    if "protocol" not in df.columns:
        df = df.with_columns(pl.lit(PROTOCOLS[0]).alias("protocol"))
    c = len(categories)
    group_cols = [g for g in ("gender", "corpus", *by) if g in df.columns]
    out: list[tuple] = []
    cells = [(str(proto), cell) for (proto,), part in df.partition_by("protocol", as_dict=True, maintain_order=True).items()
             for cell in _cells(part, categories, group_cols)]
    for proto, cell in cells:
        run, cond = cell.run, cell.condition

        def emit(group_by: str, group: str, res: _GroupResult) -> None:
            out.extend((run, group_by, group, cond, *r, proto) for r in res.rows(level))

        everyone = np.ones(cell.spk.size, bool)
        speakers: dict[str, _GroupResult] = {}
        res_all = _group(cell, everyone, c, ks, n_boot, _seed(seed, run, cond, "all", "all"),
                         per_speaker=speakers)
        emit("all", "all", res_all)
        emit("condition", cond, res_all)
        for col in group_cols:
            values = cell.columns[col]
            per_value = {}
            for v in sorted({v for v in values if v is not None}):
                res = _group(cell, values == v, c, ks, n_boot, _seed(seed, run, cond, col, v))
                per_value[v] = res
                emit(col, v, res)
                if col == "gender":
                    emit("gender:condition", f"{v}:{cond}", res)
            if col == "gender" and all(g in per_value for g in GENDER_GAP):
                emit("gender_gap", "-".join(GENDER_GAP), _gap(per_value[GENDER_GAP[0]], per_value[GENDER_GAP[1]]))
        for spk in sorted(speakers):
            emit("speaker", spk, speakers[spk])
        for group_by, group, res in _bins(cell, n_boot, seed):
            emit(group_by, group, res)
    table = pl.DataFrame(out, schema=METRICS_SCHEMA, orient="row")
    table = table.with_columns(pl.col("value", "ci_low", "ci_high").fill_nan(None))
    return _sorted(table)


def _sorted(table: pl.DataFrame) -> pl.DataFrame:
    conds = condition_order(table["condition"].unique().to_list())
    gbs = list(GROUP_BYS) + sorted(set(table["group_by"].unique().to_list()) - set(GROUP_BYS))
    return (table.with_columns(pl.col("condition").replace_strict(conds, range(len(conds)), return_dtype=pl.Int32)
                               .alias("_c"),
                               pl.col("group_by").replace_strict(gbs, range(len(gbs)), return_dtype=pl.Int32)
                               .alias("_g"))
            .sort("run", "protocol", "_c", "_g", "group", "metric", "k", nulls_last=False)
            .drop("_c", "_g"))


def confusion_table(predictions: pl.DataFrame | pl.LazyFrame, categories: Sequence[str]) -> pl.DataFrame:
    """confusion.parquet: run, condition, true, pred, count for every (true, pred) pair of categories
    (zeros included, so each run x condition is a full matrix); predicted class = argmax of probs."""
    df = predictions.collect() if isinstance(predictions, pl.LazyFrame) else predictions
    _validate(df, categories, ())
    c = len(categories)
    rows = []
    for cell in _cells(df, categories, ()) if c else ():  # a dimensional-only run has no classes to confuse
        conf = M.confusion(cell.y[cell.cat], cell.probs[cell.cat].argmax(axis=1), c) if cell.cat.any() \
            else np.zeros((c, c), np.int64)
        rows += [(cell.run, cell.condition, categories[i], categories[j], int(conf[i, j]))
                 for i in range(c) for j in range(c)]
    return pl.DataFrame(rows, schema=CONFUSION_SCHEMA, orient="row")


def write_tables(predictions: str | Path | pl.DataFrame, out_dir: str | Path, categories: Sequence[str] | None = None,
                 by: Sequence[str] = (), n_boot: int = 500, seed: int = 0,
                 extra: pl.DataFrame | None = None) -> dict[str, Path]:
    """Write ``metrics.parquet`` and ``confusion.parquet`` into ``out_dir`` from a predictions table (a frame
    plus ``categories``, or a predictions.parquet path whose metadata gives them); returns their paths. ``extra``:
    more metrics rows (e.g. the race against the probe, ``ray_ser.evaluate.race``) to file with them."""
    config: dict = {}
    source = "predictions"
    if isinstance(predictions, (str, Path)):
        source = str(predictions)
        df, cats, config = read_predictions(predictions)
        categories = cats if categories is None else categories
    else:
        df = predictions
    if categories is None:
        raise ValueError("write_tables: categories are needed when predictions are given as a frame")
    try:
        metrics = metric_table(df, categories, by=by, n_boot=n_boot, seed=seed)
        if extra is not None and extra.height:
            metrics = _sorted(pl.concat([metrics, extra.cast(METRICS_SCHEMA).select(list(METRICS_SCHEMA))]))
        conf = confusion_table(df, categories)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e
    out = Path(out_dir)
    meta = {"ray_ser.categories": json.dumps(list(categories)), "ray_ser.run_config": json.dumps(config),
            "ray_ser.bootstrap": json.dumps({"n_boot": n_boot, "seed": seed, "unit": "speaker", "level": 0.95}),
            "ray_ser.by": json.dumps(list(by))}
    return {"metrics": write_parquet(metrics, out / "metrics.parquet", meta),
            "confusion": write_parquet(conf, out / "confusion.parquet", meta)}
