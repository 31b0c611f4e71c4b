"""The evaluation report: PNG plots (matplotlib, Agg canvas, no pyplot state) and one self-contained
report.html that shows them with the key tables and the run's configuration.

Plots per run: UAR vs SNR per gender with 95 % speaker-bootstrap bars; per-speaker UAR sorted, 1/2/3-best;
a confusion matrix per condition; paUAR-50/75 bars per k. Where the model predicts A/V/D: CCC vs SNR, predicted
against true value per dimension, CCC / Pearson r / MAE per condition, per gender (with the gap) and the weakest
speakers; a dimensional-only run gets these alone.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from ray_ser.evaluate.layer_weights import layer_section
from ray_ser.evaluate.tables import condition_order
from ray_ser.redaction import redact

PLOTS_DIR = "plots"
GENDER_COLOURS = {"all": "#222222", "male": "#1f77b4", "female": "#d62728"}
K_COLOURS = {1: "#1f77b4", 2: "#ff7f0e", 3: "#2ca02c"}
DIM_COLOURS = {"arousal": "#d62728", "valence": "#2ca02c", "dominance": "#9467bd"}
N_WEAKEST = 5

Frame = pl.DataFrame | pl.LazyFrame | str | Path | None


def _frame(x: Frame, name: str) -> pl.DataFrame | None:
    if x is None:
        return None
    if isinstance(x, (str, Path)):
        p = Path(x)
        p = p / name if p.is_dir() else p
        if not p.is_file():
            raise FileNotFoundError(f"{p}: not found ({name} for the report)")
        return pl.read_parquet(p)
    return x.collect() if isinstance(x, pl.LazyFrame) else x


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "x"


def _ci(row: dict | None, digits: int = 3) -> str:
    if not row or row.get("value") is None:
        return "–"
    v = f"{row['value']:.{digits}f}"
    if row.get("ci_low") is None or row.get("ci_high") is None:
        return v
    return f"{v} <span class=ci>[{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]</span>"


def _lookup(m: pl.DataFrame, group_by: str, metric: str, k: int | None = None) -> dict[tuple[str, str], dict]:
    """(condition, group) -> row dict of one metric (and k)."""
    f = m.filter(pl.col("group_by") == group_by, pl.col("metric") == metric)
    f = f.filter(pl.col("k").is_null()) if k is None else f.filter(pl.col("k") == k)
    return {(r["condition"], r["group"]): r for r in f.iter_rows(named=True)}


def _err(rows: list[dict | None]) -> np.ndarray:
    """Asymmetric error bars (2, n) from value/ci columns (0 where there is no interval)."""
    lo = [0.0 if not r or r["ci_low"] is None else max(r["value"] - r["ci_low"], 0) for r in rows]
    hi = [0.0 if not r or r["ci_high"] is None else max(r["ci_high"] - r["value"], 0) for r in rows]
    return np.array([lo, hi])


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _plot_uar_vs_snr(m: pl.DataFrame, conds: list[str], n_classes: int | None, path: Path) -> Path | None:
    overall = _lookup(m, "all", "uar", 1)
    gender = _lookup(m, "gender", "uar", 1)
    if not overall:
        return None
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    x = np.arange(len(conds))
    genders = sorted({g for (_, g) in gender})
    series = [("all", {c: overall.get((c, "all")) for c in conds})] + \
             [(g, {c: gender.get((c, g)) for c in conds}) for g in genders]
    width = 0.08
    for i, (name, rows) in enumerate(series):
        r = [rows[c] for c in conds]
        ok = [j for j, row in enumerate(r) if row and row["value"] is not None]
        off = (i - (len(series) - 1) / 2) * width
        n_spk = max((row["n_speakers"] for row in r if row), default=0)
        ax.errorbar(x[ok] + off, [r[j]["value"] for j in ok], yerr=_err([r[j] for j in ok]), marker="o",
                    capsize=4, color=GENDER_COLOURS.get(name), label=f"{name} ({n_spk} speakers)",
                    lw=2 if name == "all" else 1.5)
    if n_classes:
        ax.axhline(1 / n_classes, ls=":", color="grey", lw=1, label=f"chance (1/{n_classes})")
    ax.set_xticks(x, conds)
    ax.set_ylim(0, 1)
    ax.set_xlabel("condition (clean first, then falling SNR, then the rest)")
    ax.set_ylabel("UAR (1-best)")
    ax.set_title("UAR vs SNR per gender, 95 % speaker-bootstrap intervals")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


def _plot_speaker_uar(m: pl.DataFrame, conds: list[str], path: Path) -> Path | None:
    spk = m.filter(pl.col("group_by") == "speaker", pl.col("metric") == "uar")
    if spk.is_empty():
        return None
    ks = sorted(k for k in spk["k"].unique().to_list() if k is not None)
    cols = min(len(conds), 2)
    rows = int(np.ceil(len(conds) / cols))
    n_spk = spk["group"].n_unique()
    fig = Figure(figsize=(min(14.0, max(7.0, 0.25 * n_spk * cols + 2)), 3.2 * rows))
    for i, cond in enumerate(conds):
        ax = fig.add_subplot(rows, cols, i + 1)
        part = spk.filter(pl.col("condition") == cond)
        order = part.filter(pl.col("k") == ks[0]).sort("value", descending=True)["group"].to_list()
        x = np.arange(len(order))
        for k in ks:
            vals = dict(part.filter(pl.col("k") == k).select("group", "value").iter_rows())
            y = [vals.get(s) for s in order]
            y = [np.nan if v is None else v for v in y]
            if k == ks[0]:
                ax.bar(x, y, color=K_COLOURS.get(k, "grey"), alpha=0.8, label=f"{k}-best")
            else:
                many = n_spk > 30
                ax.plot(x, y, ls="none", marker="." if many else "o", ms=4 if many else 6,
                        color=K_COLOURS.get(k, "grey"), label=f"{k}-best")
        for thr, ls in ((0.5, "--"), (0.75, ":")):
            ax.axhline(thr, color="grey", ls=ls, lw=1)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{cond}: speakers sorted by {ks[0]}-best UAR", fontsize=10)
        if n_spk <= 40:
            ax.set_xticks(x, order, rotation=90, fontsize=7)
        else:
            ax.set_xticks([])
            ax.set_xlabel(f"{len(order)} speakers")
        ax.set_ylabel("UAR")
    handles, labels = fig.axes[0].get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda j: labels[j])
    fig.suptitle("Per-speaker UAR (dashed 0.50, dotted 0.75: the paUAR thresholds)")
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    fig.legend([handles[j] for j in order], [labels[j] for j in order], loc="lower center", ncol=len(ks),
               fontsize=9, frameon=False)
    return _save(fig, path)


def _plot_confusion(conf: pl.DataFrame, cond: str, categories: list[str], path: Path) -> Path | None:
    part = conf.filter(pl.col("condition") == cond)
    if part.is_empty():
        return None
    idx = {c: i for i, c in enumerate(categories)}
    mat = np.zeros((len(categories), len(categories)))
    for t, p, n in part.select("true", "pred", "count").iter_rows():
        mat[idx[t], idx[p]] += n
    rows = mat.sum(axis=1, keepdims=True)
    rec = np.divide(mat, rows, out=np.zeros_like(mat), where=rows > 0)
    size = 1.0 + 0.65 * len(categories)
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.add_subplot()
    im = ax.imshow(rec, vmin=0, vmax=1, cmap="Blues")
    for i in range(len(categories)):
        for j in range(len(categories)):
            if mat[i, j]:
                ax.text(j, i, f"{int(mat[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if rec[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(categories)), categories, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(categories)), categories, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{cond}: counts, colour = recall per true class", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def _plot_pauar(m: pl.DataFrame, conds: list[str], path: Path) -> Path | None:
    pa = m.filter(pl.col("group_by") == "all", pl.col("metric").is_in(["pauar50", "pauar75"]))
    if pa.is_empty():
        return None
    ks = sorted(k for k in pa["k"].unique().to_list() if k is not None)
    fig = Figure(figsize=(10, 4))
    x = np.arange(len(conds))
    width = 0.8 / len(ks)
    for i, metric in enumerate(("pauar50", "pauar75")):
        ax = fig.add_subplot(1, 2, i + 1)
        look = {(r["condition"], r["k"]): r for r in pa.filter(pl.col("metric") == metric).iter_rows(named=True)}
        for j, k in enumerate(ks):
            rows = [look.get((c, k)) for c in conds]
            vals = [r["value"] if r else np.nan for r in rows]
            ax.bar(x + (j - (len(ks) - 1) / 2) * width, vals, width, yerr=_err(rows), capsize=3,
                   color=K_COLOURS.get(k, "grey"), label=f"{k}-best")
        ax.set_xticks(x, conds)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("share of speakers")
        ax.set_title(f"paUAR-{metric[-2:]}: speakers with UAR >= 0.{metric[-2:]}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.legend(handles, labels, loc="upper center", ncol=len(ks), fontsize=9, frameon=False)
    return _save(fig, path)


def _plot_ccc(m: pl.DataFrame, conds: list[str], path: Path) -> Path | None:
    cc = m.filter(pl.col("group_by") == "all", pl.col("metric").str.starts_with("ccc_"))
    if cc.is_empty():
        return None
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    x = np.arange(len(conds))
    metrics = sorted(cc["metric"].unique().to_list())
    for i, metric in enumerate(metrics):
        look = {r["condition"]: r for r in cc.filter(pl.col("metric") == metric).iter_rows(named=True)}
        ok = [j for j, c in enumerate(conds) if c in look and look[c]["value"] is not None]
        rows = [look[conds[j]] for j in ok]
        dim = metric.removeprefix("ccc_")
        ax.errorbar(x[ok] + (i - (len(metrics) - 1) / 2) * 0.06, [r["value"] for r in rows], yerr=_err(rows),
                    marker="o", capsize=4, color=DIM_COLOURS.get(dim), label=dim)
    ax.set_xticks(x, conds)
    ax.set_ylim(min(0.0, float(cc["value"].min() or 0)), 1)
    ax.set_xlabel("condition")
    ax.set_ylabel("CCC")
    ax.set_title("CCC vs SNR, 95 % speaker-bootstrap intervals")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------------- HTML

def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _overall_table(m: pl.DataFrame, conds: list[str]) -> str:
    cols = [("uar", 1, "UAR (1-best)"), ("uar", 2, "2-best UAR"), ("uar", 3, "3-best UAR"), ("wa", None, "WA"),
            ("f1_macro", None, "macro-F1"), ("pdf_overlap", None, "PDF overlap")]
    looks = [(_lookup(m, "all", metric, k), title) for metric, k, title in cols]
    looks = [(lk, t) for lk, t in looks if lk]
    uar = _lookup(m, "all", "uar", 1)
    rows = []
    for c in conds:
        r = uar.get((c, "all"))
        rows.append([html.escape(c)] + [_ci(lk.get((c, "all"))) for lk, _ in looks]
                    + [str(r["n"]) if r else "–", str(r["n_speakers"]) if r else "–"])
    return _table(["condition"] + [t for _, t in looks] + ["utterances", "speakers"], rows)


def _gender_table(m: pl.DataFrame, conds: list[str]) -> str:
    g = _lookup(m, "gender", "uar", 1)
    gap = _lookup(m, "gender_gap", "uar", 1)
    genders = sorted({k[1] for k in g})
    if not genders:
        return "<p>No gender information in the predictions.</p>"
    rows = []
    for c in conds:
        cells = [_ci(g.get((c, x))) + (f" <span class=n>({g[(c, x)]['n_speakers']} spk)</span>"
                                       if (c, x) in g else "") for x in genders]
        gp = next((v for (cc, _), v in gap.items() if cc == c), None)
        rows.append([html.escape(c)] + cells + ([_ci(gp)] if gap else []))
    header = ["condition"] + [f"{html.escape(x)} UAR" for x in genders] + (["male − female"] if gap else [])
    return _table(header, rows)


def _pauar_table(m: pl.DataFrame, conds: list[str]) -> str:
    pa = m.filter(pl.col("group_by") == "all", pl.col("metric").is_in(["pauar50", "pauar75"]))
    ks = sorted(k for k in pa["k"].unique().to_list() if k is not None)
    look = {(r["condition"], r["metric"], r["k"]): r for r in pa.iter_rows(named=True)}
    header = ["condition"] + [f"paUAR-{t} ({k}-best)" for t in ("50", "75") for k in ks] + ["speakers"]
    rows = []
    for c in conds:
        cells = [_ci(look.get((c, f"pauar{t}", k)), 2) for t in ("50", "75") for k in ks]
        any_row = next((look[key] for key in look if key[0] == c), None)
        rows.append([html.escape(c)] + cells + [str(any_row["n_speakers"]) if any_row else "–"])
    return _table(header, rows)


def _weakest_table(m: pl.DataFrame, conds: list[str], genders: dict[str, str]) -> str:
    spk = m.filter(pl.col("group_by") == "speaker", pl.col("metric") == "uar", pl.col("k") == 1)
    if spk.is_empty():
        return "<p>No per-speaker UAR.</p>"
    wide = spk.pivot(on="condition", index="group", values="value")
    present = [c for c in conds if c in wide.columns]
    wide = wide.with_columns(pl.mean_horizontal(present).alias("_mean")).sort("_mean").head(N_WEAKEST)
    show_gender = any(genders.get(s) for s in wide["group"])
    rows = [[html.escape(r["group"])] + ([html.escape(genders.get(r["group"]) or "")] if show_gender else [])
            + ["–" if r[c] is None else f"{r[c]:.3f}" for c in present] + [f"{r['_mean']:.3f}"]
            for r in wide.iter_rows(named=True)]
    header = ["speaker"] + (["gender"] if show_gender else []) + [f"UAR {html.escape(c)}" for c in present]
    return _table(header + ["mean"], rows)


def _race_table(m: pl.DataFrame, conds: list[str]) -> str:
    """Per condition: the model's UAR, the probe baseline's and their difference with its paired interval and the
    verdict, then the per-fold differences; empty when the metrics have no race rows."""
    from ray_ser.evaluate.race import DIFFERENCE, race_summary

    s = race_summary(m)
    if s.is_empty():
        return ""
    look = {r["condition"]: r for r in s.iter_rows(named=True)}
    rows = [[html.escape(c), f"{look[c]['uar']:.3f}" if look[c]["uar"] is not None else "–",
             _ci({"value": look[c]["probe_uar"], **_probe_ci(m, c)}),
             _ci({"value": look[c]["difference"], "ci_low": look[c]["ci_low"], "ci_high": look[c]["ci_high"]}),
             html.escape(look[c]["verdict"])] for c in conds if c in look]
    out = _table(["condition", "model UAR", "probe UAR", "model − probe (paired)", "verdict"], rows)
    per_fold = m.filter(pl.col("group_by") == "fold", pl.col("metric") == DIFFERENCE)
    if per_fold.height:
        wide = per_fold.with_columns(pl.col("group").cast(pl.Int64)).pivot(on="condition", index="group",
                                                                           values="value").sort("group")
        present = [c for c in conds if c in wide.columns]
        out += _table(["fold"] + [f"model − probe {html.escape(c)}" for c in present],
                      [[str(r["group"])] + ["–" if r[c] is None else f"{r[c]:+.3f}" for c in present]
                       for r in wide.iter_rows(named=True)])
    return out


def _probe_ci(m: pl.DataFrame, cond: str) -> dict:
    from ray_ser.evaluate.race import PROBE

    r = m.filter(pl.col("group_by") == "all", pl.col("metric") == PROBE, pl.col("condition") == cond)
    return {"ci_low": r["ci_low"][0], "ci_high": r["ci_high"][0]} if r.height else {"ci_low": None, "ci_high": None}


def _dims_of(m: pl.DataFrame) -> list[str]:
    """The dimensions the metrics score (``ccc_<dimension>`` rows), in A/V/D order."""
    present = set(m.filter(pl.col("metric").str.starts_with("ccc_"))["metric"].unique().to_list())
    return [d for d in DIM_COLOURS if f"ccc_{d}" in present]


def _ccc_table(m: pl.DataFrame, conds: list[str]) -> str:
    dims = _dims_of(m)
    cols = [(f"{name}_{d}", f"{title} {d}") for d in dims
            for name, title in (("ccc", "CCC"), ("pearson", "Pearson r"), ("mae", "MAE"))]
    looks = [(_lookup(m, "all", metric), title) for metric, title in cols]
    looks = [(lk, t) for lk, t in looks if lk]
    first = _lookup(m, "all", f"ccc_{dims[0]}") if dims else {}
    rows = [[html.escape(c)] + [_ci(lk.get((c, "all"))) for lk, _ in looks]
            + [str(first[(c, "all")]["n"]) if (c, "all") in first else "–",
               str(first[(c, "all")]["n_speakers"]) if (c, "all") in first else "–"] for c in conds]
    return _table(["condition"] + [t for _, t in looks] + ["utterances", "speakers"], rows)


def _ccc_gender_table(m: pl.DataFrame, conds: list[str]) -> str:
    dims = _dims_of(m)
    rows, header = [], ["condition"]
    looks = []
    for d in dims:
        g = _lookup(m, "gender", f"ccc_{d}")
        gap = _lookup(m, "gender_gap", f"ccc_{d}")
        genders = sorted({k[1] for k in g})
        looks.append((d, g, gap, genders))
        header += [f"CCC {d} {html.escape(x)}" for x in genders] + ([f"{d} male − female"] if gap else [])
    if not any(genders for *_, genders in looks):
        return "<p>No gender information in the predictions.</p>"
    for c in conds:
        cells = [html.escape(c)]
        for d, g, gap, genders in looks:
            cells += [_ci(g.get((c, x))) + (f" <span class=n>({g[(c, x)]['n_speakers']} spk)</span>"
                                            if (c, x) in g else "") for x in genders]
            if gap:
                cells.append(_ci(next((v for (cc, _), v in gap.items() if cc == c), None)))
        rows.append(cells)
    return _table(header, rows)


def _ccc_speaker_table(m: pl.DataFrame, conds: list[str], genders: dict[str, str]) -> str:
    """The weakest speakers by their mean CCC (over dimensions and conditions)."""
    dims = _dims_of(m)
    spk = m.filter(pl.col("group_by") == "speaker", pl.col("metric").is_in([f"ccc_{d}" for d in dims]))
    if spk.is_empty():
        return "<p>No per-speaker CCC.</p>"
    wide = (spk.filter(pl.col("condition") == conds[0]).pivot(on="metric", index="group", values="value"))
    present = [f"ccc_{d}" for d in dims if f"ccc_{d}" in wide.columns]
    wide = wide.with_columns(pl.mean_horizontal(present).alias("_mean")).sort("_mean", nulls_last=True)
    n_all = wide.height
    wide = wide.head(N_WEAKEST)
    show_gender = any(genders.get(s) for s in wide["group"])
    rows = [[html.escape(r["group"])] + ([html.escape(genders.get(r["group"]) or "")] if show_gender else [])
            + ["–" if r[c] is None else f"{r[c]:.3f}" for c in present]
            for r in wide.iter_rows(named=True)]
    header = ["speaker"] + (["gender"] if show_gender else []) + [f"CCC {c.removeprefix('ccc_')}" for c in present]
    return (f"<p class=note>{html.escape(conds[0])}, the {len(rows)} lowest of {n_all} speakers by their mean CCC "
            "(a speaker's CCC also reflects how much its own values spread).</p>" + _table(header, rows))


def _plot_scatter(preds: pl.DataFrame | None, run: str, conds: list[str], dims: list[str], path: Path) -> Path | None:
    """Predicted against true value per dimension (the first condition, clean when there is one)."""
    if preds is None or not dims or "run" not in preds.columns:
        return None
    part = preds.filter((pl.col("run") == run) & (pl.col("condition") == conds[0]))
    dims = [d for d in dims if d in part.columns and f"pred_{d}" in part.columns]
    if part.is_empty() or not dims:
        return None
    fig = Figure(figsize=(4.2 * len(dims), 4.0))
    for i, d in enumerate(dims):
        ax = fig.add_subplot(1, len(dims), i + 1)
        xy = part.select(pl.col(d).cast(pl.Float64), pl.col(f"pred_{d}").cast(pl.Float64)).drop_nulls().drop_nans()
        x, y = xy[d].to_numpy(), xy[f"pred_{d}"].to_numpy()
        jitter = np.random.default_rng(0).normal(0, 0.02 * (np.ptp(x) or 1.0), len(x)) if len(np.unique(x)) < 12 else 0
        ax.scatter(x + jitter, y, s=6, alpha=0.35, color=DIM_COLOURS.get(d, "grey"))
        if len(x):
            lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
            ax.plot([lo, hi], [lo, hi], ls=":", color="grey", lw=1)
            for v in np.unique(x) if len(np.unique(x)) < 12 else []:
                ax.plot([v], [np.mean(y[x == v])], marker="_", ms=18, mew=2, color="black")
        ax.set_xlabel(f"true {d}")
        ax.set_ylabel(f"predicted {d}")
        ax.set_title(f"{conds[0]}: {d} ({len(x)} utterances)", fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _calibration_table(m: pl.DataFrame, conds: list[str]) -> str:
    looks = [(_lookup(m, "all", metric), title) for metric, title in
             (("ece_uncalibrated", "ECE before temperature"), ("ece", "ECE (15 bins)"), ("brier", "Brier"),
              ("nll_uncalibrated", "NLL before temperature"), ("nll", "NLL"))]
    looks = [(lk, t) for lk, t in looks if lk]
    gender = _lookup(m, "gender", "ece")
    genders = sorted({k[1] for k in gender})
    rows = [[html.escape(c)] + [_ci(lk.get((c, "all"))) for lk, _ in looks] + [_ci(gender.get((c, g))) for g in genders]
            for c in conds]
    return _table(["condition"] + [t for _, t in looks] + [f"ECE {html.escape(g)}" for g in genders], rows)


def _plot_reliability(preds: pl.DataFrame | None, run: str, conds: list[str], cats: list[str] | None,
                      path: Path) -> Path | None:
    """Reliability diagram per condition: accuracy of the top class against its mean probability in 15 bins."""
    from ray_ser.metrics import ECE_BINS, reliability
    from ray_ser.evaluate.tables import list_matrix, true_index

    if preds is None or not cats or "probs" not in preds.columns or "run" not in preds.columns:
        return None
    fig = Figure(figsize=(3.6 * len(conds), 3.6))
    drawn = 0
    for i, c in enumerate(conds):
        part = preds.filter((pl.col("run") == run) & (pl.col("condition") == c))
        if part.is_empty():
            continue
        y, probs = true_index(part, cats), list_matrix(part, "probs", len(cats))
        ok = (y >= 0) & np.isfinite(probs).all(axis=1)
        if not ok.any():
            continue
        n, conf, acc = reliability(y[ok], probs[ok])
        ax = fig.add_subplot(1, len(conds), i + 1)
        centres = (np.arange(ECE_BINS) + 0.5) / ECE_BINS
        ax.bar(centres, np.nan_to_num(acc), width=1 / ECE_BINS, edgecolor="black", lw=0.5, alpha=0.7, label="accuracy")
        ax.plot(conf, acc, "o", ms=3, color="black", label="mean probability")
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("top-class probability")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{c} ({int(n.sum())} utterances)", fontsize=10)
        drawn += 1
    if not drawn:
        return None
    fig.tight_layout()
    return _save(fig, path)


CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1250px;
       color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.ci { color: #777; font-size: 0.88em; } .n { color: #999; font-size: 0.85em; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; } .grid img { max-width: 600px; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }
.note { color: #555; font-size: 0.92em; }
"""


