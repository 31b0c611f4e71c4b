"""The CTranslate2 model.bin reader: a synthetic round trip, malformed files, and parity with ctranslate2."""

from __future__ import annotations

import hashlib
import shutil
import struct

import numpy as np
import pytest
import torch

from ray_ser.fm import ct2, load_model
from ray_ser.fm.ct2 import (
    CT2FormatError,
    load_whisper_encoder,
    read_model_bin,
    whisper_encoder_state_dict,
)
from ray_ser.settings import data_root

DTYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}


# --- a CT2 writer, the inverse of whisper_encoder_state_dict -------------------------------------------


def _string(s: str) -> bytes:
    raw = s.encode("utf-8") + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_model_bin(path, variables: dict[str, np.ndarray], aliases: dict[str, str] | None = None,
                    spec: str = "WhisperSpec", revision: int = 3, version: int = 6) -> bytes:
    out = [struct.pack("<I", version), _string(spec), struct.pack("<I", revision), struct.pack("<I", len(variables))]
    for name, value in variables.items():
        value = np.ascontiguousarray(value)
        out += [_string(name), struct.pack("<B", value.ndim)]
        out += [struct.pack("<I", d) for d in value.shape]
        raw = value.astype(value.dtype.newbyteorder("<")).tobytes()
        out += [struct.pack("<B", DTYPE_IDS[value.dtype.name]), struct.pack("<I", len(raw)), raw]
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_string(alias), _string(target)]
    data = b"".join(out)
    with open(path, "wb") as f:
        f.write(data)
    return data


def ct2_whisper_variables(encoder, key_bias: float = 0.0) -> dict[str, np.ndarray]:
    """CT2 WhisperSpec encoder variables of a transformers WhisperEncoder (q, k, v fused into linear_0)."""
    sd = {k: v.detach().float().numpy() for k, v in encoder.state_dict().items()}
    cfg = encoder.config
    v = {
        "encoder/conv1/weight": sd["conv1.weight"], "encoder/conv1/bias": sd["conv1.bias"],
        "encoder/conv2/weight": sd["conv2.weight"], "encoder/conv2/bias": sd["conv2.bias"],
        "encoder/position_encodings/encodings": sd["embed_positions.weight"],
        "encoder/num_heads": np.array(cfg.encoder_attention_heads, np.int16),
    }
    for i in range(cfg.encoder_layers):
        s, d = f"layers.{i}", f"encoder/layer_{i}"
        k_bias = np.full_like(sd[f"{s}.self_attn.q_proj.bias"], key_bias)
        v.update({
            f"{d}/self_attention/layer_norm/gamma": sd[f"{s}.self_attn_layer_norm.weight"],
            f"{d}/self_attention/layer_norm/beta": sd[f"{s}.self_attn_layer_norm.bias"],
            f"{d}/self_attention/linear_0/weight": np.concatenate(
                [sd[f"{s}.self_attn.{p}_proj.weight"] for p in "qkv"], axis=0),
            f"{d}/self_attention/linear_0/bias": np.concatenate(
                [sd[f"{s}.self_attn.q_proj.bias"], k_bias, sd[f"{s}.self_attn.v_proj.bias"]]),
            f"{d}/self_attention/linear_1/weight": sd[f"{s}.self_attn.out_proj.weight"],
            f"{d}/self_attention/linear_1/bias": sd[f"{s}.self_attn.out_proj.bias"],
            f"{d}/ffn/layer_norm/gamma": sd[f"{s}.final_layer_norm.weight"],
            f"{d}/ffn/layer_norm/beta": sd[f"{s}.final_layer_norm.bias"],
            f"{d}/ffn/linear_0/weight": sd[f"{s}.fc1.weight"], f"{d}/ffn/linear_0/bias": sd[f"{s}.fc1.bias"],
            f"{d}/ffn/linear_1/weight": sd[f"{s}.fc2.weight"], f"{d}/ffn/linear_1/bias": sd[f"{s}.fc2.bias"],
        })
    v["encoder/layer_norm/gamma"] = sd["layer_norm.weight"]
    v["encoder/layer_norm/beta"] = sd["layer_norm.bias"]
    # a few decoder variables, as in a real file: skipped by the encoder loader
    v["decoder/embeddings/weight"] = (np.arange(12, dtype=np.float32).reshape(4, 3) / 8).astype(np.float16)
    v["decoder/num_heads"] = np.array(cfg.encoder_attention_heads, np.int16)
    return v


