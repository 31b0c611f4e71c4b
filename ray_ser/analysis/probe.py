"""Does the saliency-chosen layer match the empirically best one?  A quick linear probe per layer.

For every layer: StandardScaler + LogisticRegression on the mean vectors, trained on the training
folds of the same speaker-independent folds the saliency uses (:func:`ray_ser.analysis.saliency_store.assign_folds`),
predicting the utterance's categorical ``label``.  The layer's UAR is the balanced accuracy of the
pooled out-of-fold predictions (every utterance predicted once, by the fold model that never saw its
speaker); the per-fold UARs are reported too.  :func:`spearman` compares a layer score with it, and
:func:`plot_layers` draws both against the layer index.

:func:`layer_set_probe` is the baseline to beat: the same probe on several layers' mean vectors side by
side, its regularisation chosen per outer fold by a CV over that fold's training speakers only.  Optionally it
fuses several per-utterance read-outs of the mean vectors (:data:`READOUTS`): one probe each, probabilities
averaged, so no read-out is picked on anyone's scores.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import polars as pl

from ray_ser.analysis.saliency_store import layer_matrix, layers_of, usable_rows
from ray_ser.storage import is_uri, write_whole
from ray_ser.store.core import Store, as_store

MAX_ITER = 2000
# the inverse L2 strengths a nested probe chooses among, strongest first (ties go to the stronger one)
DEFAULT_CS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
# per-utterance read-outs of one layer's mean vector, applied before the (training-fold) scaler
READOUTS = ("none", "l2", "ssqrt")


def readout(H: np.ndarray, kind: str) -> np.ndarray:
    """One layer's mean vectors (N, D) as the probe reads them: ``none`` as they are; ``l2`` each row scaled to
    unit length (the utterance's overall activation scale removed); ``ssqrt`` the signed square root of every
    value (power normalisation: heavy-tailed dimensions compressed).  Each row depends on that row alone, so the
    transform is fitted on no one."""
    if kind == "none":
        return np.asarray(H)  # unchanged, in its own dtype: the plain probe's input
    H = np.asarray(H, dtype=np.float64)
    if kind == "l2":
        norm = np.linalg.norm(H, axis=1, keepdims=True)
        return H / np.where(norm > 0, norm, 1.0)
    if kind == "ssqrt":
        return np.sign(H) * np.sqrt(np.abs(H))
    raise ValueError(f"unknown read-out {kind!r}; expected one of {READOUTS}")


def _uar(y_true, y_pred) -> float:
    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes absent from a test fold
        return float(balanced_accuracy_score(y_true, y_pred))


def one_thread():
    """One BLAS/OpenMP thread around a loop of fits: they are small, and with numpy's and scipy's thread pools both
    spinning on a 2-core machine one fit of 1,536 dimensions took 7x longer than on one thread. (Entering costs
    ~4 ms, so it wraps loops, not single fits.)"""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def fit_probe(H: np.ndarray, y: np.ndarray, train: np.ndarray, C: float):
    """StandardScaler + LogisticRegression fitted on the ``train`` rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITER, C=C))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence on tiny folds
        return clf.fit(H[train], y[train])


def corpus_scalers(H: np.ndarray, corpora: np.ndarray, rows: np.ndarray) -> dict:
    """{corpus: a StandardScaler fitted on that corpus's ``rows`` of ``H``}: the per-corpus scaler of a probe, each
    corpus standardised by its own training statistics, as a ``scaler: per-corpus`` model standardises its input."""
    from sklearn.preprocessing import StandardScaler

    return {c: StandardScaler().fit(H[rows & (corpora == c)]) for c in sorted(set(corpora[rows].tolist()))}


def scale_by_corpus(H: np.ndarray, corpora: np.ndarray, scalers: Mapping) -> np.ndarray:
    """``H`` with each row standardised by its corpus's scaler; a corpus without one (no training row) by its own
    rows' statistics, as a zero-shot corpus is (no labels used)."""
    from sklearn.preprocessing import StandardScaler

    out = np.empty(H.shape, dtype=np.float64)
    for c in set(corpora.tolist()):
        at = corpora == c
        out[at] = (scalers[c] if c in scalers else StandardScaler().fit(H[at])).transform(H[at])
    return out


