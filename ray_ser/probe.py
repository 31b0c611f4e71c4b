"""Does the saliency-chosen layer match the empirically best one?  A quick linear probe per layer.

For every layer: StandardScaler + LogisticRegression on the mean vectors, trained on the training
folds of the same speaker-independent folds the saliency uses (:func:`ray_ser.saliency_store.assign_folds`),
predicting the utterance's categorical ``label``.  The layer's UAR is the balanced accuracy of the
pooled out-of-fold predictions (every utterance predicted once, by the fold model that never saw its
speaker); the per-fold UARs are reported too.  :func:`spearman` compares a layer score with it, and
:func:`plot_layers` draws both against the layer index.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import polars as pl

from ray_ser.saliency_store import labelled_rows, layer_matrix, layers_of
from ray_ser.store import Store, as_store

MAX_ITER = 2000


def probe_layer(H: np.ndarray, labels: Sequence[str], fold: np.ndarray, C: float = 1.0) -> tuple[float, dict[int, float]]:
    """(UAR of the pooled out-of-fold predictions, {fold: UAR on that fold}) for one layer matrix."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(labels, dtype=object)
    pred = np.empty(len(y), dtype=object)
    per_fold = {}
    for f in sorted(int(x) for x in np.unique(fold)):
        train, test = fold != f, fold == f
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITER, C=C))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence on tiny folds; classes absent from a test fold
            clf.fit(H[train], y[train])
            pred[test] = clf.predict(H[test])
            per_fold[f] = float(balanced_accuracy_score(y[test], pred[test]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(balanced_accuracy_score(y, pred)), per_fold


def layer_probe(store: str | Store, model: str, condition: str = "clean", folds: str | int = "auto",
                seed: int = 0, layers: Sequence[int] | None = None, C: float = 1.0) -> pl.DataFrame:
    """One row per layer: ``layer``, ``uar`` (pooled out-of-fold balanced accuracy), ``fold_uar``
    (list, per fold in fold order), ``mean_fold_uar``.  The utterances and folds are the saliency's
    (:func:`ray_ser.saliency_store.labelled_rows`, same ``folds`` and ``seed``) less those without a label."""
    store = as_store(store)
    layers = list(layers) if layers is not None else layers_of(store, model, condition)
    # the saliency's rows and folds, less the utterances without a categorical label
    rows, _, _, fold, _ = labelled_rows(store, model, condition, folds, seed)
    has_label = rows["label"].is_not_null().to_numpy()
    rows, fold = rows.filter(pl.Series(has_label)), fold[has_label]
    if rows.height == 0:
        raise ValueError(f"no labelled utterances of {model}/{condition} to probe")
    utt_ids, labels = rows["utt_id"].to_list(), rows["label"].to_list()
    out = []
    for layer in layers:
        uar, per_fold = probe_layer(layer_matrix(store, model, condition, layer, utt_ids), labels, fold, C)
        fu = [per_fold[f] for f in sorted(per_fold)]
        out.append({"layer": layer, "uar": uar, "fold_uar": fu, "mean_fold_uar": float(np.mean(fu))})
    return pl.DataFrame(out, schema={"layer": pl.Int32, "uar": pl.Float64, "fold_uar": pl.List(pl.Float64),
                                     "mean_fold_uar": pl.Float64})


def _by_layer(values) -> dict[int, float]:
    if isinstance(values, pl.DataFrame):
        col = "uar" if "uar" in values.columns else "layer_score"
        return dict(zip(values["layer"].to_list(), values[col].to_list()))
    if isinstance(values, Mapping):
        return {int(k): float(v) for k, v in values.items()}
    return dict(enumerate(float(v) for v in values))


def spearman(layer_scores, probe_uar) -> float:
    """Spearman rank correlation between a layer score and the probe UAR, over the layers both have.

    Each argument is a sequence indexed by layer, a {layer: value} mapping, or a frame with ``layer``
    and ``layer_score`` / ``uar``.  NaN when either side is constant or fewer than 2 layers match.
    """
    from scipy.stats import spearmanr

    a, b = _by_layer(layer_scores), _by_layer(probe_uar)
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return float("nan")
    x, y = [a[k] for k in common], [b[k] for k in common]
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def plot_layers(ranking: pl.DataFrame, probe: pl.DataFrame, path_png: str | Path, title: str | None = None,
                rho: float | None = None) -> Path:
    """Probe UAR (left axis) and layer saliency score (right axis) against the layer index, as a PNG.

    ``ranking`` has ``layer`` and ``layer_score`` (e.g. :func:`ray_ser.saliency_store.mean_over_folds`),
    ``probe`` has ``layer`` and ``uar``; the best layer of each is marked.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    r = ranking.sort("layer")
    p = probe.sort("layer")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(p["layer"], p["uar"], "o-", color="tab:blue", label="probe UAR, out-of-fold")
    if "fold_uar" in p.columns:
        sd = np.array([np.std(v) for v in p["fold_uar"].to_list()])
        mu = p["mean_fold_uar"].to_numpy()
        ax.fill_between(p["layer"].to_numpy(), mu - sd, mu + sd, color="tab:blue", alpha=0.12,
                        label="per-fold UAR, mean ± sd")
    best_p = int(p["layer"][int(np.argmax(p["uar"].to_numpy()))])
    ax.axvline(best_p, color="tab:blue", ls=":", lw=1)
    ax.set_xlabel("layer")
    ax.set_ylabel("probe UAR", color="tab:blue")
    ax.tick_params(axis="y", labelcolor="tab:blue")
    ax.set_xticks(r["layer"].to_list())
    ax2 = ax.twinx()
    ax2.plot(r["layer"], r["layer_score"], "s--", color="tab:red", label="saliency, mean top-10% CCS")
    best_s = int(r["layer"][int(np.argmax(r["layer_score"].to_numpy()))])
    ax2.axvline(best_s, color="tab:red", ls=":", lw=1)
    ax2.set_ylabel("layer saliency score", color="tab:red")
    ax2.tick_params(axis="y", labelcolor="tab:red")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    fig.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower center", ncol=3, fontsize=8, frameon=False)
    head = (title or "layer saliency vs probe UAR") + f": best {best_p} (probe), {best_s} (saliency)"
    if rho is not None:
        head += f", Spearman ρ = {rho:.2f}"
    ax.set_title(head, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path
