"""Which layer of a frozen speech model to use: layer scores computed on training speakers, how well
each predicts the held-out probe (Spearman, regret), and the pipeline's automatic choice.

Every score here sees only the rows it is given: the study and :func:`choose_layer` hand it the
*training* speakers of one outer fold (fold -1: every speaker, for use on new speakers only).

Scores (higher = better layer), :data:`CRITERIA`
-----------------------------------------------
Target-based, for each target set the corpus has (``pdf``: per-class probability columns of the label
PDF; ``onehot``: the consensus label's indicator columns; ``avd``: arousal, valence, dominance means):

- ``ccs_top10:<t>``   mean CCS (eq. 1-3, :func:`ray_ser.analysis.saliency.ccs`) of the layer's top 10 % dimensions
                      — the saliency job's layer score (``ccs_top10:pdf`` on EmoDB and RAVDESS);
- ``ccs_mean:<t>``    mean CCS over all dimensions;
- ``direct_top10:<t>`` the direct term alone, mean over targets of ``|corr(H_k, L_t)|``, top 10 %;
- ``direct_mean:<t>`` the direct term, mean over all dimensions;
- ``redundancy_mean:<t>`` the redundancy term ``gamma_k`` alone (eq. 2), mean over dimensions: what
                      CCS adds to the direct term; large when dimensions move together (low rank);
- ``mis_top10:<t>``   mean MIS (binned mutual information, :func:`ray_ser.analysis.saliency.mis`) of the top 10 %.

Label-based (the consensus ``label``):

- ``anova_top10``     mean univariate Fisher ratio (ANOVA F, ``sklearn.feature_selection.f_classif``)
                      of the top 10 % dimensions;
- ``fisher``          the multivariate Fisher criterion ``trace(Sw^-1 Sb)`` on standardised dimensions,
                      with Ledoit-Wolf shrinkage of the pooled within-class covariance (:func:`fisher_criterion`);
- ``lda_inner``       UAR of a shrinkage LDA trained on some training speakers and scored on the other
                      training speakers (:data:`INNER_FOLDS` speaker-disjoint inner folds, pooled);
- ``probe_inner``     the same inner split with the probe's own classifier (StandardScaler +
                      LogisticRegression, :mod:`ray_ser.analysis.probe`).

Dimension-based (arousal, valence, dominance; a row counts for each dimension it has):

- ``ridge_inner``     the regression twin of ``lda_inner``: mean over the dimensions present of the CCC of the
                      pooled inner out-of-fold predictions of a ridge regression (StandardScaler + RidgeCV) on
                      the same speaker-disjoint inner folds.  A label criterion asked of rows without any
                      category (a dimension-only corpus) becomes this one (:func:`criterion_for`).

:func:`effective_rank` (exp of the entropy of the normalised singular values of the standardised
layer) is reported beside the scores: the redundancy term rewards dimensions that move together, so
a low effective rank is what lets CCS favour a layer whose probe is poor.

Regret of a score = probe UAR of the best layer minus probe UAR of the layer the score picks, where the
probe UAR is the pooled out-of-fold UAR of :func:`ray_ser.analysis.probe.probe_layer` on the same folds.
:func:`study` computes every score per outer fold on that fold's training speakers and reports, per
score, the Spearman correlation of the fold-averaged score with the probe UAR, the mean regret of the
per-fold choices, and the regret of the fold-averaged score's choice.
"""

from __future__ import annotations

import warnings
from collections import abc
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import polars as pl

from ray_ser.analysis import saliency as sal
from ray_ser.analysis.probe import MAX_ITER, one_thread, probe_layer, spearman
from ray_ser.analysis.saliency_store import layer_matrix, layers_of, usable_rows
from ray_ser.corpora.folds import ALL_SPEAKERS
from ray_ser.corpora.manifest import DIMENSIONS
from ray_ser.store.core import Store

__all__ = [
    "DEFAULT_CRITERION",
    "CRITERIA",
    "INNER_FOLDS",
    "TOP_FRACTION",
    "LayerData",
    "StudyResult",
    "available_criteria",
    "choose_layer",
    "choose_from_arrays",
    "fold_layer_scores",
    "StoredLayers",
    "choose_layers",
    "comparison_table",
    "layer_rank_rows",
    "layer_prior",
    "layers_for_folds",
    "ranked_layers",
    "stored_layers",
    "write_layer_rank",
    "layer_scores",
    "scores_from_arrays",
    "study_table",
    "STUDY_CRITERIA",
    "targets_of",
    "criterion_for",
    "criterion_scores",
    "REGRESSION_CRITERION",
    "effective_rank",
    "fisher_criterion",
    "inner_folds",
    "inner_uar",
    "load_layer_data",
    "pick",
    "regret",
    "study",
    "study_arrays",
    "summarise",
]

DEFAULT_CRITERION = "lda_inner"
"""The pipeline's layer criterion (README, "Does saliency pick the layer?").  Measured with whisper-base on
EmoDB and RAVDESS, clean and 5 dB: every per-dimension score (CCS, its direct term, MIS, ANOVA F) favours
layer 0, the worst layer, with a worst-case mean per-fold regret of 0.178 or more; the inner-split LDA and
probe kept it at most 0.012 (mean over the four 0.008), the Fisher criterion at most 0.031.  LDA ties the
probe on regret at half its cost."""