@pytest.fixture(scope="module")
def tiny_encoder():
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                           num_mel_bins=80, max_source_positions=50, decoder_layers=1, decoder_attention_heads=4)
    torch.manual_seed(0)
    enc = WhisperEncoder(config).eval()
    with torch.no_grad():  # move every parameter off its init value so a swapped mapping cannot pass
        for name, p in enc.named_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return enc


@pytest.fixture(scope="module")
def tiny_bin(tiny_encoder, tmp_path_factory):
    path = tmp_path_factory.mktemp("ct2") / "model.bin"
    data = write_model_bin(path, ct2_whisper_variables(tiny_encoder),
                           aliases={"decoder/projection/weight": "decoder/embeddings/weight"})
    return path, data


def test_read_model_bin_round_trip(tiny_encoder, tiny_bin):
    path, data = tiny_bin
    m = read_model_bin([path])
    assert (m.spec, m.revision, m.version) == ("WhisperSpec", 3, 6)
    assert m.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert m.sha256 == hashlib.sha256(data).hexdigest()
    expected = ct2_whisper_variables(tiny_encoder)
    assert list(m.variables) == list(expected)
    for name, value in expected.items():
        assert m.variables[name].dtype == value.dtype, name
        np.testing.assert_array_equal(m.variables[name], value, err_msg=name)
    # several parts concatenate to the same model and the same hash
    parts = [path.parent / "p1", path.parent / "p2"]
    parts[0].write_bytes(data[:1000])
    parts[1].write_bytes(data[1000:])
    m2 = read_model_bin(parts, keep=r"^encoder/")
    assert m2.sha256 == m.sha256
    assert set(m2.variables) == {k for k in expected if k.startswith("encoder/")}


def test_state_dict_inverts_the_fusion(tiny_encoder, tiny_bin):
    sd = whisper_encoder_state_dict(read_model_bin([tiny_bin[0]]))
    ref = tiny_encoder.state_dict()
    assert set(sd) == set(ref) - {k for k in ref if k.endswith("k_proj.bias")}
    for k, v in sd.items():
        torch.testing.assert_close(v, ref[k], atol=0, rtol=0, msg=k)


def test_loaded_encoder_matches_source(tiny_encoder, tiny_bin):
    path, data = tiny_bin
    loaded, sha = load_whisper_encoder([path])
    assert sha == hashlib.sha256(data).hexdigest()
    cfg = loaded.config
    assert (cfg.d_model, cfg.encoder_layers, cfg.encoder_attention_heads, cfg.encoder_ffn_dim,
            cfg.max_source_positions, cfg.num_mel_bins) == (32, 2, 4, 64, 50, 80)
    mel = torch.randn(2, 80, 100, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = tiny_encoder(mel, output_hidden_states=True)
        got = loaded(mel, output_hidden_states=True)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, atol=1e-6, rtol=0)
    for a, b in zip(got.hidden_states, want.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_ct2_folder_loads_through_registry(tiny_bin, tmp_path):
    path, data = tiny_bin
    shutil.copy(path, tmp_path / "model.bin")
    (tmp_path / "config.json").write_text("{}")
    enc = load_model(str(tmp_path), device="cpu", whisper_mode="trimmed")
    assert enc.describe()["weights_hash"] == hashlib.sha256(data).hexdigest()
    out = enc([np.sin(np.arange(8000, dtype=np.float32) / 9)])
    assert out.hidden.shape == (3, 1, 25, 32) and out.lengths.tolist() == [25]


def test_ct2_whisper_stops_at_max_layer(tiny_bin, tmp_path):
    """A CTranslate2 Whisper runs as a WhisperEncoder built from its weights: ``max_layer`` truncates it too."""
    shutil.copy(tiny_bin[0], tmp_path / "model.bin")
    enc = load_model(str(tmp_path), device="cpu", whisper_mode="trimmed")
    waves = [np.sin(np.arange(n, dtype=np.float32) / 9) for n in (8000, 5000)]
    full = enc(waves)
    calls = []
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, layer in
               enumerate(enc.encoder.layers)]
    try:
        for k in range(enc.num_layers):
            calls.clear()
            got = enc(waves, max_layer=k)
            assert torch.equal(got.hidden, full.hidden[:k + 1]) and calls == list(range(k)), k
    finally:
        for h in handles:
            h.remove()


