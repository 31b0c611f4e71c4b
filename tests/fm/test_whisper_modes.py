"""WhisperSpeechEncoder modes on a tiny random-init encoder: parity with transformers, batch independence, lengths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ray_ser.fm.whisper import MAX_SECONDS, SAMPLES_PER_FRAME, WhisperSpeechEncoder, parse_mode

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
