"""The actor's step: frames gathered on the device equal the old whole-batch copy, Arrow rows, layer subsets, budgets."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from ray_ser.extract.program import pool_frames
from ray_ser.fm import load_model
from ray_ser.fm.step import (
    EmbedStep,
    StepOutput,
    arrow_columns,
    gather_frames,
    plan_batches,
    pool_on_device,
    resolve_frame_layers,
)


def old_frames(hidden: torch.Tensor, lengths: list[int], layers: list[int]) -> np.ndarray:
    """What EmbedStage did before: the whole padded batch to host as float16, then per-utterance numpy slices."""
    half = hidden[layers].half().cpu().numpy()
    return np.concatenate([half[:, b, :n].ravel() for b, n in enumerate(lengths)])


@pytest.mark.parametrize("layers", [[0, 1, 2, 3], [2], [0, 3]])
def test_gather_frames_equals_the_old_host_path(layers):
    torch.manual_seed(0)
    hidden = torch.randn(4, 3, 11, 5)
    lengths = [11, 4, 7]
    got = gather_frames(hidden, torch.tensor(lengths), layers)
    assert got.dtype == torch.float16 and got.shape == (len(layers) * sum(lengths), 5)
    np.testing.assert_array_equal(got.numpy().ravel(), old_frames(hidden, lengths, layers))


def test_pool_on_device_matches_per_utterance_definition_in_half_precision():
    torch.manual_seed(1)
    hidden = (torch.randn(3, 2, 9, 4) * 4 + 2).half()
    mean, std = pool_on_device(hidden, torch.tensor([9, 5]))
    assert mean.dtype == torch.float32 and mean.shape == (2, 3, 4)
    for b, n in enumerate([9, 5]):
        want_mean, want_std = pool_frames(hidden[:, b].float().numpy(), n)
        np.testing.assert_allclose(mean[b].numpy(), want_mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(std[b].numpy(), want_std, rtol=1e-5, atol=1e-5)


def test_arrow_columns_rows_and_null_frames_for_unstored_layers():
    torch.manual_seed(2)
    hidden = torch.randn(3, 2, 6, 4)
    lengths = torch.tensor([6, 2])
    mean, std = pool_on_device(hidden, lengths)
    frames = gather_frames(hidden, lengths, [1])
    out = StepOutput(lengths.numpy().astype(np.int32), mean.numpy(), std.numpy(), frames.numpy(), (1,))
    m, s, f = arrow_columns(out, num_layers=3)
    assert len(m) == len(s) == len(f) == 6  # utterance-major: (b0, l0), (b0, l1), (b0, l2), (b1, l0), ...
    assert f.type == pa.list_(pa.list_(pa.float16(), 4))
    assert f.is_null().to_pylist() == [True, False, True, True, False, True]
    for b, n in enumerate([6, 2]):
        cell = f[b * 3 + 1].values.flatten().to_numpy(zero_copy_only=False).reshape(-1, 4)
        np.testing.assert_array_equal(cell, hidden[1, b, :n].half().numpy())
        np.testing.assert_array_equal(np.asarray(m[b * 3 + 2].as_py(), np.float32), mean[b, 2].numpy())


def test_arrow_columns_wrap_the_host_buffer_without_copying():
    out = StepOutput(np.array([3], np.int32), np.zeros((1, 1, 2), np.float32), np.zeros((1, 1, 2), np.float32),
                     np.arange(6, dtype=np.float16).reshape(3, 2), (0,))
    _, _, f = arrow_columns(out, num_layers=1)
    assert f.values.values.buffers()[1].address == out.frames.ctypes.data


def test_resolve_frame_layers():
    assert resolve_frame_layers(None, 4) == (0, 1, 2, 3)
    assert resolve_frame_layers([3, -1, 1], 4) == (1, 3)
    with pytest.raises(ValueError, match="out of range"):
        resolve_frame_layers([4], 4)
    with pytest.raises(ValueError, match="empty"):
        resolve_frame_layers([], 4)


def test_plan_batches_respects_both_budgets_and_covers_each_utterance_once():
    rng = np.random.default_rng(0)
    samples = rng.integers(1000, 50000, size=40).tolist()
    seq = [s // 320 + 150 for s in samples]
    groups = plan_batches(samples, max_samples=200_000, seq_frames=seq, max_frames=2_000)
    assert sorted(i for g in groups for i in g) == list(range(40))
    for g in groups:
        if len(g) > 1:
            assert max(samples[i] for i in g) * len(g) <= 200_000
            assert max(seq[i] for i in g) * len(g) <= 2_000
    assert plan_batches(samples, max_samples=1e12) == [sorted(range(40), key=lambda i: samples[i])]


@pytest.fixture(scope="module")
def waves() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 7000, 11000)]


def test_embed_step_on_a_model_equals_the_model_output(tiny_model_dir, waves):
    model = load_model(str(tiny_model_dir), device="cpu")
    out = EmbedStep(model, frame_layers=[-1])(waves)
    ref = model(waves)
    assert out.frame_layers == (2,) and out.lengths.tolist() == ref.lengths.tolist()
    offset = 0
    for b, n in enumerate(ref.lengths.tolist()):
        want_mean, want_std = pool_frames(ref.hidden[:, b].numpy(), n)
        np.testing.assert_allclose(out.mean[b], want_mean, atol=1e-5)
        np.testing.assert_allclose(out.std[b], want_std, atol=1e-5)
        np.testing.assert_array_equal(out.frames[offset:offset + n], ref.hidden[2, b, :n].half().numpy())
        offset += n
    assert offset == len(out.frames)
    assert EmbedStep(model, frames=False)(waves).frames is None


@pytest.mark.parametrize("dtype, min_cos", [(torch.bfloat16, 0.99), (torch.float16, 0.999)])
def test_lower_precision_stays_close_to_float32(tiny_model_dir, waves, dtype, min_cos):
    full = EmbedStep(load_model(str(tiny_model_dir), device="cpu"), frames=False)(waves).mean
    model = load_model(str(tiny_model_dir), device="cpu", dtype=dtype)
    assert next(model.model.parameters()).dtype == dtype
    low = EmbedStep(model, frames=False)(waves).mean
    cos = (full * low).sum(-1) / np.linalg.norm(full, axis=-1) / np.linalg.norm(low, axis=-1)
    assert low.dtype == np.float32 and cos.min() > min_cos, cos.min()
