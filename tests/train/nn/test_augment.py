"""SpecAugment: masks only real frames, bounded band widths, no-op in eval mode, seeded reproducibility."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from ray_ser.train.nn.augment import SpecAugment
from ray_ser.train.nn.pooling import lengths_to_mask

LENGTHS = torch.tensor([40, 25, 60, 10])


def batch(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 60, 20, generator=g) + 5.0  # no natural zeros; padding is garbage too


def test_eval_mode_is_identity():
    x = batch()
    aug = SpecAugment(seed=0).eval()
    assert torch.equal(aug(x, LENGTHS), x)


def test_training_masks_real_frames_only_within_bounds():
    x = batch()
    aug = SpecAugment(time_masks=2, time_width=0.2, feature_masks=2, feature_width=0.1, seed=0).train()
    real = lengths_to_mask(LENGTHS, 60)
    n_zero_rows = n_zero_cols = 0
    for _ in range(20):
        y = aug(x, LENGTHS)
        assert torch.equal(y[~real], x[~real])  # padding untouched
        changed = y != x
        assert torch.all(y[changed] == 0)
        for b, n in enumerate(LENGTHS.tolist()):
            zero_t = (y[b, :n] == 0).all(1)  # frames masked over every dimension
            zero_f = (y[b, :n] == 0).all(0)  # dimensions masked over every real frame
            assert zero_t.sum() <= 2 * math.floor(0.2 * n)
            assert zero_f.sum() <= 2 * math.floor(0.1 * 20)
            # every changed cell is in a masked frame or a masked dimension
            assert torch.all(changed[b, :n] <= (zero_t[:, None] | zero_f[None, :]))
            n_zero_rows += int(zero_t.sum())
            n_zero_cols += int(zero_f.sum())
    assert n_zero_rows > 0 and n_zero_cols > 0
    assert torch.equal(x, batch())  # the input is not modified in place


def test_seeded_reproducible():
    x = batch()
    a, b = SpecAugment(seed=7).train(), SpecAugment(seed=7).train()
    ya, yb = [a(x, LENGTHS) for _ in range(3)], [b(x, LENGTHS) for _ in range(3)]
    for u, v in zip(ya, yb):
        assert torch.equal(u, v)
    assert not torch.equal(ya[0], ya[1])
    c = copy.deepcopy(a.manual_seed(7))
    assert torch.equal(c(x, LENGTHS), ya[0])


def test_rejects_bad_widths():
    with pytest.raises(ValueError, match="fractions"):
        SpecAugment(time_width=1.5)
