"""Emotion saliency of a frozen speech model's layers and dimensions: CCS, MIS, masks, layer ranking, PCA.

Pure numerics: arrays in, arrays / data frames out; no I/O.  A *layer representation* ``H`` is an
``(n, N)`` matrix, one row per utterance (the per-utterance mean over frames of that layer's output),
one column per dimension.  A *target* matrix ``L`` is ``(n, T)``: one column per emotion target
(a 1-D ``(n,)`` array is taken as ``T = 1``).

Targets
-------
Corpora with dimensional scores use them directly: the columns are valence, activation and dominance
(per-utterance means over raters), as in the papers.  Corpora that only have categories use the
per-class probability columns of the utterance's label PDF (the ``(n, C)`` matrix of vote
proportions, or of the smoothed one-hot PDF), one target per class; each column says how strongly an
utterance expresses that class, so "correlation with the target" becomes "correlation with the
probability of that class", and eq. 3 averages over the C classes instead of over V/A/D.  Nothing
else changes: ``ccs(H, pdf)`` and ``mis(H, pdf)`` are the same calls.

Cross-correlation saliency (CCS)
--------------------------------
For dimension k of H and one target L::

    S_CCS(k)   = |corr(H_k, L)| + gamma_k                                            (eq. 1)
    gamma_k    = 1/(N-1) * sum_{j != k} w_j * |corr(H_k, H_j)|,  w_j = |corr(H_j, L)| (eq. 2)
    mu_CCS(k)  = mean over the targets of S_CCS(k)                                    (eq. 3)

with Pearson correlation; a constant column (dimension or target) has correlation 0 with everything.

Mutual-information saliency (MIS)
---------------------------------
The same structure with mutual information (nats) in place of |corr|::

    S_MIS(k) = MI(H_k, L) + 1/(N-1) * sum_{j != k} MI(H_j, L) * MI(H_k, H_j)

averaged over targets.  MI is the plug-in estimate on equal-frequency (quantile) bins, see
:func:`discretise` and :func:`binned_mutual_info`.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import polars as pl
from scipy.special import entr
from sklearn.decomposition import PCA

__all__ = [
    "ccs",
    "ccs_per_target",
    "correlations",
    "discretise",
    "binned_mutual_info",
    "mis",
    "mis_per_target",
    "kept_size",
    "rank",
    "dimension_mask",
    "layer_score",
    "rank_layers",
    "pca_reduce",
    "pca_project",
    "saliency_frame",
    "SALIENCY_SCHEMA",
]

DEFAULT_BINS = 8
"""Quantile bins per continuous variable for the binned MI estimator.

