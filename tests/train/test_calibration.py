"""Temperature scaling: the fitted temperature recovers the one that made probabilities overconfident, scaling
equals the softmax of logits / T and keeps every argmax, and degenerate validation sets fit nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_ser.train.calibration import fit_temperature, nll, pooled_temperature, scale


def _calibrated(n: int = 4000, c: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * 1.5
    p = torch.softmax(torch.tensor(logits), -1).numpy()
    y = np.array([rng.choice(c, p=row) for row in p])  # labels drawn from the model's own probabilities
    return logits, y


def test_the_fit_recovers_the_temperature_that_made_the_probabilities_overconfident():
    logits, y = _calibrated()
    for t_true in (2.5, 0.5):  # logits multiplied by 2.5: overconfident; by 0.5: underconfident
        sharp = torch.softmax(torch.tensor(logits * t_true), -1).numpy()  # T = t_true undoes it
        t = fit_temperature(sharp, y)
        assert t == pytest.approx(t_true, rel=0.08)
        assert nll(scale(sharp, t), y) < nll(sharp, y)
    assert fit_temperature(torch.softmax(torch.tensor(logits), -1).numpy(), y) == pytest.approx(1.0, rel=0.08)


def test_scale_is_the_softmax_of_logits_over_t_and_keeps_the_argmax():
    logits, _ = _calibrated(200)
    p = torch.softmax(torch.tensor(logits), -1).numpy()
    for t in (0.3, 1.7):
        ref = torch.softmax(torch.tensor(logits) / t, -1).numpy()
        np.testing.assert_allclose(scale(p, t), ref, atol=1e-9)
        assert (scale(p, t).argmax(1) == p.argmax(1)).all()
    assert scale(p, None) is not None and np.array_equal(scale(p, None), p)


def test_degenerate_sets_fit_nothing_and_inner_folds_pool_geometrically():
    p = np.tile([0.7, 0.3], (5, 1))
    assert fit_temperature(p, [0, 0, 0, 0, 0]) is None  # one class
    assert fit_temperature(p, [0, -1, -1, -1, -1]) is None  # one labelled row
    assert pooled_temperature([1.0, 4.0, None]) == pytest.approx(2.0)
    assert pooled_temperature([None]) is None
