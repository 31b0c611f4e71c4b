"""Hugging Face speech models (HuBERT, WavLM, Wav2Vec2, Data2Vec-audio, Whisper) by hub id or local folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ray_ser.fm import hashing
from ray_ser.fm.base import EncoderOutput, SpeechEncoder, pick_device
from ray_ser.fm.features import normalize_batch, to_device_batch

CTC_STYLE = {"hubert", "wavlm", "wav2vec2", "wav2vec2-conformer", "data2vec-audio", "unispeech-sat"}


def checkpoint_dir(spec: str) -> Path:
    """The local folder of a checkpoint: ``spec`` itself, or the hub cache's snapshot of a hub id."""
    if Path(spec).is_dir():
        return Path(spec)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.bin"]))


def checkpoint_hash(folder: Path) -> str:
    """sha256 over the checkpoint's weight files, in name order: the identity the store records."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    if not files:
        raise FileNotFoundError(f"no weight files (*.safetensors, *.bin) in {folder}")
    return hashing.files_sha256(files)


def _sample_rate(folder: Path) -> int:
    pre = folder / "preprocessor_config.json"
    return int(json.loads(pre.read_text()).get("sampling_rate", 16000)) if pre.exists() else 16000


class CTCStyleEncoder(SpeechEncoder):
    """A wav2vec2-family model; index 0 = feature projection output, i = transformer layer i.

    Models whose feature extractor uses layer norm (the "large" ones) take an attention mask; the
    group-norm ("base") ones were trained without one and get zero-padded input, as transformers advises.
    The input is prepared as the checkpoint's feature extractor prepares it (``do_normalize``: zero-mean
    unit-variance per utterance), batched on the model's device.
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
        self.normalize = bool(getattr(extractor, "do_normalize", False))
        self.padding_value = float(getattr(extractor, "padding_value", 0.0))

    def num_frames(self, num_samples: int) -> int:
        return int(self.model._get_feat_extract_output_lengths(torch.tensor(num_samples)).item())

    def prepare(self, waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_values (batch, samples) float32 on the device, samples per row): the extractor's output, batched."""
        x, lens = to_device_batch(waves, self.device)
        if self.normalize:
            x = normalize_batch(x, lens)
        if self.padding_value:
            x = x.masked_fill(torch.arange(x.shape[1], device=x.device)[None, :] >= lens.to(x.device)[:, None],
                              self.padding_value)
        return x, lens

    def _forward(self, waves: Sequence[np.ndarray], max_layer: int | None = None) -> EncoderOutput:
        return self.run(self.prepare(waves), max_layer)

    def run(self, inputs: tuple[torch.Tensor, torch.Tensor], max_layer: int | None = None) -> EncoderOutput:
        x, lens = inputs
        kwargs = {"input_values": x.to(self.dtype)}
        if self.use_mask:
            kwargs["attention_mask"] = (torch.arange(x.shape[1], device=x.device)[None, :]
                                        < lens.to(x.device)[:, None]).long()
        k = self.layers_to_run(max_layer)
        if k is None:
            states = self.model(**kwargs, output_hidden_states=True).hidden_states
        else:
            states = self._truncated(kwargs, k)
        lengths = self.model._get_feat_extract_output_lengths(lens).long()
        return EncoderOutput(hidden=torch.stack(states), lengths=lengths)

    def _truncated(self, kwargs: dict, k: int) -> list[torch.Tensor]:
        """Hidden states 0..k (k below the last) with only the first max(k, 1) transformer layers run.

        The encoder's layer list is cut for the call, so transformers collects the states as in the full forward.
        The state after the last layer run is taken from that layer's own output: transformers may give its
        encoder's last state the final layer norm (the stable-layer-norm "large" models; transformers 5 returns
        it raw, 4 normed), and for the full forward this state is an intermediate one, always raw."""
        encoder = getattr(self.model, "encoder", None)
        layers = getattr(encoder, "layers", None)
        if not isinstance(layers, torch.nn.ModuleList):  # a layout this does not know: the full forward, cut
            return list(self.model(**kwargs, output_hidden_states=True).hidden_states[:k + 1])
        n = max(k, 1)  # states[0] is recorded as the first layer's input: one layer at least
        last: list[torch.Tensor] = []
        handle = layers[n - 1].register_forward_hook(
            lambda module, args, output: last.append(output[0] if isinstance(output, tuple) else output))
        encoder.layers = layers[:n]
        try:
            states = list(self.model(**kwargs, output_hidden_states=True).hidden_states)
        finally:
            encoder.layers = layers
            handle.remove()
        if len(states) != n + 1 or len(last) != 1:
            raise RuntimeError(f"{self.name}: {len(states)} hidden states from {n} layers; expected {n + 1}")
        states[n] = last[0]
        return states[:k + 1]


def describe(spec: str, whisper_mode: str | float = "padded") -> dict:
    """Model facts from the config and a hash of the weight files, without instantiating the model."""
    from transformers import AutoConfig

    folder = checkpoint_dir(spec)
    config = AutoConfig.from_pretrained(folder)
    out = {"model": spec, "weights_hash": checkpoint_hash(folder), "sample_rate": _sample_rate(folder)}
    if config.model_type == "whisper":
        from ray_ser.fm.whisper import mode_name, parse_mode

        return {**out, "num_layers": config.encoder_layers + 1, "hidden_size": config.d_model,
                "whisper_mode": mode_name(parse_mode(whisper_mode))}
    if config.model_type not in CTC_STYLE:
        raise ValueError(f"{spec}: model type {config.model_type!r} is not supported; supported: whisper, {sorted(CTC_STYLE)}")
    return {**out, "num_layers": config.num_hidden_layers + 1, "hidden_size": config.hidden_size}


def load(spec: str, device=None, dtype: torch.dtype = torch.float32, whisper_mode: str | float = "padded") -> SpeechEncoder:
    """Load a hub id or a local folder; the model type comes from its config."""
    from transformers import (
        AutoConfig,
        AutoFeatureExtractor,
        AutoModel,
        Wav2Vec2FeatureExtractor,
    )

    folder = checkpoint_dir(spec)
    config = AutoConfig.from_pretrained(folder)
    kind = config.model_type
    if kind == "whisper":
        from transformers import WhisperModel

        from ray_ser.fm.whisper import WhisperSpeechEncoder

        model = WhisperModel.from_pretrained(folder)
        return WhisperSpeechEncoder(model.encoder, name=spec, weights_hash=checkpoint_hash(folder),
                                    mode=whisper_mode, device=device, dtype=dtype)
    if kind not in CTC_STYLE:
        raise ValueError(f"{spec}: model type {kind!r} is not supported; supported: whisper, {sorted(CTC_STYLE)}")
    model = AutoModel.from_pretrained(folder)
    try:
        extractor = AutoFeatureExtractor.from_pretrained(folder)
    except (OSError, ValueError):  # a checkpoint without preprocessor_config.json: the family's defaults
        extractor = Wav2Vec2FeatureExtractor(
            sampling_rate=16000, do_normalize=getattr(config, "feat_extract_norm", "group") == "layer",
            return_attention_mask=True,
        )
    return CTCStyleEncoder(model, extractor, name=spec, weights=checkpoint_hash(folder), device=device, dtype=dtype)