TOP_FRACTION = 0.1
"""Share of a layer's dimensions averaged by the ``*_top10`` scores (as ray_ser.analysis.saliency.layer_score)."""

INNER_FOLDS = 3
"""Speaker-disjoint inner folds of the training speakers for ``lda_inner`` and ``probe_inner``."""

_TARGET_ORDER = ("pdf", "onehot", "avd")
_TARGET_KINDS = ("ccs_top10", "ccs_mean", "direct_top10", "direct_mean", "redundancy_mean", "mis_top10")
_LABEL_KINDS = ("anova_top10", "fisher", "lda_inner", "probe_inner")
_DIM_KINDS = ("ridge_inner",)

REGRESSION_CRITERION = "ridge_inner"
"""What a label criterion becomes on rows with no category at all (a dimension-only corpus)."""


# --------------------------------------------------------------------------------------------------
# the data one score sees


@dataclass
class LayerData:
    """The rows of one corpus/condition the scores see: targets per kind, labels, speakers, outer folds.

    ``targets`` maps a target kind (``pdf``, ``onehot``, ``avd``) to an ``(n, T)`` matrix without
    constant columns; ``labels`` and ``speakers`` are ``(n,)`` object arrays; ``fold`` the outer fold.
    """

    targets: dict[str, np.ndarray]
    labels: np.ndarray
    speakers: np.ndarray
    fold: np.ndarray
    utt_ids: list[str] = field(default_factory=list)
    description: str = ""
    dims: np.ndarray | None = None
    """``(n, 3)`` arousal, valence, dominance (NaN where a row lacks one), for ``ridge_inner``."""

    def __post_init__(self):
        n = len(self.labels)
        self.labels = np.asarray(self.labels, dtype=object)
        self.speakers = np.asarray(self.speakers, dtype=object)
        self.fold = np.asarray(self.fold, dtype=np.int64)
        if len(self.speakers) != n or len(self.fold) != n:
            raise ValueError(f"labels ({n}), speakers ({len(self.speakers)}) and fold ({len(self.fold)}) differ in length")
        for k, v in self.targets.items():
            if v.shape[0] != n:
                raise ValueError(f"target {k} has {v.shape[0]} rows, labels {n}")
        if self.dims is not None and len(self.dims) != n:
            raise ValueError(f"dims has {len(self.dims)} rows, labels {n}")

    @property
    def has_labels(self) -> bool:
        """Whether any row carries a categorical label (the label criteria need them)."""
        return any(x is not None for x in self.labels.tolist())

    def subset(self, rows: np.ndarray) -> "LayerData":
        """The same data restricted to ``rows`` (a boolean mask or indices)."""
        return LayerData({k: v[rows] for k, v in self.targets.items()}, self.labels[rows], self.speakers[rows],
                         self.fold[rows], [self.utt_ids[i] for i in np.arange(len(self.labels))[rows]]
                         if self.utt_ids else [], self.description, None if self.dims is None else self.dims[rows])

    def train(self, fold: int) -> np.ndarray:
        """Boolean mask of the training rows of outer fold ``fold`` (-1: every row)."""
        if fold == ALL_SPEAKERS:
            return np.ones(len(self.labels), bool)
        if fold not in set(self.fold.tolist()):
            raise ValueError(f"no outer fold {fold}; folds are {sorted(set(self.fold.tolist()))}")
        return self.fold != fold


def _drop_constant(L: np.ndarray) -> np.ndarray:
    return L[:, L.max(axis=0) > L.min(axis=0)]


def targets_of(rows: pl.DataFrame) -> dict[str, np.ndarray]:
    """The target sets every row of ``rows`` supports: ``pdf`` (per-class PDF columns), ``onehot``
    (indicator of the consensus label over the labels present), ``avd`` (A/V/D means); constant
    columns dropped, sets with no varying column left out."""
    out: dict[str, np.ndarray] = {}
    if "pdf" in rows.columns and rows["pdf"].null_count() == 0:
        pdf = rows["pdf"].to_list()
        if len({len(p) for p in pdf}) == 1:
            out["pdf"] = np.asarray(pdf, dtype=np.float64)
    if "label" in rows.columns and rows["label"].null_count() == 0:
        names, idx = np.unique(np.asarray(rows["label"].to_list(), dtype=object), return_inverse=True)
        onehot = np.zeros((rows.height, len(names)))
        onehot[np.arange(rows.height), idx] = 1.0
        out["onehot"] = onehot
    if all(c in rows.columns and rows[c].null_count() == 0 for c in DIMENSIONS):
        out["avd"] = np.column_stack([rows[c].to_numpy().astype(np.float64) for c in DIMENSIONS])
    out = {k: _drop_constant(v) for k, v in out.items()}
    return {k: v for k, v in out.items() if v.shape[1] > 0}


# --------------------------------------------------------------------------------------------------
# the scores


