"""CCC against NumPy, CCC loss weighting/masking, soft CE and KL against torch/scipy references, frame loss."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from ray_ser.train.nn.losses import (
    ccc,
    ccc_loss,
    frame_cluster_loss,
    kl_divergence,
    soft_cross_entropy,
)


def np_ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Lin's CCC with population moments."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    cov = np.mean((x - x.mean()) * (y - y.mean()))
    return 2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def test_ccc_matches_numpy():
    rng = np.random.default_rng(0)
    y = rng.normal(size=50)
    x = 0.7 * y + rng.normal(0.3, 0.5, size=50)
    got = ccc(torch.tensor(x), torch.tensor(y)).item()
    assert got == pytest.approx(np_ccc(x, y), abs=1e-7)
    assert ccc(torch.tensor(y), torch.tensor(y)).item() == pytest.approx(1.0, abs=1e-7)
    cols = ccc(torch.tensor(np.stack([x, y], 1)), torch.tensor(np.stack([y, y], 1)))
    np.testing.assert_allclose(cols.numpy(), [np_ccc(x, y), 1.0], atol=1e-7)


def test_ccc_is_differentiable():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randn(12, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda a: ccc(a, y), (x,))


def test_ccc_loss_weights_and_mask():
    rng = np.random.default_rng(1)
    target = rng.normal(size=(40, 3))
    pred = target + rng.normal(scale=[0.3, 0.8, 1.5], size=(40, 3))
    mask = rng.random((40, 3)) > 0.2
    target_nan = np.where(mask, target, np.nan)  # masked targets may hold anything
    names = ("arousal", "valence", "dominance")
    weights = {"valence": 0.5, "arousal": 0.3, "dominance": 0.2}
    per_dim = {n: np_ccc(pred[mask[:, j], j], target[mask[:, j], j]) for j, n in enumerate(names)}
    expected = -(0.5 * per_dim["valence"] + 0.3 * per_dim["arousal"] + 0.2 * per_dim["dominance"])
    got = ccc_loss(torch.tensor(pred), torch.tensor(target_nan), torch.tensor(mask), weights, names)
    assert got.item() == pytest.approx(expected, abs=1e-7)
    # default a = b = 1/3; mask=None takes the finite targets
    got = ccc_loss(torch.tensor(pred), torch.tensor(target_nan))
    assert got.item() == pytest.approx(-np.mean(list(per_dim.values())), abs=1e-7)


def test_ccc_loss_skips_dims_with_fewer_than_two_rows():
    rng = np.random.default_rng(2)
    target, pred = rng.normal(size=(10, 3)), rng.normal(size=(10, 3))
    mask = np.ones((10, 3), bool)
    mask[1:, 2] = False  # dominance: one valid row -> skipped, weights of the rest renormalised
    expected = -(np_ccc(pred[:, 0], target[:, 0]) + np_ccc(pred[:, 1], target[:, 1])) / 2
    p = torch.tensor(pred, requires_grad=True)
    got = ccc_loss(p, torch.tensor(target), torch.tensor(mask))
    assert got.item() == pytest.approx(expected, abs=1e-7)
    got.backward()
    assert torch.all(p.grad[:, 2] == 0)
    empty = ccc_loss(p, torch.tensor(target), torch.zeros(10, 3, dtype=torch.bool))
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="unknown dimensions"):
        ccc_loss(p, torch.tensor(target), weights={"valance": 1.0})


def test_soft_cross_entropy_matches_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=g)
    labels = torch.randint(0, 5, (8,), generator=g)
    onehot = F.one_hot(labels, 5).float()
    torch.testing.assert_close(soft_cross_entropy(logits, onehot), F.cross_entropy(logits, labels))
    probs = torch.softmax(torch.randn(8, 5, generator=g), 1)
    torch.testing.assert_close(soft_cross_entropy(logits, probs), F.cross_entropy(logits, probs))


def test_soft_cross_entropy_ignores_rows_without_pdf():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, generator=g)
    probs = torch.softmax(torch.randn(6, 4, generator=g), 1)
    pdf = probs.clone()
    pdf[1] = 0.0
    pdf[4] = float("nan")
    keep = torch.tensor([0, 2, 3, 5])
    torch.testing.assert_close(soft_cross_entropy(logits, pdf), F.cross_entropy(logits[keep], probs[keep]))
    assert soft_cross_entropy(logits, torch.zeros(6, 4)).item() == 0.0
    x = logits.clone().requires_grad_()
    soft_cross_entropy(x, pdf).backward()  # the rows without a PDF get no gradient
    assert (x.grad[[1, 4]] == 0).all() and (x.grad[keep] != 0).any(1).all()


def test_kl_divergence_matches_scipy():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(7, 4, generator=g)
    pdf = torch.softmax(torch.randn(7, 4, generator=g), 1)
    pdf[0] = torch.tensor([0.0, 1.0, 0.0, 0.0])  # zeros in the target: 0 log 0 = 0
    q = torch.softmax(logits, 1).numpy()
    expected = np.mean([scipy.stats.entropy(p, qq) for p, qq in zip(pdf.numpy(), q)])
    assert kl_divergence(logits, pdf).item() == pytest.approx(expected, rel=1e-5)
    # same gradient as the soft cross-entropy (they differ by the target's entropy only)
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    kl_divergence(a, pdf).backward()
    soft_cross_entropy(b, pdf).backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_frame_cluster_loss_over_real_frames_only():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 3, generator=g)
    ids = torch.tensor([[0, 2, 1, -100, -100], [1, 1, 0, 2, 2]])
    real = ids != -100
    expected = F.cross_entropy(logits[real], ids[real])
    torch.testing.assert_close(frame_cluster_loss(logits, ids), expected)
    assert frame_cluster_loss(logits, torch.full((2, 5), -100)).item() == 0.0
    with pytest.raises(ValueError, match="disagree"):
        frame_cluster_loss(logits, ids[:, :4])
