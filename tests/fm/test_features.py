"""Model inputs computed batched on the device equal transformers' per-utterance extractors (the actor's old path)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2FeatureExtractor, WhisperFeatureExtractor

from ray_ser.fm import load_model
from ray_ser.fm.base import resolve_dtype, torch_dtype
from ray_ser.fm.features import WhisperLogMel, normalize_batch, to_device_batch
from ray_ser.fm.whisper import SAMPLES_PER_FRAME, WhisperSpeechEncoder

SR = 16_000
CPU = torch.device("cpu")


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Harmonics of a gliding f0 plus noise, with a loud offset so per-utterance statistics matter."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * SR))) / SR
    phase = 2 * np.pi * np.cumsum(140 + 30 * np.sin(2 * np.pi * 2 * t)) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.2 + rng.uniform(0, 0.5))
    return (x + 0.01 * rng.standard_normal(t.size) + rng.uniform(-0.05, 0.05)).astype(np.float32)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_batched_log_mel_equals_the_extractor_per_utterance(n_mels):
    fe = WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=SR)
    mel = WhisperLogMel(fe.mel_filters, CPU)
    # windows shorter than, equal to and longer than the audio (cut, exact, zero-padded), a 30 s window
    waves = [speech_like(s, i) for i, s in enumerate([0.4, 1.3, 2.0, 3.1, 2.5, 29.0])]
    contexts = [6400, 20800, 32000, 32000, 480000, 480000]
    got = mel(waves, contexts)
    assert got.shape == (len(waves), n_mels, max(contexts) // 160)
    worst = 0.0
    for b, (w, c) in enumerate(zip(waves, contexts)):
        want = fe(w[:c], sampling_rate=SR, padding="max_length", max_length=c, truncation=True,
                  return_tensors="np")["input_features"][0]
        worst = max(worst, float(np.abs(got[b, :, : c // 160].numpy() - want).max()))
        assert not got[b, :, c // 160:].any()  # zero past each window, as the encoder's mel buffer was
    assert worst < 1e-5, worst


def test_log_mel_rejects_windows_that_are_not_whole_frames():
    mel = WhisperLogMel.for_mels(80, CPU)
    with pytest.raises(ValueError, match="multiples of 160"):
        mel([speech_like(1.0, 0)], [16001])


@pytest.fixture(scope="module")
def whisper_encoder():
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(0)
    cfg = WhisperConfig(num_mel_bins=80, d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                        max_source_positions=1500, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64)
    return WhisperEncoder(cfg).eval()


@pytest.mark.parametrize("mode", ["trimmed", "window:4", "padded", "strided:10"])
def test_whisper_prepare_equals_the_per_utterance_mel_buffer(whisper_encoder, mode):
    """What the actor built before (log_mel per utterance into a zero buffer) vs the batched ``prepare``."""
    model = WhisperSpeechEncoder(whisper_encoder, name="tiny", weights_hash="x", mode=mode, device="cpu")
    waves = [speech_like(s, 10 + i) for i, s in enumerate([1.3, 3.1, 0.3, 2.0])]
    prepared = model.prepare(waves)
    if model.stride is None:
        contexts = [model.context_samples(len(w)) for w in waves]
    else:
        chunk, _ = model._strided_layout([model._real_frames(len(w)) for w in waves])
        contexts = [c * SAMPLES_PER_FRAME for c in chunk]
    old = np.zeros((len(waves), 80, max(contexts) // 160), np.float32)
    for b, (w, c) in enumerate(zip(waves, contexts)):
        old[b, :, : c // 160] = model.log_mel(w, c)
    assert prepared.mels.shape == old.shape
    assert float(np.abs(prepared.mels.numpy() - old).max()) < 1e-5
    assert prepared.lengths == [math.ceil(len(w) / SAMPLES_PER_FRAME) for w in waves]


@pytest.mark.parametrize("normalize", [True, False])
def test_ctc_prepare_equals_the_wav2vec2_extractor(tiny_model_dir, normalize):
    enc = load_model(str(tiny_model_dir), device="cpu")
    enc.extractor = Wav2Vec2FeatureExtractor(do_normalize=normalize, return_attention_mask=True)
    enc.normalize = normalize
    waves = [speech_like(s, 20 + i) for i, s in enumerate([0.7, 2.2, 1.5])]
    x, lens = enc.prepare(waves)
    want = enc.extractor(waves, sampling_rate=SR, padding="longest", return_attention_mask=True, return_tensors="np")
    assert lens.tolist() == [len(w) for w in waves]
    assert x.shape == want["input_values"].shape
    assert float(np.abs(x.numpy() - want["input_values"]).max()) < 1e-5


def test_normalize_batch_matches_numpy_per_row():
    rng = np.random.default_rng(3)
    waves = [(3.0 + 0.5 * rng.standard_normal(n)).astype(np.float32) for n in (100, 37, 1)]
    x, lens = to_device_batch(waves, CPU)
    got = normalize_batch(x, lens).numpy()
    for b, w in enumerate(waves):
        ref = (w - w.mean()) / np.sqrt(w.var() + 1e-7)
        np.testing.assert_allclose(got[b, : len(w)], ref, atol=1e-5)
        assert not got[b, len(w):].any()


def test_to_device_batch_cuts_rows_at_their_limits():
    x, kept = to_device_batch([np.ones(5, np.float32), np.full(3, 2, np.float32)], CPU, width=6, limits=[4, 6])
    assert kept.tolist() == [4, 3]
    np.testing.assert_array_equal(x.numpy(), [[1, 1, 1, 1, 0, 0], [2, 2, 2, 0, 0, 0]])


def test_dtype_names_resolve_per_device():
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("auto", "cuda") == "float16"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"
    assert torch_dtype("auto", "cuda:0") is torch.float16 and torch_dtype("float32") is torch.float32
    assert torch_dtype(torch.bfloat16) is torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'half'"):
        resolve_dtype("half", "cpu")


@pytest.mark.parametrize("mode, expected", [
    ("padded", [1500, 1500, 3000]),
    ("trimmed", [65, 100, 1500 + 250]),
    ("strided:10", [65 + 144, 100 + 140, 1500 + 250 + 125]),
])
def test_whisper_sequence_frames_count_what_the_layers_process(whisper_encoder, mode, expected):
    model = WhisperSpeechEncoder(whisper_encoder, name="tiny", weights_hash="x", mode=mode, device="cpu")
    assert [model.sequence_frames(int(s * SR)) for s in (1.3, 2.0, 35.0)] == expected