def _cut_points(data: bytes) -> dict[str, int]:
    first_name = 4 + 2 + len(b"WhisperSpec\0") + 8  # version, spec string, revision, count
    big = data.index(b"encoder/position_encodings/encodings\0")
    return {"in-header": 6, "in-first-name": first_name + 5, "in-data": big + 200,
            "in-skipped-decoder-data": data.index(b"decoder/embeddings/weight\0") + 40, "in-alias": len(data) - 3}


@pytest.mark.parametrize("where", ["in-header", "in-first-name", "in-data", "in-skipped-decoder-data", "in-alias"])
def test_truncated_file_raises(tiny_bin, tmp_path, where):
    _, data = tiny_bin
    cut = tmp_path / "model.bin"
    cut.write_bytes(data[: _cut_points(data)[where]])
    with pytest.raises(CT2FormatError):
        read_model_bin([cut], keep=r"^encoder/")
    with pytest.raises(CT2FormatError):
        read_model_bin([cut])


def test_old_version_and_wrong_spec_raise(tiny_encoder, tmp_path):
    write_model_bin(tmp_path / "old.bin", {"x": np.zeros(2, np.float32)}, version=4)
    with pytest.raises(CT2FormatError, match="version 4"):
        read_model_bin([tmp_path / "old.bin"])
    write_model_bin(tmp_path / "t5.bin", ct2_whisper_variables(tiny_encoder), spec="TransformerSpec")
    with pytest.raises(CT2FormatError, match="WhisperSpec"):
        load_whisper_encoder([tmp_path / "t5.bin"])


def test_nonzero_key_bias_raises(tiny_encoder, tmp_path):
    write_model_bin(tmp_path / "model.bin", ct2_whisper_variables(tiny_encoder, key_bias=0.01))
    with pytest.raises(CT2FormatError, match="non-zero key bias"):
        load_whisper_encoder([tmp_path / "model.bin"])


# --- parity with ctranslate2 on the embedded whisper-base --------------------------------------------


def test_embedded_whisper_base_matches_ctranslate2(tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2")
    from transformers import WhisperFeatureExtractor

    from ray_ser import audio
    from ray_ser.fm.registry import embedded_parts

    wav = data_root() / "emodb" / "wav" / "03a01Fa.wav"
    if not wav.exists():
        pytest.skip(f"EmoDB not found under {wav.parent}")
    try:
        parts = embedded_parts("whisper-base")
    except ModuleNotFoundError as e:
        pytest.skip(str(e))

    # the embedded model as the CT2 folder ctranslate2 expects
    with open(tmp_path / "model.bin", "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(parts[0].parent / name, tmp_path / name)

    wave = audio.load(str(wav))  # 22.05 kHz -> 16 kHz mono
    mel = WhisperFeatureExtractor(feature_size=80, sampling_rate=16000)(
        wave, sampling_rate=16000, padding="max_length", return_tensors="np")["input_features"]
    mel = np.ascontiguousarray(mel, dtype=np.float32)
    assert mel.shape == (1, 80, 3000)

    reference = ctranslate2.models.Whisper(str(tmp_path), device="cpu", intra_threads=2)
    want = np.asarray(reference.encode(ctranslate2.StorageView.from_array(mel), to_cpu=True), np.float64)[0]
    del reference

    enc = load_model("whisper-base", device="cpu")  # padded mode: the full 30 s window
    assert enc.describe()["weights_hash"] == hashlib.sha256((tmp_path / "model.bin").read_bytes()).hexdigest()
    np.testing.assert_array_equal(enc.log_mel(wave, enc.context_samples(len(wave))), mel[0])
    out = enc([wave])
    assert out.hidden.shape == (7, 1, 1500, 512)
    got = out.hidden[-1, 0].double().numpy()
    assert want.shape == got.shape == (1500, 512)

    max_abs = float(np.abs(got - want).max())
    cosine = float((got.ravel() @ want.ravel()) / (np.linalg.norm(got) * np.linalg.norm(want)))
    frame_cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    print(f"\nCT2 parity (whisper-base, {wav.name}, 1500 frames): max abs diff {max_abs:.3e}, "
          f"cosine {cosine:.8f}, min per-frame cosine {frame_cos.min():.8f}, max |ref| {np.abs(want).max():.2f}")
    assert max_abs < 1e-2
    assert cosine > 0.9999