def _fit_predict(H: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, C: float) -> np.ndarray:
    """The probe fitted on the ``train`` rows, predicting the ``test`` rows."""
    return fit_probe(H, y, train, C).predict(H[test])


def probe_layer(H: np.ndarray, labels: Sequence[str], fold: np.ndarray, C: float = 1.0) -> tuple[float, dict[int, float]]:
    """(UAR of the pooled out-of-fold predictions, {fold: UAR on that fold}) for one layer matrix."""
    y = np.asarray(labels, dtype=object)
    pred = np.empty(len(y), dtype=object)
    per_fold = {}
    with one_thread():
        for f in sorted(int(x) for x in np.unique(fold)):
            train, test = fold != f, fold == f
            pred[test] = _fit_predict(H, y, train, test, C)
            per_fold[f] = _uar(y[test], pred[test])
    return _uar(y, pred), per_fold


def inner_c(H: np.ndarray, labels: Sequence[str], fold: np.ndarray, train: np.ndarray,
            Cs: Sequence[float] = DEFAULT_CS) -> tuple[float, dict[float, float]]:
    """The C of ``Cs`` whose probe scores best in a CV over the ``train`` rows alone, and every C's score.

    The inner folds are the training rows' own fold ids (one speaker each under LOSO, else groups of
    speakers), so the rows outside ``train`` never enter the choice; the score is the mean per-fold UAR.
    Ties go to the first C in ``Cs`` (the strongest regularisation in the default order).
    """
    y = np.asarray(labels, dtype=object)
    train = np.asarray(train, dtype=bool)
    inner = sorted(int(x) for x in np.unique(fold[train]))
    if len(inner) < 2:
        raise ValueError(f"choosing C needs at least 2 folds among the training rows (so 3 in all), got {len(inner)}")
    scores = {}
    with one_thread():
        for C in Cs:
            per = [_uar(y[train & (fold == v)], _fit_predict(H, y, train & (fold != v), train & (fold == v), C))
                   for v in inner]
            scores[float(C)] = float(np.mean(per))
    return max(scores, key=scores.get), scores  # max keeps the first of equal scores


def probe_fused(H: Mapping[str, np.ndarray | Mapping[int, np.ndarray]], labels: Sequence[str], fold: np.ndarray,
                Cs: Sequence[float] = DEFAULT_CS) -> tuple[float, dict[int, float], dict[int, dict[str, float]]]:
    """Nested probes on several views of the same utterances, fused: per outer fold, each view (e.g. a read-out)
    gets its own C by :func:`inner_c` on that fold's training speakers and is refitted on all of them; the test
    rows take the class of the views' mean probability.  (pooled out-of-fold UAR, {fold: UAR},
    {fold: {view: chosen C}}).  One view is the plain nested probe.

    ``H`` maps a view's name to one matrix, or to {outer fold: its matrix} when each fold reads its own layers."""
    if not H:
        raise ValueError("probe_fused needs at least one view")
    y = np.asarray(labels, dtype=object)
    pred = np.empty(len(y), dtype=object)
    per_fold, chosen = {}, {}
    with one_thread():
        for f in sorted(int(x) for x in np.unique(fold)):
            train, test = fold != f, fold == f
            chosen[f], proba, classes = {}, [], None
            for name, view in H.items():
                Hf = view[f] if isinstance(view, Mapping) else view
                chosen[f][name], _ = inner_c(Hf, y, fold, train, Cs)
                clf = fit_probe(Hf, y, train, chosen[f][name])
                classes = clf.classes_ if classes is None else classes  # the same training rows: the same classes
                proba.append(clf.predict_proba(Hf[test]))
            pred[test] = classes[np.mean(proba, axis=0).argmax(axis=1)]
            per_fold[f] = _uar(y[test], pred[test])
    return _uar(y, pred), per_fold, chosen


