"""``max_layer``: a forward that stops at the highest layer the caller reads returns hidden states 0..k exactly as the
full forward does (the final layer norm of the stable-layer-norm and Whisper encoders included: only the last state
gets it), and runs only the layers it needs. Tiny random-init HuBERT, WavLM, Wav2Vec2 and Whisper of 4 layers."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from transformers import (
    HubertConfig,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
)

from ray_ser.fm.hf import CTCStyleEncoder
from ray_ser.fm.whisper import WhisperSpeechEncoder

LAYERS = 4
TINY = dict(
    hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=64, conv_dim=(32, 32),
    conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
)
FAMILIES = {"hubert": (HubertConfig, HubertModel), "wavlm": (WavLMConfig, WavLMModel),
            "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model)}
# (feature-extractor norm, stable layer norm): the "base" layout and the "large" one, whose encoder ends in a layer norm
LAYOUTS = {"base": ("group", False), "large": ("layer", True)}
KS = list(range(LAYERS + 1))  # 0 (the embedding output only) .. LAYERS (every layer: the full forward)


@pytest.fixture(scope="module")
def waves() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (8000, 12000, 16000)]


def _perturbed(module: torch.nn.Module) -> torch.nn.Module:
    """Every parameter moved off its init value, so the layer norms' weights and biases are not 1 and 0."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module.eval()


@contextmanager
def _counting(layers: torch.nn.ModuleList):
    """Forward hooks on each layer that count its calls (calls[i]: layer i + 1), removed on exit."""
    calls = [0] * len(layers)
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, layer in enumerate(layers)]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


@pytest.fixture(scope="module", params=[(f, layout) for f in FAMILIES for layout in LAYOUTS],
                ids=lambda p: f"{p[0]}-{p[1]}")
def ctc(request) -> CTCStyleEncoder:
    family, layout = request.param
    config_cls, model_cls = FAMILIES[family]
    norm, stable = LAYOUTS[layout]
    torch.manual_seed(0)
    model = _perturbed(model_cls(config_cls(**TINY, feat_extract_norm=norm, do_stable_layer_norm=stable)))
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=norm == "layer", return_attention_mask=True)
    return CTCStyleEncoder(model, extractor, name=f"tiny-{family}-{layout}", weights="x", device="cpu")


@pytest.fixture(scope="module")
def whisper_encoder():
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(0)
    cfg = WhisperConfig(num_mel_bins=80, d_model=32, encoder_layers=LAYERS, encoder_attention_heads=2,
                        encoder_ffn_dim=64, max_source_positions=1500, decoder_layers=1, decoder_attention_heads=2,
                        decoder_ffn_dim=64)
    return _perturbed(WhisperEncoder(cfg))


def _check_truncation(model, layers: torch.nn.ModuleList, waves, least: int):
    """States 0..k of ``model(waves, max_layer=k)`` are the full forward's, bit for bit, for every k; the layers run are
    1..max(k, least), each once, and none above."""
    with _counting(layers) as calls:
        full = model(waves)
        assert full.hidden.shape[0] == LAYERS + 1 and calls == [1] * LAYERS
        for k in KS:
            calls[:] = [0] * LAYERS
            got = model(waves, max_layer=k)
            assert got.hidden.shape == (k + 1, *full.hidden.shape[1:])
            assert torch.equal(got.lengths, full.lengths)
            assert torch.equal(got.hidden, full.hidden[:k + 1]), k
            n = max(k, least)
            assert calls == [1] * n + [0] * (LAYERS - n), (k, calls)
    return full


def test_ctc_style_truncated_states_equal_the_full_forwards(ctc, waves):
    layers = list(ctc.model.encoder.layers)
    # transformers records state 0 as the first layer's input: max_layer 0 runs that one layer
    full = _check_truncation(ctc, ctc.model.encoder.layers, waves, least=1)
    assert list(ctc.model.encoder.layers) == layers  # the layer list is back whole
    if ctc.model.config.do_stable_layer_norm:
        # the "large" layout's encoder ends in a layer norm that changes the states: a truncated forward that handed
        # back its last layer's output normed (what the encoder returns as last_hidden_state) would fail above
        enc = ctc.model.encoder
        for k in range(1, LAYERS):
            with torch.inference_mode():
                assert not torch.allclose(enc.layer_norm(full.hidden[k]), full.hidden[k], atol=1e-3)


@pytest.mark.parametrize("mode", ["padded", "trimmed", "window:0.7", "strided:10"])
def test_whisper_truncated_states_equal_the_full_forwards(whisper_encoder, waves, mode):
    model = WhisperSpeechEncoder(whisper_encoder, name="tiny", weights_hash="x", mode=mode, device="cpu")
    full = _check_truncation(model, whisper_encoder.layers, waves, least=0)
    # the full forward's last state is the normed one, the states below it raw: max_layer = LAYERS - 1 must not norm
    with torch.inference_mode():
        assert not torch.allclose(whisper_encoder.layer_norm(full.hidden[-2]), full.hidden[-2], atol=1e-3)


def test_whisper_audio_longer_than_a_window_truncates_each_window(whisper_encoder):
    model = WhisperSpeechEncoder(whisper_encoder, name="tiny", weights_hash="x", mode="trimmed", device="cpu")
    rng = np.random.default_rng(1)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000 * 31, 8000)]
    full = model(waves)
    for k in (1, LAYERS - 1):
        assert torch.equal(model(waves, max_layer=k).hidden, full.hidden[:k + 1])


def test_max_layer_outside_the_model_is_an_error(ctc, waves):
    with pytest.raises(ValueError, match="max_layer"):
        ctc(waves, max_layer=LAYERS + 1)
    with pytest.raises(ValueError, match="max_layer"):
        ctc(waves, max_layer=-1)
    assert len(ctc.model.encoder.layers) == LAYERS  # the layer list is back after a failed call, too


def test_the_layer_list_and_hooks_are_restored_when_the_forward_fails(ctc):
    layers = list(ctc.model.encoder.layers)
    hooks = [len(layer._forward_hooks) for layer in layers]
    with pytest.raises(Exception):
        ctc([np.zeros(10, np.float32)], max_layer=2)  # shorter than the convolutions' receptive field
    assert list(ctc.model.encoder.layers) == layers
    assert [len(layer._forward_hooks) for layer in layers] == hooks
