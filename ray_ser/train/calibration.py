"""Temperature scaling (Guo et al. 2017): one scalar T per fold model, fitted on its inner validation speakers'
predictions (never its test speakers), that divides the logits before the softmax. It leaves every argmax, hence
UAR and k-best UAR, unchanged and only moves the probabilities toward what the model gets right."""

from __future__ import annotations

import numpy as np

T_BOUNDS = (0.05, 20.0)
"""The temperatures searched (log-uniformly bounded); a fit at a bound says the validation set is degenerate."""
_TINY = 1e-12


def scale(probs, temperature) -> np.ndarray:
    """Probabilities ``softmax(log(probs) / T)`` (equal to the softmax of logits / T: log-probabilities are logits up
    to a constant per row); ``T`` one number or one per row; None or 1 returns them unchanged."""
    p = np.asarray(probs, dtype=np.float64)
    t = None if temperature is None else np.asarray(temperature, dtype=np.float64)
    if t is None or (t.ndim == 0 and t == 1.0):
        return p
    z = np.log(np.clip(p, _TINY, 1.0)) / (t if t.ndim == 0 else t[:, None])
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probs, y) -> float:
    """Mean negative log-likelihood of the true classes (nats)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], _TINY, 1.0))))


def fit_temperature(probs, y) -> float | None:
    """The T that minimises the NLL of ``scale(probs, T)`` for labels ``y`` (rows with y < 0 ignored), by a bounded
    search over log T; None when fewer than 2 labelled rows or a single class leave nothing to fit."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(y, dtype=np.int64)
    ok = y >= 0
    if ok.sum() < 2 or len(np.unique(y[ok])) < 2:
        return None
    p, y = np.asarray(probs, dtype=np.float64)[ok], y[ok]
    res = minimize_scalar(lambda log_t: nll(scale(p, float(np.exp(log_t))), y),
                          bounds=tuple(np.log(T_BOUNDS)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def pooled_temperature(temperatures) -> float | None:
    """One temperature from several inner folds' (their geometric mean; None entries skipped)."""
    ts = [float(t) for t in temperatures if t is not None]
    return float(np.exp(np.mean(np.log(ts)))) if ts else None