def effective_rank(H: np.ndarray) -> float:
    """Effective rank of a layer (Roy & Vetterli 2007): ``exp(entropy(s / sum(s)))`` of the singular
    values ``s`` of the column-standardised ``H`` (constant columns dropped).  Standardised because CCS
    sees correlations; r equally strong independent directions give r, one shared direction gives 1."""
    from scipy.stats import entropy
    from sklearn.preprocessing import StandardScaler

    H = np.asarray(H, dtype=np.float64)
    H = H[:, H.max(axis=0) > H.min(axis=0)]
    if H.shape[1] == 0:
        return 0.0
    s = np.linalg.svd(StandardScaler().fit_transform(H), compute_uv=False)
    s = s[s > s[0] * 1e-12]
    return float(np.exp(entropy(s / s.sum())))


def fisher_criterion(H: np.ndarray, labels: Sequence, shrinkage: float | None = None) -> float:
    """Multivariate Fisher criterion ``trace(Sw^-1 Sb)`` of the standardised ``H`` for ``labels``:
    the prior-weighted squared Mahalanobis distance of the class means from the grand mean.

    ``Sw`` is the pooled within-class covariance (class-centred rows, divided by n), shrunk towards
    ``mu * I`` by Ledoit-Wolf (``shrinkage=None``) or by the given coefficient in [0, 1]; without
    shrinkage a layer of nearly dependent dimensions would turn sampling noise into separation.
    ``Sb = sum_c p_c m_c m_c^T`` with ``m_c`` the class means of the standardised dimensions.
    """
    from sklearn.covariance import ledoit_wolf, shrunk_covariance
    from sklearn.preprocessing import StandardScaler

    H = np.asarray(H, dtype=np.float64)
    H = H[:, H.max(axis=0) > H.min(axis=0)]
    if H.shape[1] == 0:
        return 0.0
    Z = StandardScaler().fit_transform(H)
    classes, y = np.unique(np.asarray(labels, dtype=object), return_inverse=True)
    if len(classes) < 2:
        raise ValueError("the Fisher criterion needs at least 2 classes")
    counts = np.bincount(y, minlength=len(classes)).astype(np.float64)
    means = np.zeros((len(classes), Z.shape[1]))
    np.add.at(means, y, Z)
    means /= counts[:, None]
    within = Z - means[y]
    if shrinkage is None:
        Sw, _ = ledoit_wolf(within, assume_centered=True)
    else:
        Sw = shrunk_covariance(within.T @ within / len(Z), shrinkage=float(shrinkage))
    prior = counts / counts.sum()
    # trace(Sw^-1 Sb) = sum_c p_c m_c^T Sw^-1 m_c
    solved = np.linalg.solve(Sw, means.T)  # (N, C)
    return float(np.sum(prior * np.einsum("cn,nc->c", means, solved)))


def inner_folds(speakers: Sequence, labels: Sequence, k: int = INNER_FOLDS, seed: int = 0) -> np.ndarray:
    """Speaker-disjoint inner fold of every row (StratifiedGroupKFold over speakers, stratified by label);
    ``min(k, n_speakers)`` folds, at least 2 speakers needed."""
    from sklearn.model_selection import StratifiedGroupKFold

    speakers = np.asarray(speakers, dtype=object)
    n_spk = len(set(speakers.tolist()))
    if n_spk < 2:
        raise ValueError(f"an inner speaker split needs >= 2 speakers, got {n_spk}")
    out = np.full(len(speakers), -1, np.int64)
    splitter = StratifiedGroupKFold(n_splits=min(k, n_spk), shuffle=True, random_state=seed)
    y = np.asarray([str(x) for x in labels])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class with fewer members than folds
        for i, (_, test) in enumerate(splitter.split(np.zeros(len(y)), y, groups=speakers.astype(str))):
            out[test] = i
    return out


