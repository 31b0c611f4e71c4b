"""WhisperSpeechEncoder modes on a tiny random-init encoder: parity with transformers, batch independence, lengths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ray_ser.fm.whisper import (
    MAX_SECONDS,
    SAMPLES_PER_FRAME,
    Strided,
    WhisperSpeechEncoder,
    mode_name,
    parse_mode,
)

SR = 16_000


@pytest.fixture(scope="module")
def encoder():
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(0)
    cfg = WhisperConfig(num_mel_bins=80, d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                        max_source_positions=1500, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64)
    return WhisperEncoder(cfg).eval()


def wrap(encoder, mode):
    return WhisperSpeechEncoder(encoder, name="tiny", weights_hash="x", mode=mode, device="cpu")


def signal(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(round(seconds * SR)))).astype(np.float32)


def test_padded_matches_transformers_forward(encoder):
    model = wrap(encoder, "padded")
    wave = signal(1.3, 0)
    out = model([wave])
    feats = model.features(wave, sampling_rate=SR, return_tensors="pt")["input_features"]
    assert feats.shape[-1] == 3000
    with torch.inference_mode():
        ref = encoder(feats, output_hidden_states=True)
    assert out.hidden.shape == (len(ref.hidden_states), 1, 1500, 32)
    for i, h in enumerate(ref.hidden_states):
        torch.testing.assert_close(out.hidden[i], h, atol=1e-5, rtol=0, msg=f"hidden state {i}")
    torch.testing.assert_close(out.hidden[-1], ref.last_hidden_state, atol=1e-5, rtol=0)
    assert out.lengths.tolist() == [math.ceil(len(wave) / SAMPLES_PER_FRAME)]


@pytest.mark.parametrize("mode", ["trimmed", "window:2", "window:4", "window:0.5"])
@pytest.mark.parametrize("short_first", [True, False])
def test_batching_does_not_change_an_utterance(encoder, mode, short_first):
    model = wrap(encoder, mode)
    short, long = signal(1.3, 1), signal(3.1, 2)
    alone = model([short])
    batch = model([short, long] if short_first else [long, short])
    b = 0 if short_first else 1
    n = int(alone.lengths[0])
    assert n == int(batch.lengths[b]) == math.ceil(len(short) / SAMPLES_PER_FRAME)
    torch.testing.assert_close(batch.hidden[:, b, :n], alone.hidden[:, 0, :n], atol=1e-4, rtol=0)
    # the long one too, against itself alone
    long_alone = model([long])
    m = int(long_alone.lengths[0])
    torch.testing.assert_close(batch.hidden[:, 1 - b, :m], long_alone.hidden[:, 0, :m], atol=1e-4, rtol=0)


def test_trimmed_uses_only_the_frames_the_audio_needs(encoder):
    out = wrap(encoder, "trimmed")([signal(1.3, 3)])
    assert out.hidden.shape[2] == math.ceil(1.3 * SR / SAMPLES_PER_FRAME) == 65


def test_window_mode_encodes_at_least_the_window(encoder):
    out = wrap(encoder, "window:2")([signal(1.3, 3)])
    assert out.hidden.shape[2] == 100  # 2 s window = 100 frames
    assert out.lengths.tolist() == [65]


@pytest.mark.parametrize("mode", ["padded", "trimmed", "window:1.5"])
def test_lengths_are_ceil_samples_over_320(encoder, mode):
    sizes = [4000, 16000, 16001, 20800, 20801, 33333]
    rng = np.random.default_rng(4)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in sizes]
    out = wrap(encoder, mode)(waves)
    assert out.lengths.tolist() == [math.ceil(n / 320) for n in sizes]
    assert out.hidden.shape[2] >= max(out.lengths.tolist())
    model = wrap(encoder, mode)
    assert [model.num_frames(n) for n in sizes] == [math.ceil(n / 320) for n in sizes]


def test_parse_mode_accepts_valid_modes():
    assert parse_mode("padded") == MAX_SECONDS
    assert parse_mode("trimmed") == 0.0
    assert parse_mode("window:10") == 10.0
    assert parse_mode("window:2.5") == 2.5
    assert parse_mode(8) == 8.0
    assert parse_mode(0.0) == 0.0


@pytest.mark.parametrize("bad", ["", "pad", "Padded", "window", "window:", "window:abc", "window:-1", "window:31",
                                 "window:nan", "window:inf", -0.5, 30.5, float("nan")])
def test_parse_mode_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        parse_mode(bad)


def test_mode_names(encoder):
    assert wrap(encoder, "window:30").mode == "padded"
    assert wrap(encoder, "window:0").mode == "trimmed"
    assert wrap(encoder, "window:8").mode == "window:8"
    with pytest.raises(ValueError):
        wrap(encoder, "window:x")


# --- strided silence -------------------------------------------------------------------------------------------


def pooled(out) -> torch.Tensor:
    """Mean over each utterance's real frames of every hidden state: (batch, layers, dim)."""
    return torch.stack([out.hidden[:, b, : int(n)].mean(dim=1) for b, n in enumerate(out.lengths.tolist())])