def probe_nested(H: np.ndarray | Mapping[int, np.ndarray], labels: Sequence[str], fold: np.ndarray,
                 Cs: Sequence[float] = DEFAULT_CS) -> tuple[float, dict[int, float], dict[int, float]]:
    """The probe with its C chosen per outer fold on that fold's training speakers (:func:`inner_c`), then refit
    on all of them: (pooled out-of-fold UAR, {fold: UAR}, {fold: chosen C}). Speaker-independent end to end.

    ``H`` is one matrix, or {outer fold: its matrix} when each fold reads its own features (its own layers)."""
    uar, per_fold, chosen = probe_fused({"H": H}, labels, fold, Cs)
    return uar, per_fold, {f: c["H"] for f, c in chosen.items()}


def probe_rows(store: Store, model: str, condition: str, folds: str | int, seed: int) -> tuple[pl.DataFrame, np.ndarray]:
    """(rows, fold per row): the saliency's utterances and folds (:func:`ray_ser.analysis.saliency_store.usable_rows`),
    less those without a categorical label."""
    rows, fold, _ = usable_rows(store, model, condition, folds, seed)
    has_label = rows["label"].is_not_null().to_numpy()
    rows, fold = rows.filter(pl.Series(has_label)), fold[has_label]
    if rows.height == 0:
        raise ValueError(f"no labelled utterances of {model}/{condition} to probe")
    return rows, fold


def layer_probe(store: str | Store, model: str, condition: str = "clean", folds: str | int = "auto",
                seed: int = 0, layers: Sequence[int] | None = None, C: float = 1.0) -> pl.DataFrame:
    """One row per layer: ``layer``, ``uar`` (pooled out-of-fold balanced accuracy), ``fold_uar``
    (list, per fold in fold order), ``mean_fold_uar``.  The utterances and folds are the saliency's
    (:func:`ray_ser.analysis.saliency_store.usable_rows`, same ``folds`` and ``seed``) less those without a label."""
    store = as_store(store)
    layers = list(layers) if layers is not None else layers_of(store, model, condition)
    rows, fold = probe_rows(store, model, condition, folds, seed)
    utt_ids, labels = rows["utt_id"].to_list(), rows["label"].to_list()
    out = []
    for layer in layers:
        uar, per_fold = probe_layer(layer_matrix(store, model, condition, layer, utt_ids), labels, fold, C)
        fu = [per_fold[f] for f in sorted(per_fold)]
        out.append({"layer": layer, "uar": uar, "fold_uar": fu, "mean_fold_uar": float(np.mean(fu))})
    return pl.DataFrame(out, schema={"layer": pl.Int32, "uar": pl.Float64, "fold_uar": pl.List(pl.Float64),
                                     "mean_fold_uar": pl.Float64})


