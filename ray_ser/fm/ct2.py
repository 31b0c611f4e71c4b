"""Read a CTranslate2 ``model.bin`` without ctranslate2 and turn a Whisper one into a ``WhisperEncoder``.

Format (ctranslate2 ``specs/model_spec.py``, binary version >= 5): u32 version, string spec name, u32 spec
revision, u32 variable count, then per variable: string name, u8 rank, u32 dims[rank], u8 dtype id,
u32 byte count, raw bytes; then u32 alias count and (alias, target) string pairs. Strings are u16 length
(including a trailing NUL) + UTF-8 bytes. All little-endian.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np
import torch

from ray_ser.fm import hashing

DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")  # index = dtype id


class CT2FormatError(ValueError):
    """The bytes are not a CTranslate2 model of a version and kind this reader knows."""


@dataclass
class CT2Model:
    spec: str
    revision: int
    version: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)
    sha256: str = ""


def _read(f: BinaryIO, fmt: str):
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise CT2FormatError("model.bin ends before the variables it announces")
    return struct.unpack("<" + fmt, data)


def _string(f: BinaryIO) -> str:
    (n,) = _read(f, "H")
    raw = f.read(n)
    if len(raw) != n:
        raise CT2FormatError("model.bin ends inside a string")
    return raw[:-1].decode("utf-8")


def read_model_bin(parts: Iterable[str | Path], keep: str | None = None) -> CT2Model:
    """Parse a model.bin given as one path or several parts to concatenate, in order.

    ``keep`` is a regex: only variables whose name matches are decoded (others are skipped unread).
    """
    parts = [Path(p) for p in parts]
    sha = hashing.files_sha256(parts)  # cached by path/size/mtime: hashed once per file version
    buf = b"".join(p.read_bytes() for p in parts)
    f = io.BytesIO(buf)
    (version,) = _read(f, "I")
    if version < 5:
        raise CT2FormatError(f"CTranslate2 binary version {version} is older than this reader supports (>= 5)")
    spec = _string(f)
    (revision,) = _read(f, "I")
    (count,) = _read(f, "I")
    pattern = re.compile(keep) if keep else None
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = _string(f)
        (rank,) = _read(f, "B")
        dims = _read(f, f"{rank}I") if rank else ()
        (dtype_id,) = _read(f, "B")
        (nbytes,) = _read(f, "I")
        if f.tell() + nbytes > len(buf):
            raise CT2FormatError(f"model.bin ends inside the data of variable {name}")
        if pattern is not None and not pattern.search(name):
            f.seek(nbytes, io.SEEK_CUR)
            continue
        if dtype_id >= len(DTYPES):
            raise CT2FormatError(f"variable {name}: unknown dtype id {dtype_id}")
        raw = f.read(nbytes)
        dtype = DTYPES[dtype_id]
        if dtype == "bfloat16":
            arr = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16).float().numpy()
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
        variables[name] = arr.reshape(dims)
    aliases = {}
    if f.tell() < len(buf):
        (n_alias,) = _read(f, "I")
        for _ in range(n_alias):
            alias = _string(f)
            aliases[alias] = _string(f)
    return CT2Model(spec, revision, version, variables, aliases, sha)


def _encoder_layers(variables: dict[str, np.ndarray]) -> list[int]:
    return sorted({int(m.group(1)) for k in variables if (m := re.match(r"encoder/layer_(\d+)/", k))})


ENCODER_DIM_VARIABLES = (r"^encoder/(num_heads|conv1/weight|position_encodings/encodings|layer_0/ffn/linear_0/weight"
                         r"|layer_\d+/ffn/layer_norm/beta)$")
"""The variables :func:`whisper_encoder_dims` reads: pass as ``keep`` to read only those."""


def whisper_encoder_dims(model: CT2Model) -> dict[str, int]:
    """Encoder sizes of a CT2 WhisperSpec model, from its variables' shapes (no transformers needed)."""
    v = model.variables
    if model.spec != "WhisperSpec":
        raise CT2FormatError(f"expected a WhisperSpec model, got {model.spec}")
    d_model, n_mels, _ = v["encoder/conv1/weight"].shape
    return {"d_model": int(d_model), "n_mels": int(n_mels), "layers": len(_encoder_layers(v)),
            "heads": int(np.asarray(v["encoder/num_heads"]).item()),
            "ffn": int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
            "positions": int(v["encoder/position_encodings/encodings"].shape[0])}