def _make_classifier(kind: str):
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "probe":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITER))
    if kind == "lda":
        return make_pipeline(StandardScaler(), LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto"))
    raise ValueError(f"unknown classifier {kind!r}")


def inner_uar(H: np.ndarray, labels: Sequence, inner: np.ndarray, kind: str = "probe") -> float:
    """UAR (balanced accuracy) of the pooled inner out-of-fold predictions: for each inner fold i a
    ``kind`` classifier (``probe``: StandardScaler + LogisticRegression as :mod:`ray_ser.analysis.probe`;
    ``lda``: shrinkage LDA) is fitted on the rows with ``inner != i`` and predicts the rows of i.
    On one BLAS thread (:func:`ray_ser.analysis.probe.one_thread`; 11x faster for ``probe`` on a 2-core VM)."""
    from sklearn.metrics import balanced_accuracy_score

    y = np.asarray(labels, dtype=object)
    pred = np.empty(len(y), dtype=object)
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence on small folds
        for i in np.unique(inner):
            fit, test = inner != i, inner == i
            clf = _make_classifier(kind)
            clf.fit(H[fit], y[fit])
            pred[test] = clf.predict(H[test])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class absent from the predictions
        return float(balanced_accuracy_score(y.astype(str), pred.astype(str)))


def inner_ccc(H: np.ndarray, dims: np.ndarray, inner: np.ndarray) -> float:
    """Mean over the dimensions (columns of ``dims``, NaN = missing) of the CCC of the pooled inner out-of-fold
    predictions: for each inner fold i a StandardScaler + RidgeCV (alpha among the ridge probe's, by its efficient
    leave-one-out on the fitting rows) is fitted on that dimension's rows with ``inner != i`` and predicts those
    of i.  A dimension with values in fewer than 2 inner folds is left out; NaN when none is left."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ray_ser.analysis.probe import DEFAULT_ALPHAS
    from ray_ser.metrics import ccc

    dims = np.asarray(dims, dtype=np.float64)
    per_dim = []
    with one_thread():
        for d in range(dims.shape[1]):
            has = np.isfinite(dims[:, d])
            folds = np.unique(inner[has])
            if len(folds) < 2:
                continue
            y, Hd, fd = dims[has, d], H[has], inner[has]
            pred = np.empty(len(y))
            for i in folds:
                fit, test = fd != i, fd == i
                model = make_pipeline(StandardScaler(), RidgeCV(alphas=DEFAULT_ALPHAS))
                pred[test] = model.fit(Hd[fit], y[fit]).predict(Hd[test])
            per_dim.append(ccc(y, pred))
    return float(np.mean(per_dim)) if per_dim else float("nan")


def _top(scores: np.ndarray) -> float:
    return sal.layer_score(np.nan_to_num(np.asarray(scores, np.float64), nan=0.0), TOP_FRACTION)


def _target_scores(H: np.ndarray, L: np.ndarray, kinds: Iterable[str]) -> dict[str, float]:
    kinds = set(kinds)
    out: dict[str, float] = {}
    if kinds & {"ccs_top10", "ccs_mean", "direct_top10", "direct_mean", "redundancy_mean"}:
        _, R = sal.correlations(H, L)
        direct = np.abs(R).mean(axis=1)          # eq. 1's first term, averaged over targets (eq. 3)
        ccs = sal.ccs(H, L)
        values = {"ccs_top10": _top(ccs), "ccs_mean": float(ccs.mean()), "direct_top10": _top(direct),
                  "direct_mean": float(direct.mean()), "redundancy_mean": float((ccs - direct).mean())}
        out.update({k: v for k, v in values.items() if k in kinds})
    if "mis_top10" in kinds:
        out["mis_top10"] = _top(sal.mis(H, L))
    return out


def criterion_scores(H: np.ndarray, data: LayerData, criteria: Sequence[str], inner: np.ndarray | None = None,
                     seed: int = 0) -> dict[str, float]:
    """{criterion: score} of one layer ``H`` over the rows of ``data`` (pass only training rows).
    ``inner``: the inner folds of the rows for the ``*_inner`` criteria (default :func:`inner_folds`)."""
    out: dict[str, float] = {}
    by_target: dict[str, list[str]] = {}
    for c in criteria:
        kind, _, target = c.partition(":")
        if kind in _TARGET_KINDS and target:
            if target not in data.targets:
                raise ValueError(f"criterion {c}: the rows have no {target!r} targets (have {sorted(data.targets)})")
            by_target.setdefault(target, []).append(kind)
        elif kind not in (*_LABEL_KINDS, *_DIM_KINDS) or target:
            raise ValueError(f"unknown criterion {c!r}; known: {', '.join(CRITERIA)}")
    for target, kinds in by_target.items():
        for kind, v in _target_scores(H, data.targets[target], kinds).items():
            out[f"{kind}:{target}"] = v
    labels = data.labels
    if "anova_top10" in criteria:
        from sklearn.feature_selection import f_classif

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant dimensions: F is NaN, counted as 0
            F, _ = f_classif(H, labels.astype(str))
        out["anova_top10"] = _top(F)
    if "fisher" in criteria:
        out["fisher"] = fisher_criterion(H, labels)
    for kind in ("lda", "probe"):
        if f"{kind}_inner" in criteria:
            if inner is None:
                inner = inner_folds(data.speakers, labels, seed=seed)
            out[f"{kind}_inner"] = inner_uar(H, labels, inner, kind)
    if "ridge_inner" in criteria:
        if data.dims is None or not np.isfinite(data.dims).any():
            raise ValueError("criterion ridge_inner: the rows have no arousal, valence or dominance")
        if inner is None:
            inner = inner_folds(data.speakers, labels, seed=seed)
        out["ridge_inner"] = inner_ccc(H, data.dims, inner)
    return {c: out[c] for c in criteria}


def criterion_for(data: LayerData, criterion: str) -> str:
    """The criterion that scores ``data``: a label criterion on rows with no category but with A/V/D becomes
    :data:`REGRESSION_CRITERION`; anything else is kept."""
    if (criterion in _LABEL_KINDS and not data.has_labels and data.dims is not None
            and np.isfinite(data.dims).any()):
        return REGRESSION_CRITERION
    return criterion


CRITERIA: tuple[str, ...] = (*(f"{k}:{t}" for t in _TARGET_ORDER for k in _TARGET_KINDS), *_LABEL_KINDS, *_DIM_KINDS)
"""Every criterion name (``<score>:<target>`` for the target-based scores); see the module docstring."""

STUDY_CRITERIA: tuple[str, ...] = (
    "ccs_top10:pdf", "ccs_top10:onehot", "ccs_top10:avd", "ccs_mean:pdf", "direct_top10:pdf",
    "direct_top10:onehot", "direct_top10:avd", "direct_mean:pdf", "redundancy_mean:pdf", "mis_top10:pdf",
    "anova_top10", "fisher", "lda_inner", "probe_inner",
)
"""The criteria :func:`study` evaluates by default (those whose targets the rows lack are skipped)."""


def available_criteria(data: LayerData, criteria: Sequence[str] = STUDY_CRITERIA) -> list[str]:
    """The members of ``criteria`` whose targets ``data`` has."""
    out = []
    for c in criteria:
        kind, _, target = c.partition(":")
        if kind in _TARGET_KINDS and target not in data.targets:
            continue
        out.append(c)
    return out


# --------------------------------------------------------------------------------------------------
# choosing and judging


def pick(scores: Mapping[int, float]) -> int:
    """The layer with the highest score; ties to the lower layer, NaN never picked (unless all are)."""
    if not scores:
        raise ValueError("no layers to pick from")
    return best_first(scores)[0]


def regret(scores: Mapping[int, float], probe_uar: Mapping[int, float]) -> float:
    """Probe UAR of the best layer minus probe UAR of the layer ``scores`` picks (0 = the best layer)."""
    return float(max(probe_uar.values()) - probe_uar[pick(scores)])


def scores_from_arrays(layers: Mapping[int, np.ndarray], data: LayerData, fold: int,
                       criterion: str = DEFAULT_CRITERION, seed: int = 0) -> dict[int, float]:
    """{layer: ``criterion`` score} on the training rows of outer fold ``fold`` (-1: all rows)."""
    return fold_layer_scores(layers, data, [fold], criterion, seed)[int(fold)]


def choose_from_arrays(layers: Mapping[int, np.ndarray], data: LayerData, fold: int,
                       criterion: str = DEFAULT_CRITERION, seed: int = 0) -> int:
    """The layer ``criterion`` ranks first on the training rows of outer fold ``fold`` (-1: all rows)."""
    return pick(scores_from_arrays(layers, data, fold, criterion, seed))


def fold_layer_scores(layers: Mapping[int, np.ndarray], data: LayerData, folds: Sequence[int],
                      criterion: str = DEFAULT_CRITERION, seed: int = 0) -> dict[int, dict[int, float]]:
    """{fold: {layer: ``criterion`` score}} on the training rows of each outer fold in ``folds`` (-1: all rows),
    with the layers outermost: a :class:`StoredLayers` then reads each layer's vectors once and holds one at a time."""
    subsets = {}
    for f in folds:
        train = data.train(int(f))
        sub = data.subset(train)
        subsets[int(f)] = (train, sub, inner_folds(sub.speakers, sub.labels, seed=seed)
                           if criterion.endswith("_inner") else None)
    out: dict[int, dict[int, float]] = {int(f): {} for f in folds}
    for k in list(layers):
        H = layers[k]
        for f, (train, sub, inner) in subsets.items():
            out[f][int(k)] = criterion_scores(H[train], sub, [criterion], inner, seed)[criterion]
        del H
    return out


class StoredLayers(abc.Mapping):
    """{layer: (n, N) float32 mean vectors of ``utt_ids``}, each read from the store when asked for and not kept:
    every layer of a large model at MSP-Podcast's size (25 x 150,000 x 1,024 floats, 15 GB) never sits in one
    process; a caller that needs a layer twice keeps it itself."""

    def __init__(self, store: str | Store, model: str, condition: str, layers: Sequence[int], utt_ids: Sequence[str]):
        self.store, self.model, self.condition = store, model, condition
        self.layers, self.utt_ids = [int(k) for k in layers], list(utt_ids)

    def __getitem__(self, layer: int) -> np.ndarray:
        if int(layer) not in self.layers:
            raise KeyError(layer)
        return layer_matrix(self.store, self.model, self.condition, int(layer), self.utt_ids)

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)


