"""Whisper's encoder as a :class:`SpeechEncoder`, with a choice of how much context each utterance gets.

transformers' ``WhisperEncoder.forward`` only accepts 30 s windows. Whisper was trained on 30 s windows
whose tail is silence, and its upper layers lean on that tail, so cutting it away changes them. Here each
utterance is encoded in a window of its own, ``max(window_s, its duration)`` long (capped at 30 s): the
audio, then zero-padded silence, exactly as Whisper's feature extractor pads. ``window_s=30`` is the
padded mode (identical to transformers), ``window_s=0`` the trimmed mode (only the frames the audio
needs). Utterances of different lengths share a batch without changing each other's output: the mel
input past each window is zero (what the convolutions' own padding sees) and attention keys past each
window are masked.

The strided mode (``strided:<s>``) approximates the padded mode at a fraction of its cost. In the padded
window the silent tail's log-mel is one constant per utterance, so its ~1400 frames differ (away from the
speech) only by their positional embeddings. Strided mode keeps the real frames plus every s-th frame of the
tail (positions T, T+s, T+2s, ... < 1500, each with its true positional embedding) and, in every attention
layer, adds log(count) to the logit of each kept tail key, count being how many tail positions it stands for
(s, fewer for the last), so softmax gives it the weight the full set of near-identical keys would get (exactly,
if the skipped keys were identical). All kept frames are queries, so the tail still attends to the speech and
to itself layer by layer. The convolutions only run over the speech plus a margin and over a short constant
block standing for the tail's interior and its last frame (which the convs' zero padding makes different);
those are exactly the padded mode's conv outputs. ``strided:1`` is the padded mode, computed this way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ray_ser.fm.base import EncoderOutput, SpeechEncoder, key_padding_mask, pick_device

HOP = 160  # samples per mel frame
SAMPLES_PER_FRAME = 2 * HOP  # conv2 has stride 2: one encoder frame per 320 samples (20 ms)
MAX_SECONDS = 30.0

MODES = {"padded": 30.0, "trimmed": 0.0}
MAX_STRIDE = 1500  # one kept tail frame per utterance already (the window has at most 1500 frames)
# strided mode: exact conv outputs for frames < T + HEAD_MARGIN - 1 (from T + 2 on, the tail is constant)
HEAD_MARGIN = 6
TAIL_MELS = 8  # constant mel block whose conv gives the tail's interior frame and its last frame


@dataclass(frozen=True)
class Strided:
    """The strided-silence mode: the padded 30 s window with every ``stride``-th tail frame standing for ``stride``."""

    stride: int


def parse_mode(mode: str | float) -> float | Strided:
    """'padded' -> 30 s, 'trimmed' -> 0 s, 'window:10' or 10 -> a 10 s window, 'strided:10' -> Strided(10)."""
    if isinstance(mode, Strided):
        stride = mode.stride
    elif isinstance(mode, (int, float)):
        stride, seconds = None, float(mode)
    elif mode in MODES:
        stride, seconds = None, MODES[mode]
    elif str(mode).startswith("window:"):
        stride, seconds = None, float(str(mode).split(":", 1)[1])
    elif str(mode).startswith("strided:"):
        text = str(mode).split(":", 1)[1]
        if not text.isdigit():
            raise ValueError(f"Whisper stride must be a positive integer, got {text!r}")
        stride = int(text)
    else:
        raise ValueError(f"unknown Whisper mode {mode!r}: use 'padded', 'trimmed', 'window:<seconds>' "
                         "or 'strided:<frames>'")
    if stride is not None:
        if not 1 <= stride <= MAX_STRIDE:
            raise ValueError(f"Whisper stride must be within [1, {MAX_STRIDE}], got {stride}")
        return Strided(stride)
    if not 0.0 <= seconds <= MAX_SECONDS:
        raise ValueError(f"Whisper window must be within [0, {MAX_SECONDS}] s, got {seconds}")
    return seconds


def mode_name(mode: float | Strided) -> str:
    """The canonical name of a parsed mode: 'padded', 'trimmed', 'window:<s>' or 'strided:<n>'."""
    if isinstance(mode, Strided):
        return f"strided:{mode.stride}"
    if mode == MAX_SECONDS:
        return "padded"
    return "trimmed" if mode == 0 else f"window:{mode:g}"


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
        parsed = parse_mode(mode)
        self.mode = mode_name(parsed)
        # strided mode approximates the full window; window_s is what context_samples() pads to
        self.stride = parsed.stride if isinstance(parsed, Strided) else None
        self.window_s = MAX_SECONDS if self.stride is not None else parsed
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
        if self.stride is not None:
            return self._encode_strided(waves)
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
        return self._layers(x, key_padding_mask(frames, total, x.dtype, x.device))

    def _layers(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Run the transformer layers on embedded frames -> (layers + 1, batch, frames, dim); the last
        state gets the encoder's final layer norm, as transformers' WhisperEncoder returns it."""
        states = [x]
        for layer in self.encoder.layers:
            x = layer(x, mask)
            states.append(x)
        states[-1] = self.encoder.layer_norm(x)
        return torch.stack(states)

    def _strided_conv(self, waves: Sequence[np.ndarray], real: list[int]):
        """The padded window's conv outputs (before positions), computed only where they differ.

        Returns ``head`` (batch, H, dim) with ``exact[b]`` leading frames equal to the padded mode's, and
        per utterance the tail's interior frame ``inner`` and last frame ``last`` (batch, dim) each.
        Frames in [exact[b], 1499) equal ``inner[b]``; frame 1499 equals ``last[b]``.
        """
        enc = self.encoder
        n_mels = enc.config.num_mel_bins
        # frames of each head chunk: the speech plus a margin of silence; the whole window if that nearly fills it
        chunk = [T + HEAD_MARGIN if T + HEAD_MARGIN + TAIL_MELS < self.max_frames else self.max_frames for T in real]
        # conv2 frame p reads mel frames 2p-2 .. 2p+2, so the chunk's last frame sees the chunk's zero padding
        exact = [c - 1 if c < self.max_frames else c for c in chunk]
        mels = np.zeros((len(waves), n_mels, 2 * max(chunk)), np.float32)
        tail = np.zeros((len(waves), n_mels, TAIL_MELS), np.float32)
        for b, (w, c) in enumerate(zip(waves, chunk)):
            # The chunk ends in >= 10 mel frames of pure silence, so its STFT frames (reflect-padded silence) and its
            # max (-8 clamp) are the full window's: these are the padded mode's first 2c mel frames exactly.
            m = self.log_mel(w, c * SAMPLES_PER_FRAME)
            mels[b, :, : m.shape[1]] = m
            tail[b] = m[:, -1:]  # the silent tail's log-mel: one constant per utterance

        def conv(m: np.ndarray) -> torch.Tensor:
            x = nn.functional.gelu(enc.conv1(torch.from_numpy(m).to(self.device, self.dtype)))
            return nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)

        head = conv(mels)
        # The tail block's TAIL_MELS/2 conv frames: the first sees the block's left zero padding, the second
        # reads constant mel only (the tail's interior), the last sees the right zero padding exactly as
        # frame 1499 of the window does.
        t = conv(tail)
        inner, last = t[:, 1], t[:, -1]
        return head, exact, inner, last

    def _encode_strided(self, waves: Sequence[np.ndarray]) -> torch.Tensor:
        """Strided-silence mode: real frames, every s-th silent frame with a log-count attention bias."""
        enc = self.encoder
        s, total = self.stride, self.max_frames
        real = [min(self.num_frames(len(w)), total) for w in waves]
        head, exact, inner, last = self._strided_conv(waves, real)
        pos = enc.embed_positions.weight
        device, dtype = head.device, head.dtype
        kept_pos, kept_bias = [], []
        for T in real:
            pad = torch.arange(T, total, s, device=device)
            count = torch.clamp(total - pad, max=s).to(dtype)
            kept_pos.append(torch.cat([torch.arange(T, device=device), pad]))
            kept_bias.append(torch.cat([torch.zeros(T, dtype=dtype, device=device), torch.log(count)]))
        n = max(len(p) for p in kept_pos)
        x = torch.zeros(len(waves), n, head.shape[-1], dtype=dtype, device=device)
        bias = torch.full((len(waves), n), torch.finfo(dtype).min, dtype=dtype, device=device)
        for b, (p, bb) in enumerate(zip(kept_pos, kept_bias)):
            k = len(p)
            conv = torch.where((p == total - 1)[:, None], last[b], inner[b])
            from_head = p < exact[b]
            conv[from_head] = head[b, p[from_head]]
            x[b, :k] = conv + pos[p]
            bias[b, :k] = bb
        hidden = self._layers(x, bias[:, None, None, :].expand(-1, 1, n, n))
        # only the real frames are returned (real first, as in the other modes); slots past an utterance's
        # real frames held its kept silent frames and are zeroed
        out = hidden[:, :, : max(real)]
        for b, T in enumerate(real):
            out[:, b, T:] = 0
        return out
