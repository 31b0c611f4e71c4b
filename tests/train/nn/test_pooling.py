"""Pooling: masks, mean/last/attention against direct computations, invariance to the amount of padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_ser.train.nn.pooling import (
    AttentionPooling,
    last_state,
    lengths_to_mask,
    make_pooling,
    masked_mean,
)

LENGTHS = torch.tensor([5, 2, 7])


def padded(seqs: list[torch.Tensor], T: int, g: torch.Generator) -> torch.Tensor:
    """Stack sequences padded to T with random garbage (large values), not zeros."""
    out = torch.randn(len(seqs), T, seqs[0].shape[1], generator=g) * 100 + 50
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


def test_lengths_to_mask():
    expected = np.arange(7)[None, :] < LENGTHS.numpy()[:, None]
    np.testing.assert_array_equal(lengths_to_mask(LENGTHS, 7).numpy(), expected)


def test_mean_and_last_match_direct_computation():
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randn(int(n), 4, generator=g) for n in LENGTHS]
    x = padded(seqs, 9, g)
    torch.testing.assert_close(masked_mean(x, LENGTHS), torch.stack([s.mean(0) for s in seqs]))
    torch.testing.assert_close(last_state(x, LENGTHS), torch.stack([s[-1] for s in seqs]))


@pytest.mark.parametrize("kind", ["last", "mean", "attention"])
def test_pooling_unchanged_by_padding(kind):
    torch.manual_seed(0)
    pool = make_pooling(kind, 4)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randn(int(n), 4, generator=g) for n in LENGTHS]
    short, long = padded(seqs, 7, g), padded(seqs, 20, g)
    long[1, 2:] = float("nan")  # even NaN padding must not leak
    a, b = pool(short, LENGTHS), pool(long, LENGTHS)
    torch.testing.assert_close(a, b)
    alone = torch.cat([pool(s[None], torch.tensor([len(s)])) for s in seqs])
    torch.testing.assert_close(a, alone)


def test_attention_weights_zero_on_padding_and_softmax_on_real_frames():
    torch.manual_seed(0)
    pool = AttentionPooling(4)
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randn(int(n), 4, generator=g) for n in LENGTHS]
    x = padded(seqs, 10, g)
    w = pool.weights(x, LENGTHS)
    assert torch.all(w[~lengths_to_mask(LENGTHS, 10)] == 0)
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    s = seqs[0]
    ref_w = torch.softmax(pool.score(s).squeeze(-1), 0)
    torch.testing.assert_close(w[0, :5], ref_w)
    torch.testing.assert_close(pool(x, LENGTHS)[0], (ref_w[:, None] * s).sum(0))


def test_make_pooling_rejects_unknown():
    with pytest.raises(ValueError, match="unknown pooling"):
        make_pooling("max", 4)


def test_masked_mean_without_padding_is_the_plain_mean():
    x = torch.randn(3, 5, 4)
    full = torch.full((3,), 5)
    torch.testing.assert_close(masked_mean(x, full), x.mean(1))
    torch.testing.assert_close(masked_mean(x, torch.tensor([5, 5, 4]))[2], x[2, :4].mean(0))