def load_layer_data(store: str | Store, model: str, condition: str = "clean", folds: str | int = "auto", seed: int = 0,
                    layers: Sequence[int] | None = None, assignment=None) -> tuple[LayerData, dict[int, np.ndarray]]:
    """(LayerData, {layer: (n, N) mean vectors}, read a layer at a time: :class:`StoredLayers`) of the labelled
    utterances of ``model``/``condition``:
    the saliency's rows and folds (:func:`ray_ser.analysis.saliency_store.usable_rows`) less those without a
    categorical label (the probe needs one), as :func:`ray_ser.analysis.probe.layer_probe` does; where no row has
    one (a dimension-only corpus), the rows with any of A/V/D, for ``ridge_inner``.  With ``assignment``
    (a :class:`~ray_ser.corpora.folds.FoldAssignment`) only its utterances, in its folds: e.g. a search's
    pool, whose held-out speakers must not be scored."""
    rows, fold, desc = usable_rows(store, model, condition, folds, seed)
    if assignment is not None:
        fold_of = assignment.fold_of()
        inside = np.asarray([u in fold_of for u in rows["utt_id"].to_list()], bool)
        rows = rows.filter(pl.Series(inside))
        fold, desc = np.asarray([fold_of[u] for u in rows["utt_id"].to_list()], np.int64), assignment.description
    keep = rows["label"].is_not_null().to_numpy()
    if not keep.any():  # a dimension-only corpus: the rows with a dimension, for ridge_inner
        keep = np.column_stack([rows[c].is_not_null().to_numpy() for c in DIMENSIONS if c in rows.columns]).any(1) \
            if any(c in rows.columns for c in DIMENSIONS) else keep
    rows, fold = rows.filter(pl.Series(keep)), fold[keep]
    if rows.height == 0:
        raise ValueError(f"no utterances of {model}/{condition} in {getattr(store, 'uri', store)} with a label or a dimension")
    utt_ids = rows["utt_id"].to_list()
    dims = np.column_stack([rows[c].cast(pl.Float64).fill_null(np.nan).to_numpy() if c in rows.columns
                            else np.full(rows.height, np.nan) for c in DIMENSIONS])
    data = LayerData(targets_of(rows), np.asarray(rows["label"].to_list(), dtype=object),
                     np.asarray(rows["speaker"].to_list(), dtype=object), fold, utt_ids, desc, dims)
    layers = list(layers) if layers is not None else layers_of(store, model, condition)
    return data, StoredLayers(store, model, condition, layers, utt_ids)


