"""Saliency numerics: CCS against a literal eq. 1-3, binned MI against scikit-learn, masks, layers, PCA."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.feature_selection import mutual_info_regression
from sklearn.metrics import mutual_info_score

from ray_ser.analysis import saliency as sal


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def literal_ccs_per_target(H: np.ndarray, L: np.ndarray) -> np.ndarray:
    """eq. 1-2 written out with loops, one Pearson correlation at a time."""
    n, N = H.shape
    T = L.shape[1]
    S = np.zeros((N, T))
    for t in range(T):
        for k in range(N):
            direct = abs(_corr(H[:, k], L[:, t]))
            gamma = 0.0
            for j in range(N):
                if j != k:
                    w_j = abs(_corr(H[:, j], L[:, t]))
                    gamma += w_j * abs(_corr(H[:, k], H[:, j]))
            S[k, t] = direct + gamma / (N - 1)
    return S


def literal_ccs(H: np.ndarray, L: np.ndarray) -> np.ndarray:
    return literal_ccs_per_target(H, L).mean(axis=1)  # eq. 3


def literal_mis(codes_h: np.ndarray, codes_l: np.ndarray) -> np.ndarray:
    N, T = codes_h.shape[1], codes_l.shape[1]
    S = np.zeros((N, T))
    for t in range(T):
        w = [mutual_info_score(codes_h[:, j], codes_l[:, t]) for j in range(N)]
        for k in range(N):
            red = sum(w[j] * mutual_info_score(codes_h[:, k], codes_h[:, j]) for j in range(N) if j != k)
            S[k, t] = w[k] + red / (N - 1)
    return S.mean(axis=1)


@pytest.fixture
def correlated_data():
    """n=200, N=12, T=3 with shared factors so that every term of eq. 1-2 is non-trivial."""
    rng = np.random.default_rng(7)
    n, N = 200, 12
    f = rng.standard_normal((n, 3))
    H = f @ rng.standard_normal((3, N)) + rng.standard_normal((n, N)) + 5.0
    L = f @ rng.standard_normal((3, 3)) + 0.5 * rng.standard_normal((n, 3))
    return H, L


def planted(n=600, N=16, k=5, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.standard_normal(n)
    H = rng.standard_normal((n, N))
    H[:, k] = y + 0.3 * rng.standard_normal(n)
    return H, y


# ------------------------------------------------------------------------------------------- CCS


def test_ccs_matches_literal_equations(correlated_data):
    H, L = correlated_data
    ref = literal_ccs(H, L)
    got = sal.ccs(H, L)
    assert got.shape == (12,)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    np.testing.assert_allclose(sal.ccs_per_target(H, L), literal_ccs_per_target(H, L), rtol=1e-5)
    # streamed in small chunks, and through the float32 path
    np.testing.assert_allclose(sal.ccs(H, L, chunk_rows=37), ref, rtol=1e-5)
    np.testing.assert_allclose(sal.ccs(H.astype(np.float32), L), ref, rtol=1e-4)


def test_ccs_single_target_is_one_column(correlated_data):
    H, L = correlated_data
    per = sal.ccs_per_target(H, L)
    assert per.shape == (12, 3)
    np.testing.assert_allclose(sal.ccs(H, L[:, 1]), per[:, 1], rtol=1e-12)
    np.testing.assert_allclose(sal.ccs(H, L), per.mean(axis=1), rtol=1e-12)


def test_correlations_match_numpy(correlated_data):
    H, L = correlated_data
    C, R = sal.correlations(H, L)
    full = np.corrcoef(np.hstack([H, L]).T)
    np.testing.assert_allclose(C, full[:12, :12], atol=1e-12)
    np.testing.assert_allclose(R, full[:12, 12:], atol=1e-12)


def test_planted_signal_ranks_first_ccs_and_mis():
    H, y = planted(k=5)
    c = sal.ccs(H, y)
    m = sal.mis(H, y)
    assert int(np.argmax(c)) == 5 and sal.rank(c)[5] == 0
    assert int(np.argmax(m)) == 5 and sal.rank(m)[5] == 0
    assert c[5] > 0.9  # |corr| ~ 0.96 plus a small redundancy term
    assert c[5] > 3 * np.sort(c)[-2]
    assert m[5] > 3 * np.sort(m)[-2]


def test_constant_columns_give_finite_scores():
    rng = np.random.default_rng(1)
    H = rng.standard_normal((300, 6))
    H[:, 2] = 0.1  # not exactly representable: a float mean would leave tiny residuals
    H[:, 4] = -3.0
    L = np.column_stack([H[:, 0] + rng.standard_normal(300), np.full(300, 2.5)])  # second target constant
    c = sal.ccs_per_target(H, L)
    m = sal.mis_per_target(H, L)
    assert np.isfinite(c).all() and np.isfinite(m).all()
    assert c[2].tolist() == [0.0, 0.0] and c[4].tolist() == [0.0, 0.0]
    assert (c[:, 1] == 0).all()  # nothing correlates with a constant target
    assert (m[:, 1] == 0).all() and m[2, 0] == 0 and m[4, 0] == 0
    np.testing.assert_allclose(c, literal_ccs_per_target(H, L), rtol=1e-5, atol=1e-12)
    C, _ = sal.correlations(H, L)
    assert C[2, 2] == 0 and (C[2] == 0).all() and C[0, 0] == 1


def test_category_pdf_targets():
    """Corpora without dimensional scores: the targets are the per-class PDF columns (n x C)."""
    rng = np.random.default_rng(3)
    n, N, C = 400, 10, 4
    cls = rng.integers(0, C, n)
    pdf = np.full((n, C), 0.1)
    pdf[np.arange(n), cls] = 0.7
    H = rng.standard_normal((n, N))
    H[:, 3] += 2.0 * (cls == 2)  # dimension 3 encodes class 2
    H[:, 8] -= 2.0 * (cls == 0)  # dimension 8 encodes class 0
    c = sal.ccs(H, pdf)
    m = sal.mis(H, pdf)
    np.testing.assert_allclose(c, literal_ccs(H, pdf), rtol=1e-5)
    assert set(np.argsort(-c)[:2]) == {3, 8}
    assert set(np.argsort(-m)[:2]) == {3, 8}


def test_bad_inputs():
    with pytest.raises(ValueError):
        sal.ccs(np.ones(5), np.ones(5))
    with pytest.raises(ValueError):
        sal.ccs(np.ones((5, 2)), np.ones(4))
    H = np.ones((5, 2))
    H[0, 0] = np.nan
    with pytest.raises(ValueError):
        sal.ccs(H, np.arange(5.0))


# -------------------------------------------------------------------------------------- binned MI


@pytest.mark.parametrize("n", [500, 9000])  # 9000 > 4095 rows: several packed GEMM slices
def test_binned_mi_matches_sklearn_on_codes(n):
    rng = np.random.default_rng(n)
    cx = rng.integers(0, 16, (n, 7))
    cx[:, 1] = (cx[:, 0] + rng.integers(0, 3, n)) % 16  # dependent pair
    cx[:, 6] = 4  # constant
    cy = rng.integers(0, 5, (n, 3))
    cy[:, 0] = cx[:, 0] % 5
    cross = sal.binned_mutual_info(cx, cy, block_dims=3)
    ref = np.array([[mutual_info_score(cx[:, i], cy[:, j]) for j in range(3)] for i in range(7)])
    np.testing.assert_allclose(cross, ref, rtol=0, atol=1e-6)
    assert cross[0, 0] > 0.5

    sym = sal.binned_mutual_info(cx, block_dims=2)  # symmetric: upper block triangle, mirrored
    ref = np.array([[mutual_info_score(cx[:, i], cx[:, j]) for j in range(7)] for i in range(7)])
    np.testing.assert_allclose(sym, ref, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(sym, sym.T)
    assert sym[6].max() == 0.0


def test_binned_mi_on_discretised_continuous_data():
    rng = np.random.default_rng(11)
    n = 3000
    x = rng.standard_normal((n, 5))
    x[:, 1] = x[:, 0] ** 2 + 0.5 * rng.standard_normal(n)
    y = np.column_stack([np.sin(x[:, 0]) + 0.2 * rng.standard_normal(n), rng.integers(0, 4, n)])
    for bins in (8, 16):
        cx = sal.discretise(x, bins)
        cy = sal.discretise(y, bins)
        got = sal.binned_mutual_info(cx, cy)
        ref = np.array([[mutual_info_score(cx[:, i], cy[:, j]) for j in range(2)] for i in range(5)])
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_mis_matches_literal_equations(correlated_data):
    H, L = correlated_data
    got = sal.mis(H, L, n_bins=6)
    ref = literal_mis(sal.discretise(H, 6), sal.discretise(L, 6))
    np.testing.assert_allclose(got, ref, rtol=1e-9)


def test_binned_mi_orders_like_mutual_info_regression():
    rng = np.random.default_rng(5)
    n = 4000
    y = rng.standard_normal(n)
    X = np.column_stack(
        [
            rng.standard_normal(n),  # noise
            y + 0.3 * rng.standard_normal(n),  # strong
            np.abs(y) + 1.0 * rng.standard_normal(n),  # weak, non-monotonic
            y + 1.0 * rng.standard_normal(n),  # medium
        ]
    )
    ours = sal.binned_mutual_info(sal.discretise(X), sal.discretise(y))[:, 0]
    ref = mutual_info_regression(X, y, random_state=0)
    assert np.argsort(-ours).tolist() == np.argsort(-ref).tolist() == [1, 3, 2, 0]


def test_discretise_equal_frequency_and_categories():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(1600)
    labels = rng.choice([-1.0, 3.0, 7.5], 1600)
    ties = np.repeat(np.arange(4.0), 400)  # 4 distinct values, fewer than the bins
    heavy = np.where(np.arange(1600) < 800, 0.0, rng.standard_normal(1600))  # half the mass on one value
    codes = sal.discretise(np.column_stack([x, labels, ties, heavy]), 16)
    assert codes.dtype == np.uint8 and codes.shape == (1600, 4)
    assert np.bincount(codes[:, 0], minlength=16).tolist() == [100] * 16
    np.testing.assert_array_equal(codes[:, 1], np.searchsorted([-1.0, 3.0, 7.5], labels))
    np.testing.assert_array_equal(codes[:, 2], ties.astype(int))
    # tied values share a bin; codes stay ordered with the values
    assert len(np.unique(codes[:800, 3])) == 1
    order = np.argsort(heavy, kind="stable")
    assert (np.diff(codes[order, 3].astype(int)) >= 0).all()
    assert codes.max() < 16
    np.testing.assert_array_equal(sal.discretise(x, 16)[:, 0], codes[:, 0])


# ---------------------------------------------------------------------------------- masks, layers


def test_mask_sizes_and_top_dims():
    scores = np.array([0.5, 0.9, 0.1, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4, 0.0])
    order = [1, 5, 3, 7, 0, 8, 4, 6, 2, 9]
    for ratio, size in [(0.8, 8), (0.6, 6), (0.4, 4)]:
        m = sal.dimension_mask(scores, ratio)
        assert m.dtype == bool and m.shape == (10,)
        assert int(m.sum()) == size
        assert set(np.flatnonzero(m)) == set(order[:size])
    assert sal.rank(scores).tolist() == [order.index(k) for k in range(10)]
    assert int(sal.dimension_mask(scores, 0.01).sum()) == 1  # at least one
    assert sal.dimension_mask(scores, 1.0).all()
    with pytest.raises(ValueError):
        sal.dimension_mask(scores, 0.0)


def test_rank_ties_to_lower_index_and_nan_last():
    s = np.array([0.2, 0.5, np.nan, 0.5, 0.2])
    assert sal.rank(s).tolist() == [2, 0, 4, 1, 3]
    assert sal.dimension_mask(s, 0.2).tolist() == [False, True, False, False, False]
    assert sal.dimension_mask(s, 0.6).tolist() == [True, True, False, True, False]


def test_kept_size_rounds_half_up():
    assert [sal.kept_size(10, r) for r in (0.8, 0.6, 0.4, 0.35, 0.05, 0.04)] == [8, 6, 4, 4, 1, 1]
    assert sal.kept_size(1024, 0.1) == 102


def test_layer_score_is_mean_of_top_fraction():
    s = np.arange(20, dtype=float)  # top 10% of 20 = {19, 18}
    assert sal.layer_score(s) == pytest.approx(18.5)
    assert sal.layer_score(s, top_fraction=1.0) == pytest.approx(9.5)
    assert sal.layer_score(np.array([0.3, 0.1])) == pytest.approx(0.3)  # at least one dimension


def test_rank_layers_picks_planted_layer():
    rng = np.random.default_rng(4)
    n, N = 500, 20
    y = rng.standard_normal(n)
    layers = {layer: rng.standard_normal((n, N)) for layer in range(5)}
    layers[3][:, 11] = y + 0.5 * rng.standard_normal(n)
    layers[1][:, 2] = y + 2.0 * rng.standard_normal(n)  # weaker signal in another layer
    per_ccs = {k: sal.ccs(H, y) for k, H in layers.items()}
    per_mis = {k: sal.mis(H, y) for k, H in layers.items()}
    assert sal.rank_layers(per_ccs)[:2] == [3, 1]
    assert sal.rank_layers(per_mis)[0] == 3
    assert sorted(sal.rank_layers(per_ccs)) == [0, 1, 2, 3, 4]
    # equal scores: lower layer first
    assert sal.rank_layers({2: np.ones(4), 0: np.ones(4), 1: np.zeros(4)}) == [0, 2, 1]


# -------------------------------------------------------------------------------------------- PCA


def test_pca_reduce_fitted_on_train_only():
    rng = np.random.default_rng(6)
    H_train = rng.standard_normal((120, 10)) @ rng.standard_normal((10, 10))
    H_test = rng.standard_normal((40, 10)) * 5 + 100.0  # shifted: a fit touching it would move the mean
    keep = sal.kept_size(10, 0.6)
    pca = sal.pca_reduce(H_train, keep)
    assert pca.n_components_ == 6 and pca.components_.shape == (6, 10)
    assert pca.n_samples_ == 120
    np.testing.assert_allclose(pca.mean_, H_train.mean(axis=0), atol=1e-12)
    Z_train, Z_test, pca2 = sal.pca_project(H_train, H_test, keep)
    assert Z_train.shape == (120, 6) and Z_test.shape == (40, 6)
    np.testing.assert_allclose(pca2.mean_, H_train.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(Z_test, (H_test - H_train.mean(axis=0)) @ pca2.components_.T, atol=1e-9)
    np.testing.assert_allclose(Z_train.mean(axis=0), 0, atol=1e-9)
    # variance of the kept components is the top of the train covariance spectrum
    ev = np.sort(np.linalg.eigvalsh(np.cov(H_train.T)))[::-1][:6]
    np.testing.assert_allclose(pca.explained_variance_, ev, rtol=1e-8)
    with pytest.raises(ValueError):
        sal.pca_reduce(H_train, 11)


# ------------------------------------------------------------------------------------------ table


def test_saliency_frame():
    c = np.array([0.2, 0.9, 0.5])
    m = np.array([0.1, 0.3, 0.2])
    df = sal.saliency_frame("whisper-base", "clean", 4, c, m)
    assert df.columns == ["model", "condition", "layer", "dim", "ccs", "mis", "rank"]
    assert df.schema == pl.Schema(sal.SALIENCY_SCHEMA)
    assert df["dim"].to_list() == [0, 1, 2]
    assert df["rank"].to_list() == [2, 0, 1]
    assert df["layer"].to_list() == [4, 4, 4]
    assert df["model"].to_list() == ["whisper-base"] * 3 and df["condition"].to_list() == ["clean"] * 3
    assert df["ccs"].to_list() == c.tolist() and df["mis"].to_list() == m.tolist()
    no_mis = sal.saliency_frame("m", "c", 0, c)
    assert no_mis["mis"].null_count() == 3 and no_mis.schema == df.schema
    with pytest.raises(ValueError):
        sal.saliency_frame("m", "c", 0, c, m[:2])
