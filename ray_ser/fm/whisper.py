"""Whisper's encoder as a :class:`SpeechEncoder`, with a choice of how much context each utterance gets.

transformers' ``WhisperEncoder.forward`` only accepts 30 s windows. Whisper was trained on 30 s windows
whose tail is silence, and its upper layers lean on that tail, so cutting it away changes them. Here each
utterance is encoded in a window of its own, ``max(window_s, its duration)`` long (capped at 30 s): the
audio, then zero-padded silence, exactly as Whisper's feature extractor pads. ``window_s=30`` is the
padded mode (identical to transformers), ``window_s=0`` the trimmed mode (only the frames the audio
needs). Utterances of different lengths share a batch without changing each other's output: the mel
input past each window is zero (what the convolutions' own padding sees) and attention keys past each
window are masked.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ray_ser.fm.base import EncoderOutput, SpeechEncoder, key_padding_mask, pick_device

HOP = 160  # samples per mel frame
SAMPLES_PER_FRAME = 2 * HOP  # conv2 has stride 2: one encoder frame per 320 samples (20 ms)
MAX_SECONDS = 30.0

MODES = {"padded": 30.0, "trimmed": 0.0}


def parse_mode(mode: str | float) -> float:
    """'padded' -> 30 s, 'trimmed' -> 0 s, 'window:10' or 10 -> a 10 s window."""
    if isinstance(mode, (int, float)):
        seconds = float(mode)
    elif mode in MODES:
        seconds = MODES[mode]
    elif str(mode).startswith("window:"):
        seconds = float(str(mode).split(":", 1)[1])
    else:
        raise ValueError(f"unknown Whisper mode {mode!r}: use 'padded', 'trimmed' or 'window:<seconds>'")
    if not 0.0 <= seconds <= MAX_SECONDS:
        raise ValueError(f"Whisper window must be within [0, {MAX_SECONDS}] s, got {seconds}")
    return seconds


def mode_name(seconds: float) -> str:
    """The canonical name of a window length: 'padded', 'trimmed' or 'window:<s>'."""
    if seconds == MAX_SECONDS:
        return "padded"
    return "trimmed" if seconds == 0 else f"window:{seconds:g}"


class WhisperSpeechEncoder(SpeechEncoder):
    """All hidden states of a transformers ``WhisperEncoder``: index 0 = conv + positions, i = layer i.

    The last index gets the encoder's final layer norm, as transformers and CTranslate2 return it.
    """

    def __init__(self, encoder: nn.Module, name: str, weights_hash: str, mode: str | float = "padded",
                 device: str | torch.device | None = None, dtype: torch.dtype = torch.float32):
        from transformers import WhisperFeatureExtractor

        self.device = pick_device(device)
        self.dtype = dtype
        self.encoder = encoder.eval().to(self.device, dtype)
        cfg = encoder.config
        self.name = name
        self.weights_hash = weights_hash
        self.window_s = parse_mode(mode)
        self.mode = mode_name(self.window_s)
        self.hidden_size = cfg.d_model
        self.num_layers = cfg.encoder_layers + 1
        self.max_frames = cfg.max_source_positions
        self.features = WhisperFeatureExtractor(feature_size=cfg.num_mel_bins, sampling_rate=self.sample_rate)

    def describe(self) -> dict:
        return {**super().describe(), "whisper_mode": self.mode}

    def num_frames(self, num_samples: int) -> int:
        """One frame per 20 ms; audio past 30 s is encoded in further 30 s windows and its frames appended."""
        return math.ceil(num_samples / SAMPLES_PER_FRAME)

    def context_samples(self, num_samples: int) -> int:
        """Samples of the window an utterance is encoded in: a multiple of 320 (an even mel frame count)."""
        want = max(num_samples, int(round(self.window_s * self.sample_rate)))
        frames = min(math.ceil(want / SAMPLES_PER_FRAME), self.max_frames)
        return frames * SAMPLES_PER_FRAME

    def log_mel(self, wave: np.ndarray, context: int) -> np.ndarray:
        """Whisper's log-mel of ``wave`` zero-padded (or cut) to ``context`` samples: (mels, context/160)."""
        wave = wave[:context]
        feats = self.features(wave, sampling_rate=self.sample_rate, padding="max_length", max_length=context,
                              truncation=True, return_tensors="np")
        return feats["input_features"][0]

    def _forward(self, waves: Sequence[np.ndarray]) -> EncoderOutput:
        step = self.max_frames * SAMPLES_PER_FRAME  # 30 s: longer audio is cut into whole windows
        owner, pieces = [], []
        for b, w in enumerate(waves):
            for start in range(0, max(len(w), 1), step):
                owner.append(b)
                pieces.append(w[start:start + step])
        hidden = self._encode(pieces)
        lengths = [self.num_frames(len(w)) for w in waves]
        if len(pieces) == len(waves):
            return EncoderOutput(hidden=hidden, lengths=torch.tensor(lengths))
        out = hidden.new_zeros(hidden.shape[0], len(waves), max(lengths), hidden.shape[-1])
        filled = [0] * len(waves)
        for p, (b, piece) in enumerate(zip(owner, pieces)):
            n = self.num_frames(len(piece))
            out[:, b, filled[b]:filled[b] + n] = hidden[:, p, :n]
            filled[b] += n
        return EncoderOutput(hidden=out, lengths=torch.tensor(lengths))

    def _encode(self, waves: Sequence[np.ndarray]) -> torch.Tensor:
        """Hidden states (layers, batch, frames, dim) of waves no longer than one 30 s window each."""
        contexts = [self.context_samples(len(w)) for w in waves]
        frames = [c // SAMPLES_PER_FRAME for c in contexts]
        total = max(frames)
        mels = np.zeros((len(waves), self.encoder.config.num_mel_bins, 2 * total), np.float32)
        for b, (w, c) in enumerate(zip(waves, contexts)):
            mels[b, :, : c // HOP] = self.log_mel(w, c)
        x = torch.from_numpy(mels).to(self.device, self.dtype)
        enc = self.encoder
        x = nn.functional.gelu(enc.conv1(x))
        x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.embed_positions.weight[:total]
        mask = key_padding_mask(frames, total, x.dtype, x.device)
        states = [x]
        for layer in enc.layers:
            x = layer(x, mask)
            states.append(x)
        states[-1] = enc.layer_norm(x)
        return torch.stack(states)