def layer_scores(store: str | Store, model: str, fold: int, condition: str = "clean",
                 criterion: str = DEFAULT_CRITERION, *, folds: str | int = "auto", seed: int = 0) -> dict[int, float]:
    """{layer: ``criterion`` score} on the training speakers of outer fold ``fold`` of the saliency's
    folds (``fold=-1``: every speaker); higher is better (the rows of a ``layer_rank`` table)."""
    data, layers = load_layer_data(store, model, condition, folds, seed)
    return scores_from_arrays(layers, data, fold, criterion_for(data, criterion), seed)


def choose_layer(store: str | Store, model: str, fold: int, condition: str = "clean",
                 criterion: str = DEFAULT_CRITERION, *, folds: str | int = "auto", seed: int = 0) -> int:
    """The pipeline's automatic layer: the layer ``criterion`` ranks first on the training speakers of
    outer fold ``fold`` of the saliency's folds (``fold=-1``: every speaker, for new speakers only)."""
    return pick(layer_scores(store, model, fold, condition, criterion, folds=folds, seed=seed))


def choose_layers(store: str | Store, model: str, folds_to_choose: Sequence[int] | None = None,
                  condition: str = "clean", criterion: str = DEFAULT_CRITERION, *, folds: str | int = "auto",
                  seed: int = 0, assignment=None) -> dict[int, int]:
    """{outer fold: :func:`choose_layer`} for several folds (default: every outer fold and -1), reading the
    store once; with ``assignment``, its utterances and folds (see :func:`load_layer_data`)."""
    data, layers = load_layer_data(store, model, condition, folds, seed, assignment=assignment)
    wanted = list(folds_to_choose) if folds_to_choose is not None else [-1, *sorted(set(data.fold.tolist()))]
    return {f: pick(s) for f, s in fold_layer_scores(layers, data, wanted, criterion, seed).items()}


def best_first(scores: Mapping[int, float]) -> list[int]:
    """Layers by score, best first (a non-finite score last, ties to the lower layer); :func:`pick` is the first."""
    return sorted(scores, key=lambda k: (-(scores[k] if np.isfinite(scores[k]) else -np.inf), k))


def layer_rank_rows(store: str | Store, model: str, condition: str = "clean", criterion: str = DEFAULT_CRITERION,
                    folds_to_score: Sequence[int] | None = None, *, folds: str | int = "auto",
                    seed: int = 0, assignment=None) -> pl.DataFrame:
    """Rows for ``layer_rank__<model>``: fold, layer, layer_score, layer_rank (0 = the layer
    :func:`choose_layer` returns), criterion (as :func:`criterion_for` resolves it); one store read for every fold
    (default: -1 and each outer fold).  With ``assignment``, its utterances and folds (see :func:`load_layer_data`)."""
    data, layers = load_layer_data(store, model, condition, folds, seed, assignment=assignment)
    criterion = criterion_for(data, criterion)
    wanted = list(folds_to_score) if folds_to_score is not None else [-1, *sorted(set(data.fold.tolist()))]
    rows = []
    for f, scores in fold_layer_scores(layers, data, wanted, criterion, seed).items():
        order = best_first(scores)
        rows += [(int(f), k, float(scores[k]), order.index(k), criterion) for k in sorted(scores)]
    return pl.DataFrame(rows, schema={"fold": pl.Int32, "layer": pl.Int32, "layer_score": pl.Float64,
                                      "layer_rank": pl.Int32, "criterion": pl.Utf8}, orient="row")


def write_layer_rank(store: str | Store, model: str, condition: str, assignment, criterion: str = DEFAULT_CRITERION,
                     *, folds: str | int = "auto", seed: int = 0) -> pl.DataFrame:
    """Score every layer under ``criterion`` on each outer fold's training speakers of ``assignment`` (and
    fold -1) and replace that criterion's rows of ``layer_rank__<model>`` with them (one commit); the rows
    carry the criterion and the assignment's ``fold_id``, so the pipeline's choice is read back, not redone."""
    from ray_ser.store import catalog

    rows = layer_rank_rows(store, model, condition, criterion, folds=folds, seed=seed, assignment=assignment)
    rows = rows.with_columns(pl.lit(model).alias("model"), pl.lit(condition).alias("condition"),
                             pl.lit(assignment.id).alias("fold_id"))
    criterion = rows["criterion"][0] if rows.height else criterion  # ridge_inner on a dimension-only corpus
    catalog.replace(store, catalog.LAYER_RANK, model, rows.to_arrow(),
                    {"model": model, "condition": condition, "criterion": criterion})
    return rows


