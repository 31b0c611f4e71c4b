"""load_model on tiny random-init Hugging Face checkpoints: all-layer shapes, frame counts, masking."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from transformers import (
    BertConfig,
    HubertConfig,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
    WhisperConfig,
    WhisperModel,
)

from ray_ser.fm import load_model
from ray_ser.fm.base import EncoderOutput, SpeechEncoder

TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(32, 32),
    conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
)
FAMILIES = {"hubert": (HubertConfig, HubertModel), "wavlm": (WavLMConfig, WavLMModel),
            "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model)}
SAMPLES = (8000, 16000)  # 0.5 s and 1.0 s at 16 kHz


@pytest.fixture(scope="module")
def waves() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in SAMPLES]


def _save(model: torch.nn.Module, path) -> str:
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def ctc_dirs(tmp_path_factory) -> dict[tuple[str, str], tuple[str, torch.nn.Module]]:
    out = {}
    for family, (config_cls, model_cls) in FAMILIES.items():
        for norm in ("group", "layer"):
            torch.manual_seed(0)
            model = model_cls(config_cls(**TINY, feat_extract_norm=norm)).eval()
            out[family, norm] = (_save(model, tmp_path_factory.mktemp(f"{family}-{norm}")), model)
    return out


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory) -> str:
    torch.manual_seed(0)
    config = WhisperConfig(
        d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=1,
        decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=80, max_source_positions=1500,
    )
    return _save(WhisperModel(config).eval(), tmp_path_factory.mktemp("whisper"))


def _check_describe(enc: SpeechEncoder, path: str) -> None:
    d = enc.describe()
    assert d["model"] == path
    assert isinstance(d["weights_hash"], str) and re.fullmatch(r"[0-9a-f]{64}", d["weights_hash"])
    assert d["num_layers"] == 3 and d["hidden_size"] == 32 and d["sample_rate"] == 16000


@pytest.mark.parametrize("norm", ["group", "layer"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_ctc_style_all_layer_shapes_and_lengths(ctc_dirs, waves, family, norm):
    path, model = ctc_dirs[family, norm]
    enc = load_model(path, device="cpu")
    out = enc(waves)
    assert isinstance(out, EncoderOutput)
    expected = model._get_feat_extract_output_lengths(torch.tensor(SAMPLES)).tolist()
    assert out.lengths.tolist() == expected == [enc.num_frames(n) for n in SAMPLES]
    assert out.hidden.shape == (TINY["num_hidden_layers"] + 1, 2, max(expected), 32)
    assert out.num_layers == enc.num_layers == 3
    assert torch.isfinite(out.hidden).all()
    assert enc.use_mask == (norm == "layer")
    for b, wave in enumerate(waves):  # each wave alone yields exactly the frames the batch claims
        alone = enc([wave])
        n = int(out.lengths[b])
        assert alone.hidden.shape == (3, 1, n, 32)
        assert alone.lengths.tolist() == [n]
        if norm == "layer":  # the attention mask keeps padding out: real frames equal the alone-forward
            torch.testing.assert_close(out.hidden[:, b, :n], alone.hidden[:, 0], atol=1e-4, rtol=0)
    _check_describe(enc, path)


def test_weights_hash_identifies_the_checkpoint(ctc_dirs):
    a = load_model(ctc_dirs["hubert", "group"][0], device="cpu").describe()["weights_hash"]
    b = load_model(ctc_dirs["hubert", "layer"][0], device="cpu").describe()["weights_hash"]
    assert a != b
    assert a == load_model(ctc_dirs["hubert", "group"][0], device="cpu").describe()["weights_hash"]


@pytest.mark.parametrize("mode, frames", [("padded", 1500), ("trimmed", 50)])
def test_whisper_all_layer_shapes_and_lengths(whisper_dir, waves, mode, frames):
    enc = load_model(whisper_dir, device="cpu", whisper_mode=mode)
    out = enc(waves)
    expected = [math.ceil(n / 320) for n in SAMPLES]
    assert out.lengths.tolist() == expected == [25, 50]
    assert out.hidden.shape == (3, 2, frames, 32)  # 2 layers + the conv/position output
    # each wave alone: the same frame count, and the batch does not change its real frames
    # (padded mode encodes every wave in its own 30 s window, so one wave is enough there)
    for b, wave in enumerate(waves if mode == "trimmed" else waves[:1]):
        alone = enc([wave])
        n = expected[b]
        assert alone.lengths.tolist() == [n]
        assert alone.hidden.shape == (3, 1, n if mode == "trimmed" else 1500, 32)
        torch.testing.assert_close(out.hidden[:, b, :n], alone.hidden[:, 0, :n], atol=1e-4, rtol=0)
    _check_describe(enc, whisper_dir)
    assert enc.describe()["whisper_mode"] == mode


def test_unknown_model_type_raises(tmp_path):
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model type 'bert' is not supported"):
        load_model(str(tmp_path))


def test_bad_whisper_mode_raises(whisper_dir):
    with pytest.raises(ValueError, match="unknown Whisper mode"):
        load_model(whisper_dir, whisper_mode="sideways")


def test_describe_matches_the_loaded_model_without_building_it(ctc_dirs, whisper_dir):
    from ray_ser.fm.registry import describe

    for path, _ in ctc_dirs.values():
        assert describe(path) == load_model(path, device="cpu").describe()
    assert describe(whisper_dir, "trimmed") == load_model(whisper_dir, device="cpu", whisper_mode="trimmed").describe()