def whisper_encoder_config(model: CT2Model):
    """A ``WhisperConfig`` whose encoder matches the shapes of a CT2 WhisperSpec's encoder variables."""
    from transformers import WhisperConfig

    d = whisper_encoder_dims(model)
    return WhisperConfig(
        num_mel_bins=d["n_mels"], d_model=d["d_model"], encoder_layers=d["layers"],
        encoder_attention_heads=d["heads"], encoder_ffn_dim=d["ffn"], max_source_positions=d["positions"],
        decoder_layers=1, decoder_attention_heads=d["heads"], decoder_ffn_dim=d["ffn"],
    )


def whisper_encoder_state_dict(model: CT2Model) -> dict[str, torch.Tensor]:
    """Map CT2 WhisperSpec encoder variables onto transformers' ``WhisperEncoder`` parameter names.

    CT2 fuses q/k/v into one ``linear_0`` (k has a zero bias there, none in transformers); a non-zero
    key bias would be silently lost, so it is an error.
    """
    v = model.variables
    t = lambda name: torch.from_numpy(np.array(v[name], dtype=np.float32))  # noqa: E731 (copy: frombuffer is read-only)
    sd = {
        "conv1.weight": t("encoder/conv1/weight"), "conv1.bias": t("encoder/conv1/bias"),
        "conv2.weight": t("encoder/conv2/weight"), "conv2.bias": t("encoder/conv2/bias"),
        "embed_positions.weight": t("encoder/position_encodings/encodings"),
        "layer_norm.weight": t("encoder/layer_norm/gamma"), "layer_norm.bias": t("encoder/layer_norm/beta"),
    }
    for i in _encoder_layers(v):
        src, dst = f"encoder/layer_{i}", f"layers.{i}"
        qkv_w, qkv_b = t(f"{src}/self_attention/linear_0/weight"), t(f"{src}/self_attention/linear_0/bias")
        q_w, k_w, v_w = qkv_w.chunk(3, dim=0)
        q_b, k_b, v_b = qkv_b.chunk(3, dim=0)
        if torch.count_nonzero(k_b):
            raise CT2FormatError(f"{src}: non-zero key bias cannot be represented in WhisperEncoder")
        sd.update({
            f"{dst}.self_attn.q_proj.weight": q_w, f"{dst}.self_attn.q_proj.bias": q_b,
            f"{dst}.self_attn.k_proj.weight": k_w,
            f"{dst}.self_attn.v_proj.weight": v_w, f"{dst}.self_attn.v_proj.bias": v_b,
            f"{dst}.self_attn.out_proj.weight": t(f"{src}/self_attention/linear_1/weight"),
            f"{dst}.self_attn.out_proj.bias": t(f"{src}/self_attention/linear_1/bias"),
            f"{dst}.self_attn_layer_norm.weight": t(f"{src}/self_attention/layer_norm/gamma"),
            f"{dst}.self_attn_layer_norm.bias": t(f"{src}/self_attention/layer_norm/beta"),
            f"{dst}.fc1.weight": t(f"{src}/ffn/linear_0/weight"), f"{dst}.fc1.bias": t(f"{src}/ffn/linear_0/bias"),
            f"{dst}.fc2.weight": t(f"{src}/ffn/linear_1/weight"), f"{dst}.fc2.bias": t(f"{src}/ffn/linear_1/bias"),
            f"{dst}.final_layer_norm.weight": t(f"{src}/ffn/layer_norm/gamma"),
            f"{dst}.final_layer_norm.bias": t(f"{src}/ffn/layer_norm/beta"),
        })
    return sd


def load_whisper_encoder(parts: Iterable[str | Path]):
    """Build a ``WhisperEncoder`` from CT2 model.bin part(s) with strict key checking; returns (encoder, sha256)."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    model = read_model_bin(parts, keep=r"^encoder/")
    config = whisper_encoder_config(model)
    with torch.device("meta"):  # no random init: every parameter comes from the file (strict, assigned)
        encoder = WhisperEncoder(config)
    encoder.load_state_dict(whisper_encoder_state_dict(model), strict=True, assign=True)
    return encoder.eval(), model.sha256