def stored_layers(store: str | Store, model: str, assignment, folds_wanted: Sequence[int], condition: str = "clean",
                  criterion: str = DEFAULT_CRITERION, k: int = 1) -> dict[int, list[int]] | None:
    """{fold: its ``k`` best layers, best first} from ``layer_rank__<model>`` rows of ``criterion`` made with
    ``assignment``; None when the table, the criterion, the assignment or any wanted fold is missing there."""
    from ray_ser.store import catalog

    try:
        t = catalog.read(store, catalog.LAYER_RANK, model, columns=["fold", "layer", "layer_rank", "fold_id"],
                         model=model, condition=condition, criterion=criterion)
    except KeyError:
        return None
    df = pl.from_arrow(t).filter((pl.col("fold_id") == assignment.id) & (pl.col("layer_rank") < k)).sort("layer_rank")
    found: dict[int, list[int]] = {}
    for f, layer in zip(df["fold"].to_list(), df["layer"].to_list()):
        found.setdefault(int(f), []).append(int(layer))
    if any(len(found.get(int(f), [])) < k for f in folds_wanted):
        return None
    return {int(f): found[int(f)] for f in folds_wanted}


def ranked_layers(store: str | Store, model: str, assignment, folds_wanted: Sequence[int], k: int = 1,
                  condition: str = "clean", criterion: str = DEFAULT_CRITERION,
                  seed: int = 0) -> tuple[dict[int, list[int]], str]:
    """({fold: its ``k`` best layers, best first}, where from): the stored ranking of ``criterion`` under
    ``assignment`` when jobs/saliency.py wrote one, else computed now from one read of the store on each fold's
    training speakers of ``assignment`` (never on its test speakers).  On a dimension-only corpus a label
    criterion is read or computed as :data:`REGRESSION_CRITERION` (:func:`criterion_for`)."""
    found = stored_layers(store, model, assignment, folds_wanted, condition, criterion, k)
    if found is not None:
        return found, f"layer_rank ({criterion}, fold assignment {assignment.id})"
    data, layers = load_layer_data(store, model, condition, seed=seed, assignment=assignment)
    if (resolved := criterion_for(data, criterion)) != criterion:
        found = stored_layers(store, model, assignment, folds_wanted, condition, resolved, k)
        if found is not None:
            return found, f"layer_rank ({resolved}: no categories, fold assignment {assignment.id})"
        criterion = resolved
    return ({f: best_first(s)[:k] for f, s in fold_layer_scores(layers, data, folds_wanted, criterion, seed).items()},
            f"computed ({criterion} on each fold's training speakers)")


def layers_for_folds(store: str | Store, model: str, assignment, folds_wanted: Sequence[int], condition: str = "clean",
                     criterion: str = DEFAULT_CRITERION, seed: int = 0) -> tuple[dict[int, int], str]:
    """({fold: layer}, where from) for the pipeline's automatic layer: each fold's best layer by
    :func:`ranked_layers`."""
    ranked, source = ranked_layers(store, model, assignment, folds_wanted, 1, condition, criterion, seed)
    return {f: v[0] for f, v in ranked.items()}, source


def layer_prior(store: str | Store, model: str, assignment, condition: str = "clean",
                criterion: str = DEFAULT_CRITERION, seed: int = 0) -> list[int]:
    """Every layer, best first, by ``criterion`` on all speakers of ``assignment`` (for a search: its pool,
    so no held-out speaker is scored): the order the Tune search starts from."""
    data, layers = load_layer_data(store, model, condition, seed=seed, assignment=assignment)
    return best_first(scores_from_arrays(layers, data, -1, criterion_for(data, criterion), seed))


# --------------------------------------------------------------------------------------------------
# the study


@dataclass
class StudyResult:
    """One corpus/condition: ``scores`` (fold, layer, criterion, score: each outer fold's training rows,
    ``effective_rank`` among the criteria), ``per_layer`` (layer, probe_uar, effective_rank, one column per
    criterion with the fold-averaged score) and ``summary`` (one row per criterion, :func:`summarise`)."""

    scores: pl.DataFrame
    per_layer: pl.DataFrame
    summary: pl.DataFrame
    probe_uar: dict[int, float]
    description: str = ""