def layer_set_probe(store: str | Store, model: str, layers: Sequence[int] | Mapping[int, Sequence[int]],
                    condition: str = "clean", folds: str | int = "auto", seed: int = 0,
                    Cs: Sequence[float] = DEFAULT_CS, readouts: Sequence[str] = ("none",)) -> dict:
    """The nested probe (:func:`probe_nested`) on the concatenated mean vectors of ``layers`` (one list for every
    fold, or {outer fold: its layers}, e.g. each fold's best layers on its training speakers), over the same
    utterances and folds as :func:`layer_probe`; with several ``readouts`` (each applied per layer, see
    :func:`readout`) one such probe per read-out, fused (:func:`probe_fused`).  Returns ``uar``, ``fold_uar``,
    ``mean_fold_uar``, ``fold_c`` ({read-out: C}) and ``fold_layers``, per fold in fold order, and ``readouts``."""
    readouts = list(dict.fromkeys(readouts))
    bad = [r for r in readouts if r not in READOUTS]
    if not readouts or bad:
        raise ValueError(f"layer_set_probe: read-outs must be among {READOUTS}, got {readouts} (unknown: {bad})")
    store = as_store(store)
    rows, fold = probe_rows(store, model, condition, folds, seed)
    fold_ids = sorted(int(x) for x in np.unique(fold))
    if isinstance(layers, Mapping) and (missing := [f for f in fold_ids if f not in layers]):
        raise ValueError(f"layer_set_probe: no layers given for folds {missing} (got folds {sorted(layers)})")
    per_fold = {f: [int(k) for k in (layers[f] if isinstance(layers, Mapping) else layers)] for f in fold_ids}
    if not all(per_fold.values()):
        raise ValueError(f"layer_set_probe needs at least one layer for every fold, got {per_fold}")
    utt_ids = rows["utt_id"].to_list()
    cache: dict[int, np.ndarray] = {}
    for k in sorted({k for v in per_fold.values() for k in v}):
        cache[k] = layer_matrix(store, model, condition, k, utt_ids)
    # each distinct layer set is read out and stacked once per read-out, and shared by the folds that read it
    stacked = {(r, v): np.hstack([readout(cache[k], r) for k in v]) for r in readouts
               for v in {tuple(v) for v in per_fold.values()}}
    views = {r: {f: stacked[r, tuple(v)] for f, v in per_fold.items()} for r in readouts}
    uar, fold_uar, chosen = probe_fused(views, rows["label"].to_list(), fold, Cs)
    fu = [fold_uar[f] for f in fold_ids]
    return {"uar": uar, "fold_uar": fu, "mean_fold_uar": float(np.mean(fu)), "fold_c": [chosen[f] for f in fold_ids],
            "fold_layers": [per_fold[f] for f in fold_ids], "readouts": readouts}


# ---- the regression twin: ridge on A/V/D ---------------------------------------------------------------------------
DEFAULT_ALPHAS = (10000.0, 3000.0, 1000.0, 300.0, 100.0, 30.0, 10.0, 1.0)
"""The L2 strengths the ridge probe chooses among, strongest first (ties go to the stronger one)."""


def _ridge(H: np.ndarray, y: np.ndarray, train: np.ndarray, alpha: float):
    """StandardScaler + Ridge fitted on the ``train`` rows."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(H[train], y[train])


def inner_alpha(H: np.ndarray, y: np.ndarray, fold: np.ndarray, train: np.ndarray,
                alphas: Sequence[float] = DEFAULT_ALPHAS) -> tuple[float, dict[float, float]]:
    """The alpha of ``alphas`` whose ridge scores best (mean CCC over the inner folds) in a CV over the ``train`` rows
    alone, their own fold ids the inner folds (speaker-disjoint), and every alpha's score; ties to the first."""
    from ray_ser.metrics import ccc

    y = np.asarray(y, dtype=np.float64)
    train = np.asarray(train, dtype=bool)
    inner = sorted(int(x) for x in np.unique(fold[train]))
    if len(inner) < 2:
        raise ValueError(f"choosing alpha needs at least 2 folds among the training rows, got {len(inner)}")
    scores = {}
    with one_thread():
        for alpha in alphas:
            per = []
            for v in inner:
                fit, score = train & (fold != v), train & (fold == v)
                per.append(ccc(y[score], _ridge(H, y, fit, alpha).predict(H[score])))
            scores[float(alpha)] = float(np.nanmean(per))
    return max(scores, key=lambda a: -np.inf if np.isnan(scores[a]) else scores[a]), scores


def ridge_nested(H: np.ndarray | Mapping[int, np.ndarray], y: Sequence[float], fold: np.ndarray,
                 alphas: Sequence[float] = DEFAULT_ALPHAS) -> tuple[np.ndarray, dict[int, float], dict[int, float]]:
    """The ridge probe with its alpha chosen per outer fold on that fold's training speakers (:func:`inner_alpha`),
    then refit on all of them: (out-of-fold predictions, {fold: CCC}, {fold: alpha}). ``H``: one matrix or
    {outer fold: its matrix}."""
    from ray_ser.metrics import ccc

    y = np.asarray(y, dtype=np.float64)
    pred = np.full(len(y), np.nan)
    per_fold, chosen = {}, {}
    for f in sorted(int(x) for x in np.unique(fold)):
        train, test = fold != f, fold == f
        Hf = H[f] if isinstance(H, Mapping) else H
        chosen[f], _ = inner_alpha(Hf, y, fold, train, alphas)
        with one_thread():
            pred[test] = _ridge(Hf, y, train, chosen[f]).predict(Hf[test])
        per_fold[f] = ccc(y[test], pred[test])
    return pred, per_fold, chosen


