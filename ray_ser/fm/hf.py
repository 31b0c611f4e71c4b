"""Hugging Face speech models (HuBERT, WavLM, Wav2Vec2, Data2Vec-audio, Whisper) by hub id or local folder."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ray_ser.fm.base import EncoderOutput, SpeechEncoder, pick_device

CTC_STYLE = {"hubert", "wavlm", "wav2vec2", "wav2vec2-conformer", "data2vec-audio", "unispeech-sat"}


def weights_hash(model_dir: str | Path | None, model: torch.nn.Module) -> str:
    """sha256 of the checkpoint's weight files, or of the parameters when there are no files."""
    h = hashlib.sha256()
    files = []
    if model_dir is not None and Path(model_dir).is_dir():
        files = sorted(p for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin"))
    if files:
        for p in files:
            h.update(p.read_bytes())
    else:
        for name, t in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()


def _resolved_dir(model: torch.nn.Module, spec: str) -> Path | None:
    path = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", spec)
    return Path(path) if Path(path).is_dir() else None


class CTCStyleEncoder(SpeechEncoder):
    """A wav2vec2-family model; index 0 = feature projection output, i = transformer layer i.

    Models whose feature extractor uses layer norm (the "large" ones) take an attention mask; the
    group-norm ("base") ones were trained without one and get zero-padded input, as transformers advises.
    """

    def __init__(self, model: torch.nn.Module, extractor, name: str, weights: str,
                 device: str | torch.device | None = None, dtype: torch.dtype = torch.float32):
        self.device = pick_device(device)
        self.model = model.eval().to(self.device, dtype)
        self.dtype = dtype
        self.extractor = extractor
        self.name = name
        self.weights_hash = weights
        self.sample_rate = int(extractor.sampling_rate)
        self.hidden_size = model.config.hidden_size
        self.num_layers = model.config.num_hidden_layers + 1
        self.use_mask = getattr(model.config, "feat_extract_norm", "group") == "layer"

    def num_frames(self, num_samples: int) -> int:
        return int(self.model._get_feat_extract_output_lengths(torch.tensor(num_samples)).item())

    def _forward(self, waves: Sequence[np.ndarray]) -> EncoderOutput:
        batch = self.extractor(list(waves), sampling_rate=self.sample_rate, padding="longest",
                               return_attention_mask=True, return_tensors="pt")
        kwargs = {"input_values": batch["input_values"].to(self.device, self.dtype)}
        if self.use_mask:
            kwargs["attention_mask"] = batch["attention_mask"].to(self.device)
        out = self.model(**kwargs, output_hidden_states=True)
        lengths = torch.tensor([self.num_frames(len(w)) for w in waves])
        return EncoderOutput(hidden=torch.stack(out.hidden_states), lengths=lengths)


def load(spec: str, device=None, dtype: torch.dtype = torch.float32, whisper_mode: str | float = "padded") -> SpeechEncoder:
    """Load a hub id or a local folder; the model type comes from its config."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, Wav2Vec2FeatureExtractor

    config = AutoConfig.from_pretrained(spec)
    kind = config.model_type
    if kind == "whisper":
        from transformers import WhisperModel

        from ray_ser.fm.whisper import WhisperSpeechEncoder

        model = WhisperModel.from_pretrained(spec)
        return WhisperSpeechEncoder(model.encoder, name=spec, weights_hash=weights_hash(_resolved_dir(model, spec), model),
                                    mode=whisper_mode, device=device, dtype=dtype)
    if kind not in CTC_STYLE:
        raise ValueError(f"{spec}: model type {kind!r} is not supported; supported: whisper, {sorted(CTC_STYLE)}")
    model = AutoModel.from_pretrained(spec)
    try:
        extractor = AutoFeatureExtractor.from_pretrained(spec)
    except (OSError, ValueError):  # a checkpoint without preprocessor_config.json: the family's defaults
        extractor = Wav2Vec2FeatureExtractor(
            sampling_rate=16000, do_normalize=getattr(config, "feat_extract_norm", "group") == "layer",
            return_attention_mask=True,
        )
    return CTCStyleEncoder(model, extractor, name=spec, weights=weights_hash(_resolved_dir(model, spec), model),
                           device=device, dtype=dtype)