def study_arrays(layers: Mapping[int, np.ndarray], data: LayerData, criteria: Sequence[str] | None = None,
                 probe_uar: Mapping[int, float] | None = None, seed: int = 0,
                 progress: Callable[[str], None] | None = None) -> StudyResult:
    """Every criterion of every layer on the training rows of every outer fold, the probe UAR per layer
    (:func:`ray_ser.analysis.probe.probe_layer` on the same folds unless ``probe_uar`` is given), the effective
    rank per layer (fold-averaged, training rows), and the per-criterion :func:`summarise`."""
    criteria = available_criteria(data, criteria or STUDY_CRITERIA)
    folds = sorted(int(f) for f in np.unique(data.fold))
    rows = []
    for f in folds:
        train = data.train(f)
        sub = data.subset(train)
        inner = inner_folds(sub.speakers, sub.labels, seed=seed)
        for k, H in layers.items():
            Ht = H[train]
            for c, v in criterion_scores(Ht, sub, criteria, inner, seed).items():
                rows.append((f, int(k), c, float(v)))
            rows.append((f, int(k), "effective_rank", effective_rank(Ht)))
        if progress:
            progress(f"fold {f} done")
    scores = pl.DataFrame(rows, schema={"fold": pl.Int32, "layer": pl.Int32, "criterion": pl.Utf8, "score": pl.Float64},
                          orient="row")
    if probe_uar is None:
        probe_uar = {int(k): probe_layer(H, data.labels, data.fold)[0] for k, H in layers.items()}
    probe_uar = {int(k): float(v) for k, v in probe_uar.items()}
    means = scores.group_by(["layer", "criterion"]).agg(pl.col("score").mean())
    per_layer = (means.pivot(on="criterion", index="layer", values="score")
                 .join(pl.DataFrame({"layer": list(probe_uar), "probe_uar": list(probe_uar.values())},
                                    schema={"layer": pl.Int32, "probe_uar": pl.Float64}), on="layer")
                 .select(["layer", "probe_uar", "effective_rank", *criteria]).sort("layer"))
    return StudyResult(scores, per_layer, summarise(scores.filter(pl.col("criterion") != "effective_rank"), probe_uar),
                       probe_uar, data.description)


def summarise(scores: pl.DataFrame, probe_uar: Mapping[int, float]) -> pl.DataFrame:
    """One row per criterion of a (fold, layer, criterion, score) frame: ``spearman`` (fold-averaged
    score vs probe UAR over the layers), ``regret_folds`` (mean over outer folds of the regret of that
    fold's choice, scored by the probe UAR of the chosen layer), ``regret_mean`` (regret of the
    fold-averaged score's choice), ``pick_mean`` (that layer) and ``picks`` (each fold's choice)."""
    out = []
    for (c,), g in scores.group_by(["criterion"], maintain_order=True):
        per_fold = {}
        for (f,), gf in g.group_by(["fold"], maintain_order=True):
            per_fold[int(f)] = pick(dict(zip(gf["layer"].to_list(), gf["score"].to_list())))
        mean = g.group_by("layer").agg(pl.col("score").mean())
        mean_scores = dict(zip(mean["layer"].to_list(), mean["score"].to_list()))
        best = max(probe_uar.values())
        out.append({
            "criterion": c,
            "spearman": spearman(mean_scores, probe_uar),
            "regret_folds": float(np.mean([best - probe_uar[k] for k in per_fold.values()])),
            "regret_mean": regret(mean_scores, probe_uar),
            "pick_mean": pick(mean_scores),
            "picks": " ".join(str(per_fold[f]) for f in sorted(per_fold)),
        })
    return pl.DataFrame(out, schema={"criterion": pl.Utf8, "spearman": pl.Float64, "regret_folds": pl.Float64,
                                     "regret_mean": pl.Float64, "pick_mean": pl.Int32, "picks": pl.Utf8})


def study(store: str | Store, model: str, condition: str = "clean", criteria: Sequence[str] | None = None,
          folds: str | int = "auto", seed: int = 0, progress: Callable[[str], None] | None = None) -> StudyResult:
    """:func:`study_arrays` on the stored mean vectors of ``model``/``condition`` with the saliency's folds."""
    data, layers = load_layer_data(store, model, condition, folds, seed)
    return study_arrays(layers, data, criteria, seed=seed, progress=progress)


def study_table(result: StudyResult) -> pl.DataFrame:
    """One row per criterion (first ``probe_uar`` and ``effective_rank``): the fold-averaged score of every
    layer (columns ``L<k>``), then ``spearman``, ``regret_folds``, ``regret_mean`` and ``picks``."""
    layers = result.per_layer["layer"].to_list()
    names = [c for c in result.per_layer.columns if c != "layer"]
    wide = pl.DataFrame({"criterion": names, **{f"L{k}": [result.per_layer[c][i] for c in names]
                                                  for i, k in enumerate(layers)}})
    return wide.join(result.summary.drop("pick_mean"), on="criterion", how="left", maintain_order="left")


def comparison_table(results: Mapping[str, StudyResult], default: str = DEFAULT_CRITERION) -> pl.DataFrame:
    """Criteria (rows) by condition (columns ``rho <cond>`` and ``regret <cond>``, the mean per-fold
    regret) plus ``max regret`` over the conditions; the ``default`` criterion is marked with ``*``."""
    out: pl.DataFrame | None = None
    for cond, r in results.items():
        part = r.summary.select("criterion", pl.col("spearman").alias(f"rho {cond}"),
                                pl.col("regret_folds").alias(f"regret {cond}"))
        out = part if out is None else out.join(part, on="criterion", how="full", coalesce=True, maintain_order="left")
    if out is None:
        raise ValueError("no study results")
    regrets = [c for c in out.columns if c.startswith("regret ")]
    out = out.with_columns(pl.max_horizontal(regrets).alias("max regret"))
    return out.with_columns(pl.when(pl.col("criterion") == default).then(pl.col("criterion") + " *")
                            .otherwise(pl.col("criterion")).alias("criterion"))