def test_parse_mode_strided_round_trips():
    assert parse_mode("strided:10") == Strided(10)
    assert parse_mode("strided:1") == Strided(1)
    for name in ["strided:1", "strided:10", "strided:25", "strided:1500"]:
        assert mode_name(parse_mode(name)) == name
        assert mode_name(parse_mode(parse_mode(name))) == name
    for name in ["padded", "trimmed", "window:2.5"]:
        assert mode_name(parse_mode(name)) == name


@pytest.mark.parametrize("bad", ["strided", "strided:", "strided:0", "strided:-1", "strided:2.5", "strided:abc",
                                 "strided:1501", "Strided:10", "strided:nan"])
def test_parse_mode_rejects_bad_strides(bad):
    with pytest.raises(ValueError):
        parse_mode(bad)


def test_strided_mode_name_and_describe(encoder):
    model = wrap(encoder, "strided:10")
    assert model.mode == "strided:10"
    assert model.describe()["whisper_mode"] == "strided:10"


def test_strided_1_is_padded(encoder):
    # 0.01 s: one frame; 29.9 s: the conv head covers (nearly) the whole window; 35 s: a second window
    waves = [signal(1.3, 10), signal(3.1, 11), signal(0.01, 12), signal(29.9, 13), signal(35.0, 14)]
    padded = wrap(encoder, "padded")(waves)
    strided = wrap(encoder, "strided:1")(waves)
    assert strided.lengths.tolist() == padded.lengths.tolist() == [math.ceil(len(w) / SAMPLES_PER_FRAME) for w in waves]
    assert strided.hidden.shape[:2] == padded.hidden.shape[:2]
    for b, n in enumerate(padded.lengths.tolist()):
        torch.testing.assert_close(strided.hidden[:, b, :n], padded.hidden[:, b, :n], atol=1e-4, rtol=0,
                                   msg=f"utterance {b}")


def test_strided_returns_real_frames_only(encoder):
    out = wrap(encoder, "strided:10")([signal(1.3, 15), signal(2.0, 16)])
    assert out.hidden.shape == (3, 2, 100, 32)
    assert out.lengths.tolist() == [65, 100]
    assert bool((out.hidden[:, 0, 65:] == 0).all())


@pytest.mark.parametrize("short_first", [True, False])
def test_strided_batching_does_not_change_an_utterance(encoder, short_first):
    model = wrap(encoder, "strided:10")
    short, long = signal(1.3, 1), signal(3.1, 2)
    alone = model([short])
    batch = model([short, long] if short_first else [long, short])
    b = 0 if short_first else 1
    n = int(alone.lengths[0])
    assert n == int(batch.lengths[b]) == 65
    torch.testing.assert_close(batch.hidden[:, b, :n], alone.hidden[:, 0, :n], atol=1e-4, rtol=0)
    long_alone = model([long])
    m = int(long_alone.lengths[0])
    torch.testing.assert_close(batch.hidden[:, 1 - b, :m], long_alone.hidden[:, 0, :m], atol=1e-4, rtol=0)


@pytest.mark.parametrize("stride", [10, 25])
def test_strided_is_closer_to_padded_than_trimmed(encoder, stride):
    waves = [signal(1.3, 20), signal(2.0, 21), signal(3.1, 22), signal(6.0, 23)]
    padded = pooled(wrap(encoder, "padded")(waves))[:, -1]
    strided = pooled(wrap(encoder, f"strided:{stride}")(waves))[:, -1]
    trimmed = pooled(wrap(encoder, "trimmed")(waves))[:, -1]
    err_strided = (strided - padded).abs().amax(dim=1)
    err_trimmed = (trimmed - padded).abs().amax(dim=1)
    assert bool((err_strided < err_trimmed / 10).all()), (err_strided, err_trimmed)
    cos = torch.nn.functional.cosine_similarity
    assert bool((cos(strided, padded) > cos(trimmed, padded)).all())