8 rather than 16: the plug-in MI of a B x B table is biased upwards by about (B-1)**2 / (2 n) nats,
0.21 nats for B=16 on EmoDB's 535 utterances (as large as a real dimension-emotion MI) but 0.05 for
B=8; and the pairwise N x N part costs ~B**2, so 8 bins are ~4x faster.  Pass ``n_bins=16`` for finer
bins on large corpora."""

_CHUNK_ROWS = 8192
"""Rows per chunk when streaming H for the Gram matrix (bounds temporaries to chunk x N)."""

_PACK_BITS = 12
_PACK_ROWS = (1 << _PACK_BITS) - 1
"""Rows per GEMM in the packed joint-histogram product; keeps every float32 partial sum below 2**24."""

_BLOCK_BYTES = 128 * 2**20
"""Budget for one block of one-hot indicators (n x block_dims x bins float32) in the MI products."""

_RIGHT_CACHE_BYTES = 512 * 2**20
"""Up to this size the packed right operand of the MI products is built once instead of per block."""


# --------------------------------------------------------------------------------------------------
# input checks


def _as_matrix(H: np.ndarray, name: str = "H") -> np.ndarray:
    H = np.asarray(H)
    if H.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n utterances x N dims), got shape {H.shape}")
    if not np.issubdtype(H.dtype, np.number) or np.issubdtype(H.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real-valued, got dtype {H.dtype}")
    return H


def _as_targets(targets: np.ndarray, n: int) -> np.ndarray:
    L = np.asarray(targets, dtype=np.float64)
    if L.ndim == 1:
        L = L[:, None]
    if L.ndim != 2 or L.shape[0] != n:
        raise ValueError(f"targets must be (n,) or (n, T) with n = {n}, got shape {np.shape(targets)}")
    if L.shape[1] == 0:
        raise ValueError("targets has no columns")
    if not np.isfinite(L).all():
        raise ValueError("targets contains NaN or inf")
    return L


def _compute_dtype(H: np.ndarray, dtype) -> np.dtype:
    if dtype is not None:
        return np.dtype(dtype)
    return np.dtype(np.float64) if H.dtype == np.float64 else np.dtype(np.float32)


# --------------------------------------------------------------------------------------------------
# CCS


def correlations(
    H: np.ndarray,
    targets: np.ndarray,
    *,
    dtype=None,
    chunk_rows: int = _CHUNK_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """Pearson correlations ``(C, R)``: ``C`` is the ``(N, N)`` dimension-dimension matrix, ``R`` the
    ``(N, T)`` dimension-target matrix.  Both float64, clipped to [-1, 1]; rows/columns of constant
    dimensions or targets are 0 (including the diagonal entry of a constant dimension).

    H is streamed in ``chunk_rows`` row chunks: pass 1 takes the column means (float64) and detects
    constant columns exactly (max == min); pass 2 centres each chunk and accumulates the Gram matrix
    ``Xc^T Xc`` with a ``dtype`` matmul (default: float64 for float64 H, else float32) into a float64
    accumulator, and ``Xc^T Lc`` likewise.  Centring before the product avoids the cancellation of
    the ``E[xy] - E[x]E[y]`` form.  Memory beyond H is O(chunk_rows * N + N^2).
    """
    H = _as_matrix(H)
    n, N = H.shape
    if n < 2:
        raise ValueError(f"need at least 2 utterances, got {n}")
    L = _as_targets(targets, n)
    cdt = _compute_dtype(H, dtype)
    chunk_rows = max(1, int(chunk_rows))

    total = np.zeros(N, np.float64)
    lo = np.full(N, np.inf)
    hi = np.full(N, -np.inf)
    for s in range(0, n, chunk_rows):
        X = H[s : s + chunk_rows]
        if not np.isfinite(X).all():
            raise ValueError("H contains NaN or inf")
        total += X.sum(axis=0, dtype=np.float64)
        np.minimum(lo, X.min(axis=0), out=lo)
        np.maximum(hi, X.max(axis=0), out=hi)
    mean = total / n
    mean_c = mean.astype(cdt)
    constant = hi == lo

    Lc = L - L.mean(axis=0)
    G = np.zeros((N, N), np.float64)
    XL = np.zeros((N, L.shape[1]), np.float64)
    for s in range(0, n, chunk_rows):
        Xc = H[s : s + chunk_rows].astype(cdt, copy=True)
        Xc -= mean_c
        G += Xc.T @ Xc
        XL += Xc.T @ Lc[s : s + chunk_rows].astype(cdt)

    sd = np.sqrt(np.clip(np.diag(G), 0.0, None))
    sd_ok = (sd > 0) & ~constant
    inv = np.where(sd_ok, 1.0 / np.where(sd_ok, sd, 1.0), 0.0)
    C = G * inv[:, None] * inv[None, :]
    np.fill_diagonal(C, sd_ok.astype(np.float64))

    sl = np.sqrt((Lc * Lc).sum(axis=0))
    l_const = L.max(axis=0) == L.min(axis=0)
    sl_ok = (sl > 0) & ~l_const
    inv_l = np.where(sl_ok, 1.0 / np.where(sl_ok, sl, 1.0), 0.0)
    R = XL * inv[:, None] * inv_l[None, :]
    return np.clip(C, -1.0, 1.0), np.clip(R, -1.0, 1.0)


def _redundancy_weighted(S_pair: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``1/(N-1) * sum_{j != k} S_pair[k, j] * W[j, t]`` for all k, t (eq. 2 as a matrix product)."""
    N = S_pair.shape[0]
    if N < 2:
        return np.zeros_like(W)
    # |C| @ w includes the j == k term S_pair[k, k] * w_k; take it off rather than copy-and-zero.
    return (S_pair @ W - np.diag(S_pair)[:, None] * W) / (N - 1)