def write_report(out_dir: str | Path, predictions: Frame, metrics: Frame, confusion: Frame,
                 run_config: dict[str, Any] | None = None, categories: list[str] | None = None,
                 layers: dict[str, Any] | None = None) -> Path:
    """Write the plots (``out_dir/plots/*.png``) and ``out_dir/report.html`` from the predictions, metrics and
    confusion tables (frames or paths); returns the HTML's path. ``predictions`` (optional) gives speakers'
    genders for the weakest-speaker table; ``categories`` default to the confusion table's order; ``layers``
    (:func:`ray_ser.evaluate.layer_weights.layer_info`): the learned layer mix beside the layer rankings."""
    out = Path(out_dir)
    m = _frame(metrics, "metrics.parquet")
    if m is None or m.is_empty():
        raise ValueError(f"{out}: no metrics to report")
    conf = _frame(confusion, "confusion.parquet")
    preds = _frame(predictions, "predictions.parquet")
    genders: dict[str, str] = {}
    if preds is not None and {"speaker", "gender"} <= set(preds.columns):
        genders = dict(preds.select("speaker", "gender").unique("speaker").iter_rows())
    runs = sorted(m["run"].unique().to_list())
    sections = []
    for run in runs:
        mr = m.filter(pl.col("run") == run)
        conds = condition_order(mr["condition"].unique().to_list())
        cr = conf.filter(pl.col("run") == run) if conf is not None else None
        cats = categories or (list(dict.fromkeys(cr["true"].to_list())) if cr is not None and cr.height else None)
        prefix = f"{_slug(run)}__" if len(runs) > 1 else ""
        pdir = out / PLOTS_DIR

        def rel(p: Path | None) -> str | None:
            return None if p is None else p.relative_to(out).as_posix()

        imgs = {
            "uar": rel(_plot_uar_vs_snr(mr, conds, len(cats) if cats else None, pdir / f"{prefix}uar_vs_snr.png")),
            "speakers": rel(_plot_speaker_uar(mr, conds, pdir / f"{prefix}speaker_uar.png")),
            "pauar": rel(_plot_pauar(mr, conds, pdir / f"{prefix}pauar.png")),
            "ccc": rel(_plot_ccc(mr, conds, pdir / f"{prefix}ccc_vs_snr.png")),
            "scatter": rel(_plot_scatter(preds, run, conds, _dims_of(mr), pdir / f"{prefix}dims_scatter.png")),
            "reliability": rel(_plot_reliability(preds, run, conds, cats, pdir / f"{prefix}reliability.png")),
        }
        confs = [(c, rel(_plot_confusion(cr, c, cats, pdir / f"{prefix}confusion_{_slug(c)}.png")))
                 for c in conds] if cr is not None and cats else []

        def img(key: str, alt: str) -> str:
            return f'<img src="{html.escape(imgs[key])}" alt="{html.escape(alt)}">' if imgs[key] else ""

        has_ccc = bool(_dims_of(mr))
        has_uar = bool(_lookup(mr, "all", "uar", 1))
        race = _race_table(mr, conds)
        race = "" if not race else f"""
<h3>Against the probe baseline (the same folds and utterances; paired speaker-bootstrap interval of the difference:
each resample draws the same speakers for both)</h3>
{race}
"""
        dimensional = "" if not has_ccc else f"""
<h3>Dimensional: CCC, Pearson r and MAE per condition</h3>
{_ccc_table(mr, conds)}
{img("ccc", "CCC vs SNR")}
{img("scatter", "predicted against true value per dimension")}
<h3>Per gender, per condition (CCC)</h3>
{_ccc_gender_table(mr, conds)}
<h3>Weakest speakers (CCC)</h3>
{_ccc_speaker_table(mr, conds, genders)}
"""
        head = f"""
<h2>Run {html.escape(run)}</h2>
<p class=note>Conditions: {', '.join(html.escape(c) for c in conds)}. Intervals are 95 % speaker-level
bootstrap intervals: speakers are resampled with replacement and the metric is recomputed on their pooled
utterances; a group of one speaker has none.</p>
"""
        if not has_uar:  # a dimensional-only run: no categories to score
            sections.append(head + dimensional)
            continue
        sections.append(head + f"""
<h3>Overall, per condition</h3>
{_overall_table(mr, conds)}
{img("uar", "UAR vs SNR per gender")}
{race}<h3>Per gender, per condition (UAR, 1-best)</h3>
{_gender_table(mr, conds)}
<h3>Speaker level: paUAR (share of speakers with UAR at least 0.50 / 0.75)</h3>
{_pauar_table(mr, conds)}
{img("pauar", "paUAR-50/75 per k")}
<h3>Weakest speakers (lowest mean 1-best UAR over the conditions)</h3>
{_weakest_table(mr, conds, genders)}
{img("speakers", "per-speaker UAR sorted")}
<h3>Calibration of the probabilities (ECE with 15 bins, Brier score, NLL; lower is better; "before temperature":
the probabilities before the temperature fitted on each fold's validation speakers)</h3>
{_calibration_table(mr, conds)}
{img("reliability", "reliability diagram per condition")}
{dimensional}
<h3>Confusion matrices</h3>
<div class=grid>{''.join(f'<img src="{html.escape(p)}" alt="confusion {html.escape(c)}">' for c, p in confs if p)}</div>
""")
    config = json.dumps(redact(run_config or {}), indent=2, sort_keys=True, default=str)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ray_ser evaluation: {html.escape(', '.join(runs))}</title>
<style>{CSS}</style></head>
<body>
<h1>Evaluation report</h1>
<p class=note>Run(s): {html.escape(', '.join(runs))}. Tables: metrics.parquet, confusion.parquet and
predictions.parquet next to this page (query them with <code>ray_ser.evaluate.results</code>).</p>
{''.join(sections)}
{layer_section(layers, out, f"{PLOTS_DIR}/layer_weights.png")}
<h2>Run configuration</h2>
<pre>{html.escape(config)}</pre>
</body></html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