def layer_set_ridge(store: str | Store, model: str, layers: Sequence[int] | Mapping[int, Sequence[int]],
                    condition: str = "clean", folds: str | int = "auto", seed: int = 0,
                    alphas: Sequence[float] = DEFAULT_ALPHAS, n_boot: int = 500) -> dict:
    """The regression twin of :func:`layer_set_probe`: per A/V/D dimension the rows have, a nested ridge probe
    (:func:`ridge_nested`) on the concatenated mean vectors of ``layers`` (one list, or {outer fold: its layers}),
    over the saliency's utterances and folds that have that dimension. Returns ``{"dims": {dimension: {ccc, ci
    (speaker-bootstrap 95 %), pearson, mae, fold_ccc, mean_fold_ccc, fold_alpha, n, n_speakers}}, "fold_layers"}``;
    ``dims`` is empty when no row has a dimension."""
    from ray_ser.corpora.manifest import DIMENSIONS
    from ray_ser.metrics import ccc, ccc_ci, pearson

    store = as_store(store)
    rows, fold_all, _ = usable_rows(store, model, condition, folds, seed)
    fold_ids = sorted(int(x) for x in np.unique(fold_all))
    if isinstance(layers, Mapping) and (missing := [f for f in fold_ids if f not in layers]):
        raise ValueError(f"layer_set_ridge: no layers given for folds {missing} (got folds {sorted(layers)})")
    per_fold = {f: [int(k) for k in (layers[f] if isinstance(layers, Mapping) else layers)] for f in fold_ids}
    out: dict = {"dims": {}, "fold_layers": [per_fold[f] for f in fold_ids]}
    present = [d for d in DIMENSIONS if d in rows.columns and rows[d].is_not_null().sum() > 1]
    if not present:
        return out
    utt_ids = rows["utt_id"].to_list()
    cache = {k: layer_matrix(store, model, condition, k, utt_ids) for k in sorted({k for v in per_fold.values() for k in v})}
    stacked = {v: np.hstack([cache[k] for k in v]) for v in {tuple(v) for v in per_fold.values()}}
    speakers = np.asarray(rows["speaker"].to_list(), dtype=object)
    for d in present:
        has = rows[d].is_not_null().to_numpy()
        y, fold = rows[d].to_numpy()[has].astype(np.float64), fold_all[has]
        if len(np.unique(fold)) < 3:
            continue  # an outer fold's training rows must hold 2 inner folds
        views = {f: stacked[tuple(v)][has] for f, v in per_fold.items() if f in set(fold.tolist())}
        pred, fold_ccc, chosen = ridge_nested(views, y, fold, alphas)
        fc = [fold_ccc[f] for f in sorted(fold_ccc)]
        lo, hi = ccc_ci(y, pred, speakers[has], n_boot=n_boot, seed=seed)
        out["dims"][d] = {"ccc": ccc(y, pred), "ci": [lo, hi], "pearson": pearson(y, pred),
                          "mae": float(np.mean(np.abs(y - pred))), "fold_ccc": fc, "mean_fold_ccc": float(np.mean(fc)),
                          "fold_alpha": [chosen[f] for f in sorted(chosen)], "n": int(has.sum()),
                          "n_speakers": int(len(set(speakers[has])))}
    return out


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

    ``ranking`` has ``layer`` and ``layer_score`` (e.g. :func:`ray_ser.analysis.saliency_store.mean_over_folds`),
    ``probe`` has ``layer`` and ``uar``; the best layer of each is marked.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = str(path_png) if is_uri(path_png) else Path(path_png)
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
    kind = Path(str(path)).suffix.lstrip(".") or "png"  # the format the name asks for, as savefig(path) reads it
    write_whole(path, lambda fh: fig.savefig(fh, format=kind))  # on disk or one PUT on the object store
    plt.close(fig)
    return path
