"""Evaluation metrics on arrays: categorical (UAR, WA, F1, k-best UAR), speaker level (per-speaker UAR,
paUAR), agreement with the graders' PDFs, calibration of the probabilities (ECE, Brier, NLL), dimensional (CCC,
Pearson, MSE) and a speaker-level bootstrap. Below every stage (pure numerics): the evaluation's tables and the
analysis' probes score with the same functions.

Two layers. *Array functions* score one set of predictions (scikit-learn / SciPy where they exist).
*Count functions* turn predictions into additive per-speaker statistics (confusion tensors, k-best hit
tables, moments); a weighted sum of those over speakers gives the same metric for any resample of the
speakers, so the bootstrap is one matrix product (``resample_stats``) instead of a Python loop.
Class indices are ints in ``range(n_classes)``; -1 marks a missing label.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import pearsonr
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    mean_squared_error,
)

# A per-speaker UAR that is a float sum of fractions (e.g. (2/3 + 5/6) / 2) may land a hair under an exact
# threshold; paUAR counts it as reaching the threshold.
THRESHOLD_EPS = 1e-9

Seed = int | Sequence[int]


# ---------------------------------------------------------------------------------------------------------
# Array functions: one set of predictions
# ---------------------------------------------------------------------------------------------------------

def uar(y_true, y_pred) -> float:
    """Unweighted average recall: mean per-class recall over the classes present in ``y_true``
    (scikit-learn's ``balanced_accuracy_score``)."""
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" is expected and harmless
        warnings.simplefilter("ignore")
        return float(balanced_accuracy_score(y_true, y_pred))


def wa(y_true, y_pred) -> float:
    """Weighted accuracy (plain accuracy: each utterance counts once)."""
    return float(accuracy_score(y_true, y_pred))


def f1_macro(y_true, y_pred) -> float:
    """Macro F1 over the classes seen in ``y_true`` or ``y_pred`` (scikit-learn ``f1_score``)."""
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def f1_micro(y_true, y_pred) -> float:
    """Micro F1 (equals accuracy for single-label multi-class predictions; scikit-learn ``f1_score``)."""
    return float(f1_score(y_true, y_pred, average="micro", zero_division=0))


def confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Confusion counts (rows: true class, columns: predicted class) over all ``n_classes`` classes."""
    return confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))


def true_rank(y_true, probs) -> np.ndarray:
    """0-based rank of the true class among each row's probabilities; ties go to the lower class index
    (as ``np.argmax``), so rank 0 is exactly ``argmax == y_true``."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    p_true = p[np.arange(len(y)), y][:, None]
    cls = np.arange(p.shape[1])[None, :]
    ahead = (p > p_true) | ((p == p_true) & (cls < y[:, None]))
    return ahead.sum(axis=1)


def topk_correct(y_true, probs, k: int) -> np.ndarray:
    """Whether the true class is among the ``k`` most probable classes, per row."""
    return true_rank(y_true, probs) < k


def kbest_uar(y_true, probs, k: int) -> float:
    """k-best UAR: a row is right when its true class is among the k most probable; recall per class,
    averaged over the classes present in ``y_true``. k=1 is the ordinary UAR of the argmax."""
    y = np.asarray(y_true, dtype=np.int64)
    c = np.asarray(probs).shape[1]
    hit = topk_correct(y, probs, k)
    return float(recall_uar(np.bincount(y, weights=hit, minlength=c), np.bincount(y, minlength=c)))


def per_speaker_uar(y_true, correct, speakers) -> dict[str, float]:
    """UAR of each speaker from per-row correctness (e.g. ``topk_correct``), averaged over the classes
    that speaker has."""
    y = np.asarray(y_true, dtype=np.int64)
    names, codes = np.unique(np.asarray(speakers), return_inverse=True)
    c = int(y.max()) + 1
    hits = class_counts(codes, y, len(names), c, weights=np.asarray(correct, dtype=np.float64))
    totals = class_counts(codes, y, len(names), c)
    return {str(s): float(v) for s, v in zip(names, recall_uar(hits, totals))}


def pauar(speaker_uars, threshold: float) -> float:
    """paUAR: the share of speakers whose UAR is at least ``threshold`` (0.50 -> paUAR-50, 0.75 -> paUAR-75)."""
    v = np.asarray(list(speaker_uars.values()) if isinstance(speaker_uars, dict) else speaker_uars, float)
    return float(np.mean(v >= threshold - THRESHOLD_EPS)) if v.size else float("nan")


def _rows_normalised(p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return p / p.sum(axis=1, keepdims=True)


def pdf_overlap(p_true, p_pred) -> np.ndarray:
    """Per-row overlap sum_c min(p_c, q_c) of two PDFs (each row renormalised): 1 = the model puts its
    probability exactly where the graders put theirs, 0 = nowhere."""
    return np.minimum(_rows_normalised(p_true), _rows_normalised(p_pred)).sum(axis=1)


def js_divergence(p_true, p_pred) -> np.ndarray:
    """Per-row Jensen-Shannon divergence in bits (in [0, 1]): SciPy's ``jensenshannon`` distance, squared."""
    return jensenshannon(_rows_normalised(p_true), _rows_normalised(p_pred), base=2, axis=1) ** 2


def ccc(y_true, y_pred) -> float:
    """Concordance correlation coefficient (Lin 1989, population moments):
    2 cov(x, y) / (var x + var y + (mean x - mean y)^2)."""
    x = np.asarray(y_true, dtype=np.float64)
    y = np.asarray(y_pred, dtype=np.float64)
    if x.size < 2:
        return float("nan")
    mx, my = x.mean(), y.mean()
    cov = np.mean((x - mx) * (y - my))
    den = x.var() + y.var() + (mx - my) ** 2
    return float(2 * cov / den) if den > 0 else float("nan")


def pearson(y_true, y_pred) -> float:
    """Pearson correlation (SciPy ``pearsonr``); NaN when either side is constant or there are < 2 rows."""
    x = np.asarray(y_true, dtype=np.float64)
    y = np.asarray(y_pred, dtype=np.float64)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(pearsonr(x, y).statistic)


def mse(y_true, y_pred) -> float:
    """Mean squared error (scikit-learn)."""
    return float(mean_squared_error(y_true, y_pred))


def likert_bins(y_true) -> np.ndarray:
    """The Likert bin of each target: the value rounded half up (2.5 -> 3), as float."""
    return np.floor(np.asarray(y_true, dtype=np.float64) + 0.5)


def mse_per_bin(y_true, y_pred) -> dict[float, tuple[float, int]]:
    """MSE per Likert bin of the target (``likert_bins``): {bin: (mse, n)}, so a model that predicts the
    middle of the scale for everything shows large errors at the ends."""
    x = np.asarray(y_true, dtype=np.float64)
    y = np.asarray(y_pred, dtype=np.float64)
    b = likert_bins(x)
    return {float(v): (mse(x[b == v], y[b == v]), int((b == v).sum())) for v in np.unique(b)}


# ---------------------------------------------------------------------------------------------------------
# Count functions: additive per-group (per-speaker) statistics and the metrics computed from their sums.
# Every *_from_* function accepts leading batch dimensions (one per bootstrap resample).
# ---------------------------------------------------------------------------------------------------------

def class_counts(groups, y, n_groups: int, n_classes: int, weights=None) -> np.ndarray:
    """(n_groups, n_classes) sums of ``weights`` (default 1) per group and true class."""
    idx = np.asarray(groups, dtype=np.int64) * n_classes + np.asarray(y, dtype=np.int64)
    return np.bincount(idx, weights=weights, minlength=n_groups * n_classes).reshape(n_groups, n_classes)


def confusion_counts(groups, y_true, y_pred, n_groups: int, n_classes: int) -> np.ndarray:
    """(n_groups, n_classes, n_classes) confusion counts per group (e.g. per speaker)."""
    idx = (np.asarray(groups, np.int64) * n_classes + np.asarray(y_true, np.int64)) * n_classes \
        + np.asarray(y_pred, np.int64)
    c2 = n_classes * n_classes
    return np.bincount(idx, minlength=n_groups * c2).reshape(n_groups, n_classes, n_classes).astype(np.float64)


def kbest_hits(groups, y_true, probs, n_groups: int, ks: Sequence[int]) -> np.ndarray:
    """(len(ks), n_groups, n_classes) counts of rows whose true class is among the k most probable."""
    y = np.asarray(y_true, dtype=np.int64)
    c = np.asarray(probs).shape[1]
    rank = true_rank(y, probs)
    return np.stack([class_counts(groups, y, n_groups, c, weights=(rank < k).astype(np.float64)) for k in ks])


def recall_uar(hits, totals) -> np.ndarray:
    """Mean of hits/totals over the classes with totals > 0 (last axis); NaN where no class is present."""
    hits = np.asarray(hits, dtype=np.float64)
    totals = np.asarray(totals, dtype=np.float64)
    present = totals > 0
    n_present = present.sum(axis=-1)
    rec = np.divide(hits, totals, out=np.zeros(np.broadcast_shapes(hits.shape, totals.shape)), where=present)
    return np.where(n_present > 0, rec.sum(axis=-1) / np.maximum(n_present, 1), np.nan)


def uar_from_confusion(conf) -> np.ndarray:
    """UAR from confusion counts (..., C, C): mean diagonal recall over classes with true rows."""
    conf = np.asarray(conf, dtype=np.float64)
    return recall_uar(np.diagonal(conf, axis1=-2, axis2=-1), conf.sum(axis=-1))


def wa_from_confusion(conf) -> np.ndarray:
    """Accuracy (= micro F1) from confusion counts (..., C, C)."""
    conf = np.asarray(conf, dtype=np.float64)
    total = conf.sum(axis=(-2, -1))
    return np.divide(np.trace(conf, axis1=-2, axis2=-1), total, out=np.full(total.shape, np.nan), where=total > 0)


def f1_macro_from_confusion(conf) -> np.ndarray:
    """Macro F1 from confusion counts (..., C, C), over the classes that occur as truth or prediction
    (scikit-learn's default label set): per class 2TP / (2TP + FP + FN)."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    den = conf.sum(axis=-1) + conf.sum(axis=-2)  # = 2TP + FN + FP
    seen = den > 0
    f1 = np.divide(2 * tp, den, out=np.zeros(den.shape), where=seen)
    n_seen = seen.sum(axis=-1)
    return np.where(n_seen > 0, f1.sum(axis=-1) / np.maximum(n_seen, 1), np.nan)


def moments(y_true, y_pred, groups=None, n_groups: int | None = None) -> np.ndarray:
    """(n_groups, 6) sums [n, sum x, sum y, sum x^2, sum y^2, sum xy] per group (x true, y predicted).
    Both sides are shifted by the mean target first (CCC, Pearson and MSE ignore a common shift), which keeps
    the sums well conditioned."""
    x = np.asarray(y_true, dtype=np.float64)
    y = np.asarray(y_pred, dtype=np.float64)
    if x.size:
        shift = x.mean()
        x, y = x - shift, y - shift
    g = np.zeros(x.size, np.int64) if groups is None else np.asarray(groups, np.int64)
    ng = 1 if groups is None else int(n_groups if n_groups is not None else (g.max() + 1 if g.size else 0))
    cols = (np.ones_like(x), x, y, x * x, y * y, x * y)
    return np.stack([np.bincount(g, weights=c, minlength=ng) for c in cols], axis=-1)


def _central(m) -> tuple[np.ndarray, ...]:
    m = np.asarray(m, dtype=np.float64)
    n = m[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        mx, my = m[..., 1] / n, m[..., 2] / n
        vx = m[..., 3] / n - mx * mx
        vy = m[..., 4] / n - my * my
        cov = m[..., 5] / n - mx * my
    return n, mx, my, np.maximum(vx, 0.0), np.maximum(vy, 0.0), cov


def ccc_from_moments(m) -> np.ndarray:
    """CCC from ``moments`` sums (..., 6); NaN with fewer than 2 rows or no spread at all."""
    n, mx, my, vx, vy, cov = _central(m)
    den = vx + vy + (mx - my) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n >= 2) & (den > 0), 2 * cov / den, np.nan)


def pearson_from_moments(m) -> np.ndarray:
    """Pearson correlation from ``moments`` sums (..., 6); NaN where either side is constant."""
    n, _, _, vx, vy, cov = _central(m)
    den = np.sqrt(vx * vy)
    tiny = 1e-12 * np.maximum(vx + vy, 1e-300)  # float noise of a constant column
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n >= 2) & (vx > tiny) & (vy > tiny), cov / den, np.nan)


def mse_from_moments(m) -> np.ndarray:
    """MSE from ``moments`` sums (..., 6): (sum x^2 - 2 sum xy + sum y^2) / n."""
    m = np.asarray(m, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m[..., 0] > 0, np.maximum(m[..., 3] - 2 * m[..., 5] + m[..., 4], 0.0) / m[..., 0], np.nan)


ECE_BINS = 15
"""Equal-width confidence bins of the expected calibration error (Guo et al. 2017 use 15)."""
_TINY = 1e-12


def confidence_bin(confidence, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin of each top-class probability among ``n_bins`` equal-width bins (lo, hi] of [0, 1] (0 goes to bin 0)."""
    c = np.asarray(confidence, dtype=np.float64)
    return np.clip(np.ceil(c * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def calibration_counts(groups, y_true, probs, n_groups: int, n_bins: int = ECE_BINS) -> np.ndarray:
    """(n_groups, n_bins + 1, 3) additive calibration statistics: per confidence bin [rows, sum of top-class
    probability, correct top-class predictions]; the last slot holds [rows, sum of -log p(true), sum of the Brier
    term sum_c (p_c - onehot_c)^2]."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    g = np.asarray(groups, dtype=np.int64)
    out = np.zeros((n_groups, n_bins + 1, 3))
    conf, top = p.max(axis=1), p.argmax(axis=1)
    b = confidence_bin(conf, n_bins)
    idx = g * (n_bins + 1) + b
    size = n_groups * (n_bins + 1)
    out[..., 0] = np.bincount(idx, minlength=size).reshape(n_groups, n_bins + 1)
    out[..., 1] = np.bincount(idx, weights=conf, minlength=size).reshape(n_groups, n_bins + 1)
    out[..., 2] = np.bincount(idx, weights=(top == y).astype(np.float64), minlength=size).reshape(n_groups, n_bins + 1)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    nll = -np.log(np.clip(p[np.arange(len(y)), y], _TINY, 1.0))
    brier = ((p - onehot) ** 2).sum(axis=1)
    out[:, n_bins, 0] = np.bincount(g, minlength=n_groups)
    out[:, n_bins, 1] = np.bincount(g, weights=nll, minlength=n_groups)
    out[:, n_bins, 2] = np.bincount(g, weights=brier, minlength=n_groups)
    return out


def ece_from_counts(cal) -> np.ndarray:
    """Expected calibration error from ``calibration_counts`` sums (..., n_bins + 1, 3): sum over the bins of
    |correct - confidence| / rows."""
    cal = np.asarray(cal, dtype=np.float64)
    bins = cal[..., :-1, :]
    n = bins[..., 0].sum(axis=-1)
    gap = np.abs(bins[..., 2] - bins[..., 1]).sum(axis=-1)
    return np.divide(gap, n, out=np.full(n.shape, np.nan), where=n > 0)


def nll_from_counts(cal) -> np.ndarray:
    """Mean negative log-likelihood of the true class (natural log) from ``calibration_counts`` sums."""
    last = np.asarray(cal, dtype=np.float64)[..., -1, :]
    return np.divide(last[..., 1], last[..., 0], out=np.full(last.shape[:-1], np.nan), where=last[..., 0] > 0)


def brier_from_counts(cal) -> np.ndarray:
    """Multi-class Brier score (mean over rows of sum_c (p_c - onehot_c)^2, in [0, 2]) from ``calibration_counts``."""
    last = np.asarray(cal, dtype=np.float64)[..., -1, :]
    return np.divide(last[..., 2], last[..., 0], out=np.full(last.shape[:-1], np.nan), where=last[..., 0] > 0)


def reliability(y_true, probs, n_bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, mean confidence, accuracy) per confidence bin, for a reliability diagram (NaN in empty bins)."""
    cal = calibration_counts(np.zeros(len(y_true), np.int64), y_true, probs, 1, n_bins)[0, :-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return cal[:, 0], cal[:, 1] / cal[:, 0], cal[:, 2] / cal[:, 0]


# ---------------------------------------------------------------------------------------------------------
# Speaker-level bootstrap
# ---------------------------------------------------------------------------------------------------------

def speaker_resample_counts(n_speakers: int, n_boot: int = 500, seed: Seed = 0) -> np.ndarray:
    """(n_boot, n_speakers) how often each speaker is drawn in each resample: ``n_speakers`` draws with
    replacement per resample from ``np.random.default_rng(seed)`` (the draws are ``rng.integers(0, S,
    (n_boot, S))``, so a loop over them reproduces the same resamples)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_speakers, size=(n_boot, n_speakers))
    offsets = (np.arange(n_boot) * n_speakers)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=n_boot * n_speakers).reshape(n_boot, n_speakers)


def resample_stats(per_speaker, counts) -> np.ndarray:
    """Pooled statistics of every resample: sum over speakers of count x per-speaker statistics,
    (n_boot, S) x (S, ...) -> (n_boot, ...)."""
    return np.tensordot(np.asarray(counts, dtype=np.float64), np.asarray(per_speaker, dtype=np.float64), axes=1)


def percentile_interval(replicates, level: float = 0.95):
    """Percentile interval (NumPy's default linear interpolation) of the finite bootstrap replicates along the
    last axis: (lo, hi) floats for a 1-D input, arrays for (..., n_boot); NaN where no replicate is finite."""
    r = np.asarray(replicates, dtype=np.float64)
    srt = np.sort(np.where(np.isfinite(r), r, np.nan), axis=-1)  # NaN sorts last
    n_ok = np.isfinite(srt).sum(axis=-1)
    out = []
    for q in (0.5 * (1 - level), 0.5 * (1 + level)):
        pos = q * np.maximum(n_ok - 1, 0)
        i0 = np.floor(pos).astype(np.int64)
        i1 = np.minimum(i0 + 1, np.maximum(n_ok - 1, 0))
        v0 = np.take_along_axis(srt, i0[..., None], axis=-1)[..., 0]
        v1 = np.take_along_axis(srt, i1[..., None], axis=-1)[..., 0]
        v = np.where(n_ok > 0, v0 + (pos - i0) * (v1 - v0), np.nan)
        out.append(float(v) if v.ndim == 0 else v)
    return out[0], out[1]


def speaker_bootstrap(per_speaker, statistic: Callable[[np.ndarray], np.ndarray], n_boot: int = 500,
                      seed: Seed = 0) -> np.ndarray:
    """Bootstrap replicates (n_boot,) of a metric: resample speakers with replacement, pool the drawn
    speakers' additive statistics (``per_speaker``, (S, ...)) and apply ``statistic`` to the pooled sums."""
    per_speaker = np.asarray(per_speaker, dtype=np.float64)
    counts = speaker_resample_counts(per_speaker.shape[0], n_boot, seed)
    return np.asarray(statistic(resample_stats(per_speaker, counts)), dtype=np.float64)


def paired_difference(stats_a, stats_b, statistic: Callable[[np.ndarray], np.ndarray],
                      counts=None) -> tuple[float, np.ndarray | None]:
    """(statistic of A minus statistic of B on the pooled sums, its bootstrap replicates) from two systems'
    additive per-speaker statistics over the SAME speakers ((S, ...) each, rows aligned): every resample in
    ``counts`` ((n_boot, S), e.g. :func:`speaker_resample_counts`) draws the same speakers for both, so the
    interval is of the paired difference. No ``counts``: no replicates (None)."""
    a = np.asarray(stats_a, dtype=np.float64)
    b = np.asarray(stats_b, dtype=np.float64)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"paired statistics need the same speakers: {a.shape[0]} against {b.shape[0]}")
    point = float(statistic(a.sum(axis=0)) - statistic(b.sum(axis=0)))
    if counts is None:
        return point, None
    return point, np.asarray(statistic(resample_stats(a, counts)) - statistic(resample_stats(b, counts)), np.float64)


def paired_uar_ci(y_true, pred_a, pred_b, speakers, n_boot: int = 500, seed: Seed = 0,
                  level: float = 0.95) -> tuple[float, float, float]:
    """(UAR of ``pred_a`` minus UAR of ``pred_b``, and the speaker-bootstrap interval of that difference): each
    resample draws speakers with replacement and scores both systems on the drawn speakers' utterances."""
    y = np.asarray(y_true, np.int64)
    a, b = np.asarray(pred_a, np.int64), np.asarray(pred_b, np.int64)
    names, codes = np.unique(np.asarray(speakers), return_inverse=True)
    c = int(max(y.max(), a.max(), b.max())) + 1
    s = len(names)
    point, reps = paired_difference(confusion_counts(codes, y, a, s, c), confusion_counts(codes, y, b, s, c),
                                    uar_from_confusion, speaker_resample_counts(s, n_boot, seed))
    lo, hi = percentile_interval(reps, level)
    return point, lo, hi


def uar_ci(y_true, y_pred, speakers, n_boot: int = 500, seed: Seed = 0, level: float = 0.95) -> tuple[float, float]:
    """Speaker-level bootstrap interval of the UAR of ``y_pred`` (resampling speakers, pooling their utterances)."""
    y = np.asarray(y_true, np.int64)
    p = np.asarray(y_pred, np.int64)
    names, codes = np.unique(np.asarray(speakers), return_inverse=True)
    conf = confusion_counts(codes, y, p, len(names), int(max(y.max(), p.max())) + 1)
    return percentile_interval(speaker_bootstrap(conf, uar_from_confusion, n_boot, seed), level)


def ccc_ci(y_true, y_pred, speakers, n_boot: int = 500, seed: Seed = 0, level: float = 0.95) -> tuple[float, float]:
    """Speaker-level bootstrap interval of the CCC (resampling speakers, pooling their utterances)."""
    names, codes = np.unique(np.asarray(speakers), return_inverse=True)
    m = moments(y_true, y_pred, codes, len(names))
    return percentile_interval(speaker_bootstrap(m, ccc_from_moments, n_boot, seed), level)
