"""Metrics against scikit-learn / SciPy / NumPy formulas / hand-computed cases, and the speaker bootstrap against
a plain loop and the confidence-intervals package."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    mean_squared_error,
    top_k_accuracy_score,
)

from ray_ser import metrics as M


def _random(n=300, c=5, seed=0, missing_class=True):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c - 1 if missing_class else c, n)  # the last class never occurs as truth
    probs = rng.dirichlet(np.ones(c), n)
    probs[np.arange(n), y] += rng.uniform(0, 0.5, n)
    probs /= probs.sum(1, keepdims=True)
    return y, probs


def test_categorical_metrics_match_sklearn_and_confusion_forms():
    y, probs = _random()
    pred = probs.argmax(1)
    assert (pred == 4).any()  # a predicted class that is never true: the awkward case for UAR and F1
    conf = M.confusion(y, pred, 5)
    np.testing.assert_array_equal(conf, confusion_matrix(y, pred, labels=range(5)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_uar = balanced_accuracy_score(y, pred)
    assert M.uar(y, pred) == pytest.approx(ref_uar, abs=1e-12)
    assert M.uar_from_confusion(conf) == pytest.approx(ref_uar, abs=1e-12)
    assert M.wa(y, pred) == M.wa_from_confusion(conf) == pytest.approx(accuracy_score(y, pred))
    assert M.f1_macro(y, pred) == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    assert M.f1_macro_from_confusion(conf) == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    assert M.f1_micro(y, pred) == pytest.approx(f1_score(y, pred, average="micro"), abs=1e-12)
    # batched: a stack of confusions gives one value each
    stacked = np.stack([conf, confusion_matrix(y[:100], pred[:100], labels=range(5))])
    np.testing.assert_allclose(M.f1_macro_from_confusion(stacked),
                               [f1_score(y, pred, average="macro"), f1_score(y[:100], pred[:100], average="macro")])


def test_kbest_uar_hand_case_where_2best_differs_from_1best():
    y = np.array([0, 0, 1, 2])
    probs = np.array([[0.6, 0.3, 0.1],   # true 0, rank 0
                      [0.3, 0.6, 0.1],   # true 0, rank 1: right from 2-best on
                      [0.5, 0.2, 0.3],   # true 1, rank 2: right only at 3-best
                      [0.2, 0.5, 0.3]])  # true 2, rank 1
    np.testing.assert_array_equal(M.true_rank(y, probs), [0, 1, 2, 1])
    # 1-best: recalls 1/2, 0, 0; 2-best: 1, 0, 1; 3-best: all right
    assert M.kbest_uar(y, probs, 1) == pytest.approx(1 / 6)
    assert M.kbest_uar(y, probs, 2) == pytest.approx(2 / 3)
    assert M.kbest_uar(y, probs, 3) == pytest.approx(1.0)
    assert M.kbest_uar(y, probs, 1) == pytest.approx(M.uar(y, probs.argmax(1)))


def test_kbest_uar_matches_sklearn_top_k_with_balanced_weights_and_never_falls():
    y, probs = _random(n=400, c=7, seed=1)
    weights = 1.0 / np.bincount(y)[y]  # each class weighs the same: top-k accuracy becomes top-k UAR
    values = []
    for k in (1, 2, 3, 4):
        ref = top_k_accuracy_score(y, probs, k=k, labels=np.arange(7), sample_weight=weights)
        assert M.kbest_uar(y, probs, k) == pytest.approx(ref, abs=1e-12)
        values.append(M.kbest_uar(y, probs, k))
    assert values == sorted(values) and values[0] < values[-1]


def test_true_rank_breaks_ties_like_argmax():
    probs = np.array([[0.4, 0.4, 0.2], [0.4, 0.4, 0.2], [1 / 3, 1 / 3, 1 / 3]])
    y = np.array([0, 1, 2])
    np.testing.assert_array_equal(M.true_rank(y, probs), [0, 1, 2])
    np.testing.assert_array_equal(M.topk_correct(y, probs, 1), probs.argmax(1) == y)


def test_per_speaker_uar_and_pauar_known_speakers():
    # speaker a: all right (1.0); b: class 0 right, class 1 wrong (0.5); c: class 0 1/2, class 1 1/1 (0.75);
    # d: only class 2, 1 of 4 right (0.25: averaged over the one class d has)
    rows = [("a", 0, 1), ("a", 1, 1), ("b", 0, 1), ("b", 1, 0), ("c", 0, 1), ("c", 0, 0), ("c", 1, 1),
            ("d", 2, 1), ("d", 2, 0), ("d", 2, 0), ("d", 2, 0)]
    spk, y, ok = zip(*rows)
    su = M.per_speaker_uar(np.array(y), np.array(ok, bool), np.array(spk))
    assert su == pytest.approx({"a": 1.0, "b": 0.5, "c": 0.75, "d": 0.25})
    assert M.pauar(su, 0.50) == pytest.approx(3 / 4)
    assert M.pauar(su, 0.75) == pytest.approx(2 / 4)
    # a float sum of fractions that is 0.75 only up to rounding still reaches the 0.75 threshold
    assert M.pauar([(2 / 3 + 5 / 6) / 2 - 1e-15], 0.75) == 1.0


def test_pdf_overlap_and_js_divergence_hand_case():
    p = np.array([[1.0, 0.0], [0.2, 0.8]])
    q = np.array([[0.5, 0.5], [0.2, 0.8]])
    np.testing.assert_allclose(M.pdf_overlap(p, q), [0.5, 1.0])
    # JS in bits from its definition: H(m) - (H(p) + H(q)) / 2 with m = (p + q) / 2
    def h(x):
        x = x[x > 0]
        return -(x * np.log2(x)).sum()
    ref = h(np.array([0.75, 0.25])) - (h(p[0]) + h(q[0])) / 2
    np.testing.assert_allclose(M.js_divergence(p, q), [ref, 0.0], atol=1e-12)
    assert ref == pytest.approx(0.311278, abs=1e-6)
    # unnormalised rows are renormalised first
    np.testing.assert_allclose(M.pdf_overlap(2 * p, q), [0.5, 1.0])


def _ccc_numpy(x, y):
    return 2 * np.cov(x, y, bias=True)[0, 1] / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def test_ccc_pearson_mse_against_references():
    rng = np.random.default_rng(2)
    x = rng.normal(3, 1, 200)
    y = 0.7 * x + 1.2 + rng.normal(0, 0.6, 200)
    assert M.ccc(x, y) == pytest.approx(_ccc_numpy(x, y), abs=1e-12)
    assert M.ccc(x, x) == pytest.approx(1.0)
    assert M.ccc(x, x + 1) < 1  # CCC, unlike Pearson, punishes a bias
    assert M.pearson(x, y) == pytest.approx(pearsonr(x, y).statistic, abs=1e-12)
    assert M.mse(x, y) == pytest.approx(mean_squared_error(x, y))
    # the moment forms (used by the tables and the bootstrap), also far from zero where sums lose precision
    for shift in (0.0, 1e6):
        m = M.moments(x + shift, y + shift).sum(0)
        assert M.ccc_from_moments(m) == pytest.approx(_ccc_numpy(x, y), abs=1e-9)
        assert M.pearson_from_moments(m) == pytest.approx(pearsonr(x, y).statistic, abs=1e-9)
        assert M.mse_from_moments(m) == pytest.approx(mean_squared_error(x, y), rel=1e-9)
    assert np.isnan(M.pearson_from_moments(M.moments(x, np.full_like(x, 2.0)).sum(0)))


def test_ccc_against_audmetric():
    audmetric = pytest.importorskip("audmetric")
    rng = np.random.default_rng(3)
    x, y = rng.normal(0, 1, 100), rng.normal(0.2, 1.3, 100)
    assert M.ccc(x, y) == pytest.approx(audmetric.concordance_cc(x, y), abs=1e-12)


def test_ccc_against_torchmetrics():
    torchmetrics = pytest.importorskip("torchmetrics")
    import torch

    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, 500)
    y = 0.8 * x + 0.3 + rng.normal(0, 0.5, 500)
    ref = torchmetrics.functional.concordance_corrcoef(torch.tensor(y), torch.tensor(x)).item()
    # torchmetrics uses n-1 moments (with the plain squared mean difference): it differs from Lin's by O(1/n)
    unbiased = 2 * np.cov(x, y)[0, 1] / (x.var(ddof=1) + y.var(ddof=1) + (x.mean() - y.mean()) ** 2)
    assert ref == pytest.approx(unbiased, abs=1e-6)
    assert M.ccc(x, y) == pytest.approx(ref, abs=2e-3)


def test_mse_per_likert_bin_hand_case():
    true = np.array([1.2, 0.9, 2.5, 3.4, 4.6])
    pred = np.array([2.0, 1.0, 2.5, 3.0, 3.0])
    out = M.mse_per_bin(true, pred)
    assert set(out) == {1.0, 3.0, 5.0}  # 2.5 rounds half up to 3
    assert out[1.0][0] == pytest.approx(((0.8 ** 2) + (0.1 ** 2)) / 2) and out[1.0][1] == 2
    assert out[3.0][0] == pytest.approx((0 + 0.4 ** 2) / 2)
    assert out[5.0] == pytest.approx((1.6 ** 2, 1))


def test_percentile_interval_matches_numpy_rowwise_and_ignores_nan():
    rng = np.random.default_rng(5)
    r = rng.normal(size=(4, 101))
    r[1, :7] = np.nan
    lo, hi = M.percentile_interval(r)
    for i in range(4):
        ok = r[i][np.isfinite(r[i])]
        assert (lo[i], hi[i]) == pytest.approx(tuple(np.percentile(ok, [2.5, 97.5])))
    assert np.isnan(M.percentile_interval(np.full(10, np.nan))).all()


def _speaker_data(n_speakers, seed=0, n_per_speaker=28, c=7):
    """Per speaker a skill; predictions right with probability rising with skill, else a random class."""
    rng = np.random.default_rng(seed)
    skill = rng.uniform(0.3, 0.95, n_speakers)
    spk = np.repeat(np.arange(n_speakers), n_per_speaker)
    y = np.tile(np.arange(n_per_speaker) % c, n_speakers)
    right = rng.uniform(size=spk.size) < skill[spk]
    pred = np.where(right, y, rng.integers(0, c, spk.size))
    return y, pred, np.array([f"s{s:03d}" for s in spk])


def test_bootstrap_equals_a_plain_loop_over_the_same_draws():
    y, pred, spk = _speaker_data(12, seed=1)
    names, codes = np.unique(spk, return_inverse=True)
    n_boot, seed = 200, 7
    lo, hi = M.uar_ci(y, pred, spk, n_boot=n_boot, seed=seed)
    draws = np.random.default_rng(seed).integers(0, len(names), size=(n_boot, len(names)))
    ref = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for d in draws:  # pool the utterances of the drawn speakers (a speaker drawn twice counts twice)
            rows = np.concatenate([np.flatnonzero(codes == s) for s in d])
            ref.append(balanced_accuracy_score(y[rows], pred[rows]))
    assert (lo, hi) == pytest.approx(tuple(np.percentile(ref, [2.5, 97.5])), abs=1e-12)


def test_bootstrap_contains_point_and_narrows_with_more_speakers():
    widths = []
    for n_speakers in (10, 80):
        y, pred, spk = _speaker_data(n_speakers, seed=2)
        lo, hi = M.uar_ci(y, pred, spk, n_boot=500, seed=0)
        assert lo <= M.uar(y, pred) <= hi
        widths.append(hi - lo)
    assert widths[1] < 0.6 * widths[0]  # ~ 1/sqrt(8) in theory
    rng = np.random.default_rng(0)
    spk = np.repeat(np.arange(15), 20)
    x = rng.normal(0, 1, spk.size) + rng.normal(0, 0.5, 15)[spk]
    yh = 0.6 * x + rng.normal(0, 0.5, spk.size)
    lo, hi = M.ccc_ci(x, yh, spk, n_boot=500)
    assert lo < M.ccc(x, yh) < hi


def test_speaker_bootstrap_comparable_to_confidence_intervals_package():
    ci_pkg = pytest.importorskip("confidence_intervals")
    y, pred, spk = _speaker_data(12, seed=3)  # small: the package loops in Python (scikit-learn resample calls)
    names, codes = np.unique(spk, return_inverse=True)
    conf = M.confusion_counts(codes, y, pred, len(names), 7)
    ours = M.uar_ci(y, pred, spk, n_boot=1000, seed=0)

    # (1) the package's speaker-conditioned bootstrap on one row per speaker is our one-level speaker bootstrap
    # (its within-speaker resample of a single row is the row itself); only the random draws differ.
    def pooled_uar(idx):
        return float(M.uar_from_confusion(conf[np.asarray(idx)].sum(0)))
    rows = np.arange(len(names))
    pkg1 = ci_pkg.Bootstrap(300, pooled_uar).get_conf_int(rows, None, conditions=rows)
    assert ours == pytest.approx(pkg1, abs=0.03)

    # (2) on utterance rows the package also resamples utterances within each drawn speaker (two levels), so
    # its interval is a little wider, but it must tell the same story.
    def uar_of(labels, decisions):
        return float(M.uar_from_confusion(M.confusion_counts(np.zeros(len(labels), int), labels, decisions, 1, 7)[0]))
    pkg2 = ci_pkg.Bootstrap(150, uar_of).get_conf_int(pred, y, conditions=codes)
    assert ours == pytest.approx(pkg2, abs=0.06)
    assert pkg2[1] - pkg2[0] > 0.9 * (ours[1] - ours[0])


def test_calibration_counts_give_ece_brier_nll_of_references_and_resample_like_a_loop():
    import torch
    from sklearn.metrics import brier_score_loss, log_loss
    from torchmetrics.functional.classification import multiclass_calibration_error

    y, probs = _random(400, 5, seed=3, missing_class=False)
    probs = probs ** 3 / (probs ** 3).sum(1, keepdims=True)  # overconfident: a large ECE
    cal = M.calibration_counts(np.zeros(len(y), int), y, probs, 1)[0]
    ece = float(multiclass_calibration_error(torch.tensor(probs), torch.tensor(y), num_classes=5, n_bins=15))
    assert M.ece_from_counts(cal) == pytest.approx(ece, abs=1e-6) and ece > 0.05
    assert M.nll_from_counts(cal) == pytest.approx(log_loss(y, probs, labels=range(5)), rel=1e-12)
    assert M.brier_from_counts(cal) == pytest.approx(brier_score_loss(y, probs, labels=list(range(5))), rel=1e-12)
    # a perfectly calibrated top class: confidence 0.6 in one bin, right 60 % of the time
    y2 = np.array([0] * 6 + [1] * 4)
    p2 = np.tile([0.6, 0.4], (10, 1))
    assert M.ece_from_counts(M.calibration_counts(np.zeros(10, int), y2, p2, 1)[0]) == pytest.approx(0.0)
    assert M.confidence_bin([0.0, 1 / 15, 0.0667, 1.0]).tolist() == [0, 0, 1, 14]  # bins (lo, hi]
    n, conf, acc = M.reliability(y2, p2)
    assert n[8] == 10 and conf[8] == pytest.approx(0.6) and acc[8] == pytest.approx(0.6) and np.isnan(acc[0])

    # per-speaker sums resampled = the metric on the pooled rows of the drawn speakers
    spk = np.arange(len(y)) % 8
    per = M.calibration_counts(spk, y, probs, 8)
    draws = np.random.default_rng(5).integers(0, 8, size=(20, 8))
    reps = M.ece_from_counts(M.resample_stats(per, M.speaker_resample_counts(8, 20, 5)))
    for d, r in zip(draws, reps):
        rows = np.concatenate([np.flatnonzero(spk == s) for s in d])
        ref = float(multiclass_calibration_error(torch.tensor(probs[rows]), torch.tensor(y[rows]), num_classes=5,
                                                 n_bins=15))
        assert r == pytest.approx(ref, abs=1e-6)