def ccs_per_target(H: np.ndarray, targets: np.ndarray, *, dtype=None, chunk_rows: int = _CHUNK_ROWS) -> np.ndarray:
    """CCS of every dimension for every target, eq. 1-2: ``(N, T)`` float64.

    ``S[k, t] = |R[k, t]| + 1/(N-1) * sum_{j != k} |R[j, t]| * |C[k, j]|`` with ``C``, ``R`` from
    :func:`correlations`.  ``targets`` is ``(n, T)`` (V/A/D scores, or the per-class PDF probability
    columns for category-only corpora — see the module docstring) or ``(n,)``.
    """
    C, R = correlations(H, targets, dtype=dtype, chunk_rows=chunk_rows)
    W = np.abs(R)
    return W + _redundancy_weighted(np.abs(C), W)


def ccs(H: np.ndarray, targets: np.ndarray, *, dtype=None, chunk_rows: int = _CHUNK_ROWS) -> np.ndarray:
    """Cross-correlation saliency ``mu_CCS`` of every dimension, eq. 1-3: ``(N,)`` float64.

    The per-target scores of :func:`ccs_per_target` averaged over the targets (valence, activation,
    dominance; or, for a corpus with categories only, the ``C`` per-class probability columns of the
    label PDF, ``ccs(H, pdf)`` with ``pdf`` of shape ``(n, C)``).  Constant dimensions score 0.
    Cost: one ``N x N`` Gram product over n (float32 for float32 H), i.e. seconds for N=1024, n=100k.
    """
    return ccs_per_target(H, targets, dtype=dtype, chunk_rows=chunk_rows).mean(axis=1)


# --------------------------------------------------------------------------------------------------
# binned mutual information


