"""The learned layer mix beside the store's layer rankings: each fold's softmax weights (``layer_weights.parquet``
of a run trained with ``train.layer_mix: learned``) against what the saliency and ``lda_inner`` criteria said of
the same layers on the same folds' training speakers, as a plot and a table of the report."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from ray_ser.storage import run_path
from ray_ser.store import Store

WEIGHTS_FILE = "layer_weights.parquet"


def layer_info(run_dir: str | Path, store: Store | None = None, model: str | None = None) -> dict[str, Any] | None:
    """{"weights": (fold, layer, weight), "ranking": (criterion, layer, layer_score, layer_rank)} of a run folder:
    its learned weights and the store's layer rankings (each criterion's score averaged over the run's folds, made
    with the run's fold assignment, then ranked, 0 = best); None when the run learned no mix. ``store``/``model``
    default to the run's own (a call without ``store`` opens the store the run recorded)."""
    run = run_path(run_dir)
    if not (run / WEIGHTS_FILE).exists():
        return None
    weights = pl.read_parquet((run / WEIGHTS_FILE).read_bytes())
    meta = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    train = meta.get("config") or {}
    if store is None and train.get("store"):
        store = Store(train["store"])
    return {"weights": weights, "ranking": store_ranking(store, model or train.get("model"),
                                                         meta.get("fold_id"), weights["fold"].unique().to_list())}


def store_ranking(store: Store | None, model: str | None, fold_id: str | None, folds: list[int]) -> pl.DataFrame:
    """Each stored criterion's layer score averaged over ``folds`` (those the fold assignment ``fold_id`` made; the
    final model's fold -1 is every speaker) and its rank (0 = best); empty when the store has no ranking."""
    from ray_ser.analysis.saliency_store import read_layer_ranking

    empty = pl.DataFrame(schema={"criterion": pl.Utf8, "layer": pl.Int32, "layer_score": pl.Float64,
                                 "layer_rank": pl.Int32})
    if store is None or not model:
        return empty
    try:
        ranks = read_layer_ranking(store, model)
    except (KeyError, ValueError, OSError):
        return empty
    if fold_id is not None:
        ranks = ranks.filter(pl.col("fold_id") == fold_id)
    ranks = ranks.filter(pl.col("fold").is_in(folds))
    if ranks.is_empty():
        return empty
    mean = ranks.group_by(["criterion", "layer"]).agg(pl.col("layer_score").mean()).sort(
        ["criterion", "layer_score", "layer"], descending=[False, True, False])
    return mean.with_columns(pl.int_range(pl.len()).over("criterion").cast(pl.Int32).alias("layer_rank")).select(
        pl.col("criterion"), pl.col("layer").cast(pl.Int32), "layer_score", "layer_rank").sort(["criterion", "layer"])


def plot_layer_weights(info: dict[str, Any], path: Path) -> Path:
    """Left: each layer's learned weight (bar: mean over folds, dots: each fold); right: each stored criterion's
    layer score over the same folds, scaled to [0, 1] (1 = its best layer), so the shapes compare."""
    w, ranking = info["weights"], info["ranking"]
    layers = sorted(w["layer"].unique().to_list())
    fig = Figure(figsize=(10, 3.6))
    left, right = fig.subplots(1, 2, sharex=True)
    mean = w.group_by("layer").agg(pl.col("weight").mean()).sort("layer")
    left.bar(mean["layer"].to_list(), mean["weight"].to_list(), color="#9ecae1", label="mean over folds")
    left.scatter(w["layer"].to_list(), w["weight"].to_list(), s=10, color="#08519c", label="a fold", zorder=3)
    left.axhline(1 / len(layers), color="#888888", lw=0.8, ls="--", label="uniform")
    left.set(xlabel="layer", ylabel="learned weight (softmax)", title="layer mix weights")
    left.legend(fontsize=7)
    for criterion in ranking["criterion"].unique().sort().to_list():
        r = ranking.filter(pl.col("criterion") == criterion).sort("layer")
        s = r["layer_score"].to_numpy()
        span = float(np.ptp(s)) or 1.0
        right.plot(r["layer"].to_list(), (s - s.min()) / span, marker="o", ms=3, label=criterion)
    right.plot(mean["layer"].to_list(), mean["weight"].to_numpy() / max(float(mean["weight"].max()), 1e-12),
               color="#08519c", lw=2, label="learned weight (/ max)")
    right.set(xlabel="layer", ylabel="scaled score", title="against the stored layer rankings")
    right.set_xticks(layers)
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def layer_table(info: dict[str, Any]) -> str:
    """HTML rows: layer, mean weight (min-max over folds), its rank by weight, its rank under each criterion."""
    w, ranking = info["weights"], info["ranking"]
    stats = w.group_by("layer").agg(pl.col("weight").mean().alias("mean"), pl.col("weight").min().alias("lo"),
                                    pl.col("weight").max().alias("hi")).sort("mean", descending=True)
    by_weight = {l: i for i, l in enumerate(stats["layer"].to_list())}
    criteria = ranking["criterion"].unique().sort().to_list()
    rank = {(c, l): r for c, l, r in ranking.select("criterion", "layer", "layer_rank").iter_rows()}
    head = ["layer", "learned weight (folds' min-max)", "rank by weight", *[f"rank by {c}" for c in criteria]]
    rows = []
    for layer, mean, lo, hi in stats.sort("layer").select("layer", "mean", "lo", "hi").iter_rows():
        rows.append([str(layer), f"{mean:.3f} <span class=ci>[{lo:.3f}, {hi:.3f}]</span>", str(by_weight[layer]),
                     *[str(rank.get((c, layer), "–")) for c in criteria]])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>{body}</table>"


def layer_section(info: dict[str, Any] | None, out: Path, image: str) -> str:
    """The report's section on the learned layer mix (empty without one): ``image`` is the plot's path under
    ``out``."""
    if not info:
        return ""
    plot_layer_weights(info, out / image)
    return f"""
<h2>Learned layer mix</h2>
<p class=note>Each fold's softmax weights of the layer mix (layer_weights.parquet), beside the store's layer rankings
on the same folds' training speakers (rank 0 = best); the folds' weights sum to 1.</p>
{layer_table(info)}
<img src="{html.escape(image)}" alt="learned layer weights against the layer rankings">
"""