def discretise(X: np.ndarray, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """Equal-frequency bin codes of every column of ``X`` (``(n, N)`` or ``(n,)``): uint8 ``(n, N)``
    with values in ``[0, n_bins)``.

    A column with at most ``n_bins`` distinct values (class labels, binary flags, a constant) is coded
    by its distinct values (code = index of the value among the sorted distinct values), so a discrete
    variable keeps its categories.  Otherwise the bin edges are the order statistics at ``i * n //
    n_bins`` (i = 1..n_bins-1) and a value's code is the number of edges <= it: bins hold n/n_bins
    values each, tied values always share a bin (so heavy ties can leave some bins empty).
    """
    X = np.asarray(X)
    if X.ndim == 1:
        X = X[:, None]
    X = _as_matrix(X, "X")
    if not 2 <= int(n_bins) <= 255:
        raise ValueError(f"n_bins must be in [2, 255], got {n_bins}")
    n_bins = int(n_bins)
    n, N = X.shape
    if n == 0:
        return np.zeros((0, N), np.uint8)
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or inf")
    S = np.sort(X, axis=0)
    distinct = np.ones((N,), np.int64)
    if n > 1:
        distinct += np.count_nonzero(S[1:] != S[:-1], axis=0)
    idx = (np.arange(1, n_bins) * n) // n_bins
    edges = S[idx, :].astype(np.float64)  # (n_bins - 1, N)
    for j in np.flatnonzero(distinct <= n_bins):
        u = np.unique(S[:, j]).astype(np.float64)
        edges[:, j] = np.inf
        edges[: len(u) - 1, j] = u[1:]
    del S
    codes = np.zeros((n, N), np.uint8)
    step = max(1, _CHUNK_ROWS * 64 // max(N, 1))
    for s in range(0, n, step):
        blk = X[s : s + step]
        out = codes[s : s + step]
        for e in edges:
            out += blk >= e
    return codes


def _check_codes(codes: np.ndarray, n_bins: int | None, name: str) -> tuple[np.ndarray, int]:
    codes = np.asarray(codes)
    if codes.ndim == 1:
        codes = codes[:, None]
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{name} must be a 2-D integer array of bin codes, got {codes.dtype} {codes.shape}")
    lo = int(codes.min()) if codes.size else 0
    hi = int(codes.max()) if codes.size else 0
    if lo < 0:
        raise ValueError(f"{name} has negative codes")
    B = hi + 1 if n_bins is None else int(n_bins)
    if hi >= B:
        raise ValueError(f"{name} has code {hi} >= n_bins {B}")
    if B > 4096:
        raise ValueError(f"{name}: at most 4096 bins supported, got {B}")
    return codes, max(B, 1)


def _entropies(codes: np.ndarray, B: int) -> np.ndarray:
    """Plug-in entropy (nats) of every column of a code matrix."""
    n, N = codes.shape
    counts = np.bincount((codes + np.arange(N) * B).ravel(), minlength=N * B).reshape(N, B)
    return entr(counts / n).sum(axis=1)


def _onehot_t(codes: np.ndarray, B: int) -> np.ndarray:
    """``(b * B, n)`` float32 indicator rows: row ``k * B + a`` is ``codes[:, k] == a``."""
    n, b = codes.shape
    out = np.zeros((b, B, n), np.float32)
    out[np.arange(b)[:, None], codes.T, np.arange(n)[None, :]] = 1.0
    return out.reshape(b * B, n)


def _packed(codes: np.ndarray, G: int) -> np.ndarray:
    """``(n, b * G)`` float32: bins 2g and 2g+1 of column k share column ``k * G + g`` as 1 and 2**12."""
    n, b = codes.shape
    out = np.zeros((n, b, G), np.float32)
    val = np.where(codes & 1, np.float32(1 << _PACK_BITS), np.float32(1.0))
    out[np.arange(n)[:, None], np.arange(b)[None, :], codes >> 1] = val
    return out.reshape(n, b * G)


def _joint_counts(left_t: np.ndarray, right: np.ndarray, bx: int, Bx: int, by: int, By: int) -> np.ndarray:
    """Joint histograms ``(bx, Bx, by, By)`` int64 of every (left column, right column) pair."""
    n = left_t.shape[1]
    G = right.shape[1] // by
    lo = np.zeros((bx * Bx, by * G), np.int64)
    hi = np.zeros((bx * Bx, by * G), np.int64)
    mask = np.int32((1 << _PACK_BITS) - 1)
    for s in range(0, n, _PACK_ROWS):
        # Every entry is c(a, 2g) + 4096 * c(a, 2g+1) over <= 4095 rows: an integer < 2**24, so the
        # float32 GEMM (non-negative integer partial sums) is exact and the two counts unpack losslessly.
        M = (left_t[:, s : s + _PACK_ROWS] @ right[s : s + _PACK_ROWS]).astype(np.int32)
        lo += M & mask
        hi += M >> _PACK_BITS
    counts = np.stack([lo, hi], axis=-1)  # (bx*Bx, by*G, 2): bin 2g, then 2g+1
    return counts.reshape(bx, Bx, by, 2 * G)[..., :By]


def binned_mutual_info(
    codes_x: np.ndarray,
    codes_y: np.ndarray | None = None,
    *,
    n_bins_x: int | None = None,
    n_bins_y: int | None = None,
    block_dims: int | None = None,
) -> np.ndarray:
    """Plug-in mutual information (nats) between every column of ``codes_x`` ``(n, Nx)`` and every
    column of ``codes_y`` ``(n, Ny)`` (default: ``codes_x`` itself, giving the symmetric ``(Nx, Nx)``
    matrix whose diagonal is each column's entropy).  Returns ``(Nx, Ny)`` float64, >= 0.

    For discrete codes this equals ``sklearn.metrics.mutual_info_score(codes_x[:, k], codes_y[:, j])``
    — ``MI = H(X) + H(Y) - H(X, Y)`` from the exact joint counts.  Use :func:`discretise` first for
    continuous data.

    All joint histograms come from matrix products: with one-hot bin indicators ``O_x`` (n x Nx*Bx) the
    joint counts of all pairs are ``O_x^T O_y``.  To halve the work the right side packs two bins into
    one float32 column (values 1 and 4096) and the product runs over <= 4095-row slices, where every
    sum is an exact integer below 2**24 that unpacks into the two counts.  Columns go in blocks of
    ``block_dims`` (default: about 128 MiB of indicators per block) and, in the symmetric case, only
    the upper block triangle is computed.  Cost ~ n * Nx * Ny * Bx * By / 2 flops (halved again when
    symmetric): N=1024, n=20k is ~0.7 TFLOP with 8 bins, ~2.7 with 16.
    """
    symmetric = codes_y is None
    cx, Bx = _check_codes(codes_x, n_bins_x, "codes_x")
    if symmetric:
        cy, By = cx, Bx
    else:
        cy, By = _check_codes(codes_y, n_bins_y, "codes_y")
    n, Nx = cx.shape
    Ny = cy.shape[1]
    if cy.shape[0] != n:
        raise ValueError(f"codes_x has {n} rows, codes_y {cy.shape[0]}")
    out = np.zeros((Nx, Ny), np.float64)
    if n == 0 or Nx == 0 or Ny == 0:
        return out
    hx = _entropies(cx, Bx)
    hy = hx if symmetric else _entropies(cy, By)
    G = (By + 1) // 2
    if block_dims is None:
        block_dims = _BLOCK_BYTES // (4 * n * max(Bx, G))
    bs = max(1, min(int(block_dims), max(Nx, Ny)))
    log_n = math.log(n)
    # the packed right side is built once when it fits the cache budget, else per block
    right_all = _packed(cy, G) if 4 * n * Ny * G <= _RIGHT_CACHE_BYTES else None
    for i0 in range(0, Nx, bs):
        i1 = min(i0 + bs, Nx)
        left_t = _onehot_t(cx[:, i0:i1], Bx)
        for j0 in range(i0 if symmetric else 0, Ny, bs):
            j1 = min(j0 + bs, Ny)
            right = _packed(cy[:, j0:j1], G) if right_all is None else right_all[:, j0 * G : j1 * G]
            joint = _joint_counts(left_t, right, i1 - i0, Bx, j1 - j0, By)
            # H(X, Y) = log n - sum c log c / n  (entr(c) = -c log c)
            hxy = log_n + entr(joint.astype(np.float64)).sum(axis=(1, 3)) / n
            block = np.clip(hx[i0:i1, None] + hy[None, j0:j1] - hxy, 0.0, None)
            block[hx[i0:i1] == 0, :] = 0.0  # a constant column: exactly 0, not rounding residue
            block[:, hy[j0:j1] == 0] = 0.0
            if symmetric and j0 == i0:  # keep the result exactly symmetric
                block = np.triu(block) + np.triu(block, 1).T
            out[i0:i1, j0:j1] = block
            if symmetric:
                out[j0:j1, i0:i1] = block.T
    return out


def mis_per_target(
    H: np.ndarray,
    targets: np.ndarray,
    *,
    n_bins: int = DEFAULT_BINS,
    block_dims: int | None = None,
) -> np.ndarray:
    """Mutual-information saliency of every dimension for every target: ``(N, T)`` float64.

    ``S[k, t] = MI(H_k, L_t) + 1/(N-1) * sum_{j != k} MI(H_j, L_t) * MI(H_k, H_j)``, all MI binned on
    ``n_bins`` equal-frequency bins (:func:`discretise`; a target with <= n_bins distinct values, such
    as integer class labels, keeps its categories).  The pairwise ``N x N`` MI dominates the cost,
    ~n * N**2 * n_bins**2 / 4 flops: for N=1024, n=20k about 20 s with 8 bins and 1 min with 16 bins
    on two idle cores.
    """
    H = _as_matrix(H)
    n, N = H.shape
    if n < 2:
        raise ValueError(f"need at least 2 utterances, got {n}")
    L = _as_targets(targets, n)
    ch = discretise(H, n_bins)
    cl = discretise(L, n_bins)
    mi_hl = binned_mutual_info(ch, cl, n_bins_x=n_bins, n_bins_y=n_bins, block_dims=block_dims)
    mi_hh = binned_mutual_info(ch, n_bins_x=n_bins, block_dims=block_dims)
    return mi_hl + _redundancy_weighted(mi_hh, mi_hl)


def mis(H: np.ndarray, targets: np.ndarray, *, n_bins: int = DEFAULT_BINS, block_dims: int | None = None) -> np.ndarray:
    """Mutual-information saliency of every dimension, averaged over targets: ``(N,)`` float64.

    Targets as for :func:`ccs` (V/A/D, or the per-class PDF columns for category-only corpora).
    """
    return mis_per_target(H, targets, n_bins=n_bins, block_dims=block_dims).mean(axis=1)


# --------------------------------------------------------------------------------------------------
# selection


def kept_size(n_dims: int, keep_ratio: float) -> int:
    """``round(keep_ratio * n_dims)`` (halves round up), at least 1: the size of a mask or PCA."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    if n_dims < 1:
        raise ValueError(f"n_dims must be >= 1, got {n_dims}")
    # the 1e-9 absorbs binary representation error (0.35 * 10 = 3.4999999999999996 rounds to 4)
    return int(min(n_dims, max(1, math.floor(keep_ratio * n_dims + 0.5 + 1e-9))))


def _order(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    s = np.where(np.isnan(s), -np.inf, s)
    # most salient first; ties by lower index (lexsort sorts by the last key first)
    return np.lexsort((np.arange(s.size), -s))


def rank(scores: np.ndarray) -> np.ndarray:
    """Per-dimension rank, int64 ``(N,)``: 0 for the most salient, ties to the lower index, NaN last."""
    order = _order(scores)
    r = np.empty(order.size, np.int64)
    r[order] = np.arange(order.size)
    return r


def dimension_mask(scores: np.ndarray, keep_ratio: float) -> np.ndarray:
    """Boolean ``(N,)`` mask of the top :func:`kept_size` ``(N, keep_ratio)`` dimensions by score."""
    scores = np.asarray(scores)
    return rank(scores) < kept_size(scores.size, keep_ratio)


def layer_score(scores: np.ndarray, top_fraction: float = 0.1) -> float:
    """A layer's saliency: the mean of its top ``top_fraction`` dimension scores (at least one).

    Why: a layer is useful if it *has* emotion-salient dimensions — the masks keep the top dimensions
    and drop the rest — so it is judged by its most salient ones rather than by the mean over all N,
    which the many uninformative dimensions dilute.  Taking a fraction rather than a fixed count keeps
    layers (or models) of different widths comparable, and a mean over ~10% is steadier than the
    single maximum.  ``top_fraction=1`` gives the plain mean.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {s.shape}")
    k = kept_size(s.size, top_fraction)
    s = np.where(np.isnan(s), -np.inf, s)
    top = np.partition(s, s.size - k)[s.size - k :]
    return float(np.mean(top))


def rank_layers(per_layer: Mapping[int, np.ndarray], top_fraction: float = 0.1) -> list[int]:
    """Layer indices ordered best first by :func:`layer_score`; ties to the lower layer index."""
    scored = [(-layer_score(v, top_fraction), int(k)) for k, v in per_layer.items()]
    return [k for _, k in sorted(scored)]


# --------------------------------------------------------------------------------------------------
# PCA baseline


def pca_reduce(H_train: np.ndarray, keep: int, *, random_state: int = 0) -> PCA:
    """A PCA with ``keep`` components fitted on the training rows only (the papers' baseline; use
    ``keep = kept_size(N, keep_ratio)`` to match a saliency mask).  Centred, not whitened."""
    H_train = _as_matrix(H_train, "H_train")
    n, N = H_train.shape
    keep = int(keep)
    if not 1 <= keep <= min(n, N):
        raise ValueError(f"keep must be in [1, min(n_train, N)] = [1, {min(n, N)}], got {keep}")
    return PCA(n_components=keep, svd_solver="full", random_state=random_state).fit(H_train)


def pca_project(
    H_train: np.ndarray, H_test: np.ndarray, keep: int, *, random_state: int = 0
) -> tuple[np.ndarray, np.ndarray, PCA]:
    """``(Z_train, Z_test, pca)``: both splits projected on a PCA fitted on ``H_train`` alone."""
    H_test = _as_matrix(H_test, "H_test")
    pca = pca_reduce(H_train, keep, random_state=random_state)
    if H_test.shape[1] != pca.n_features_in_:
        raise ValueError(f"H_test has {H_test.shape[1]} dims, H_train {pca.n_features_in_}")
    return pca.transform(H_train), pca.transform(H_test), pca


# --------------------------------------------------------------------------------------------------
# the store table

SALIENCY_SCHEMA: dict[str, pl.DataType] = {
    "model": pl.Utf8,
    "condition": pl.Utf8,
    "layer": pl.Int32,
    "dim": pl.Int32,
    "ccs": pl.Float64,
    "mis": pl.Float64,
    "rank": pl.Int32,
}
"""Columns of the per-dimension saliency table (one row per model x condition x layer x dim)."""


def saliency_frame(
    model: str,
    condition: str,
    layer: int,
    ccs_scores: np.ndarray,
    mis_scores: np.ndarray | None = None,
) -> pl.DataFrame:
    """One layer's saliency table: columns model, condition, layer, dim, ccs, mis, rank.

    ``rank`` is the CCS rank within the layer (0 = most salient, :func:`rank`); ``mis`` is null when
    ``mis_scores`` is None.  Rows are in dimension order.
    """
    c = np.asarray(ccs_scores, dtype=np.float64)
    if c.ndim != 1:
        raise ValueError(f"ccs_scores must be 1-D, got shape {c.shape}")
    N = c.size
    if mis_scores is None:
        m = pl.Series("mis", [None] * N, dtype=pl.Float64)
    else:
        mv = np.asarray(mis_scores, dtype=np.float64)
        if mv.shape != c.shape:
            raise ValueError(f"mis_scores shape {mv.shape} != ccs_scores shape {c.shape}")
        m = pl.Series("mis", mv, dtype=pl.Float64)
    return pl.DataFrame(
        {
            "model": pl.Series("model", [str(model)] * N, dtype=pl.Utf8),
            "condition": pl.Series("condition", [str(condition)] * N, dtype=pl.Utf8),
            "layer": pl.Series("layer", np.full(N, int(layer), np.int32), dtype=pl.Int32),
            "dim": pl.Series("dim", np.arange(N, dtype=np.int32), dtype=pl.Int32),
            "ccs": pl.Series("ccs", c, dtype=pl.Float64),
            "mis": m,
            "rank": pl.Series("rank", rank(c).astype(np.int32), dtype=pl.Int32),
        },
        schema=SALIENCY_SCHEMA,
    )
