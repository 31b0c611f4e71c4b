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
from ray_ser.fm.features import WhisperLogMel

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

    The last index gets the encoder's final layer norm, as transformers and CTranslate2 return it. With ``max_layer``
    k below the last, only the first k layers run and no state gets the norm (the full run's states below the last
    have none): the Hugging Face Whisper models and the CTranslate2 ones (the embedded ``whisper-base``, whose
    weights load into a ``WhisperEncoder``) alike, since this class runs the layers itself.
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
        self.mel = WhisperLogMel(self.features.mel_filters, self.device, self.sample_rate)  # batched, on the device

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

    def sequence_frames(self, num_samples: int) -> int:
        """Frames the layers process: the window's (all 1500 when padded), real plus kept tail frames when strided."""
        step = self.max_frames * SAMPLES_PER_FRAME
        total = 0
        for start in range(0, max(num_samples, 1), step):
            n = min(step, num_samples - start)
            if self.stride is not None:
                real = min(self.num_frames(n), self.max_frames)
                total += real + math.ceil((self.max_frames - real) / self.stride)
            else:
                total += self.context_samples(n) // SAMPLES_PER_FRAME
        return total

    def log_mel(self, wave: np.ndarray, context: int) -> np.ndarray:
        """Whisper's log-mel of ``wave`` zero-padded (or cut) to ``context`` samples: (mels, context/160).

        transformers' extractor, one utterance at a time: the reference the batched ``self.mel`` is tested against."""
        wave = wave[:context]
        feats = self.features(wave, sampling_rate=self.sample_rate, padding="max_length", max_length=context,
                              truncation=True, return_tensors="np")
        return feats["input_features"][0]

    def prepare(self, waves: Sequence[np.ndarray]) -> "WhisperInputs":
        """Everything before the convolutions: the <= 30 s pieces and their log-mel, batched on the device."""
        step = self.max_frames * SAMPLES_PER_FRAME  # 30 s: longer audio is cut into whole windows
        owner, pieces = [], []
        for b, w in enumerate(waves):
            for start in range(0, max(len(w), 1), step):
                owner.append(b)
                pieces.append(w[start:start + step])
        if self.stride is None:
            contexts = [self.context_samples(len(p)) for p in pieces]
        else:  # the strided mode's conv head: the speech plus a margin (see _strided_layout)
            chunk, _ = self._strided_layout([self._real_frames(len(p)) for p in pieces])
            contexts = [c * SAMPLES_PER_FRAME for c in chunk]
        return WhisperInputs(self.mel(pieces, contexts), [len(p) for p in pieces], owner,
                             [self.num_frames(len(w)) for w in waves])

    def run(self, inputs: "WhisperInputs", max_layer: int | None = None) -> EncoderOutput:
        """The encoder on prepared inputs; audio longer than 30 s gets its windows' frames appended."""
        k = self.layers_to_run(max_layer)
        hidden = self._encode_strided(inputs, k) if self.stride is not None else self._encode(inputs, k)
        lengths = inputs.lengths
        if len(inputs.owner) == len(lengths):
            return EncoderOutput(hidden=hidden, lengths=torch.tensor(lengths))
        out = hidden.new_zeros(hidden.shape[0], len(lengths), max(lengths), hidden.shape[-1])
        filled = [0] * len(lengths)
        for p, (b, samples) in enumerate(zip(inputs.owner, inputs.piece_samples)):
            n = self.num_frames(samples)
            out[:, b, filled[b]:filled[b] + n] = hidden[:, p, :n]
            filled[b] += n
        return EncoderOutput(hidden=out, lengths=torch.tensor(lengths))

    def _forward(self, waves: Sequence[np.ndarray], max_layer: int | None = None) -> EncoderOutput:
        return self.run(self.prepare(waves), max_layer)

    def _encode(self, inputs: "WhisperInputs", k: int | None = None) -> torch.Tensor:
        """Hidden states (layers, pieces, frames, dim) of pieces no longer than one 30 s window each (``k``: states
        0..k only, see :meth:`_layers`)."""
        contexts = [self.context_samples(n) for n in inputs.piece_samples]
        frames = [c // SAMPLES_PER_FRAME for c in contexts]
        total = max(frames)
        x = inputs.mels.to(self.dtype)  # (pieces, mels, 2 * total), zero past each window
        enc = self.encoder
        x = nn.functional.gelu(enc.conv1(x))
        x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.embed_positions.weight[:total]
        return self._layers(x, key_padding_mask(frames, total, x.dtype, x.device), k)

    def _layers(self, x: torch.Tensor, mask: torch.Tensor | None, k: int | None = None) -> torch.Tensor:
        """Run the transformer layers on embedded frames -> (layers + 1, batch, frames, dim); the last
        state gets the encoder's final layer norm, as transformers' WhisperEncoder returns it.

        ``k`` (below the last state): run the first k layers only -> (k + 1, batch, frames, dim), every state raw as
        the full run returns the states below its last."""
        layers = self.encoder.layers if k is None else self.encoder.layers[:k]
        states = [x]
        for layer in layers:
            x = layer(x, mask)
            states.append(x)
        if k is None:
            states[-1] = self.encoder.layer_norm(x)
        return torch.stack(states)

    def _real_frames(self, samples: int) -> int:
        return min(self.num_frames(samples), self.max_frames)

    def _strided_layout(self, real: list[int]) -> tuple[list[int], list[int]]:
        """(chunk, exact) per piece: the conv head's frames (the speech plus a margin of silence; the whole window
        if that nearly fills it) and how many of its leading frames equal the padded window's conv output."""
        chunk = [T + HEAD_MARGIN if T + HEAD_MARGIN + TAIL_MELS < self.max_frames else self.max_frames for T in real]
        # conv2 frame p reads mel frames 2p-2 .. 2p+2, so the chunk's last frame sees the chunk's zero padding
        exact = [c - 1 if c < self.max_frames else c for c in chunk]
        return chunk, exact

    def _strided_conv(self, inputs: "WhisperInputs", real: list[int]):
        """The padded window's conv outputs (before positions), computed only where they differ.

        Returns ``head`` (batch, H, dim) with ``exact[b]`` leading frames equal to the padded mode's, and
        per utterance the tail's interior frame ``inner`` and last frame ``last`` (batch, dim) each.
        Frames in [exact[b], 1499) equal ``inner[b]``; frame 1499 equals ``last[b]``.
        """
        enc = self.encoder
        chunk, exact = self._strided_layout(real)
        # The chunk ends in >= 10 mel frames of pure silence, so its STFT frames (reflect-padded silence) and its
        # max (-8 clamp) are the full window's: these are the padded mode's first 2c mel frames exactly.
        mels = inputs.mels
        last = torch.tensor([2 * c - 1 for c in chunk], device=mels.device)
        rows = torch.arange(len(chunk), device=mels.device)
        # the silent tail's log-mel (each chunk's last mel frame): one constant per utterance
        tail = mels[rows, :, last][:, :, None].expand(-1, -1, TAIL_MELS)

        def conv(m: torch.Tensor) -> torch.Tensor:
            x = nn.functional.gelu(enc.conv1(m.to(self.dtype)))
            return nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)

        head = conv(mels)
        # The tail block's TAIL_MELS/2 conv frames: the first sees the block's left zero padding, the second
        # reads constant mel only (the tail's interior), the last sees the right zero padding exactly as
        # frame 1499 of the window does.
        t = conv(tail)
        inner, last = t[:, 1], t[:, -1]
        return head, exact, inner, last

    def _encode_strided(self, inputs: "WhisperInputs", k: int | None = None) -> torch.Tensor:
        """Strided-silence mode: real frames, every s-th silent frame with a log-count attention bias.

        Slot j of piece b holds position j for j < T_b (real frames), then T_b + (j - T_b) s (kept silent frames),
        built for the whole batch at once."""
        enc = self.encoder
        s, total = self.stride, self.max_frames
        real = [self._real_frames(n) for n in inputs.piece_samples]
        head, exact, inner, last = self._strided_conv(inputs, real)
        device, dtype = head.device, head.dtype
        T = torch.tensor(real, device=device)[:, None]
        kept = T + (total - T + s - 1) // s  # slots per piece
        n = int(kept.max())
        j = torch.arange(n, device=device)[None, :]
        is_real = j < T
        p = torch.where(is_real, j, T + (j - T) * s)
        valid = j < kept
        p = torch.where(valid, p, torch.zeros_like(p))
        count = torch.clamp(total - p, max=s).to(dtype)
        bias = torch.where(is_real, torch.zeros_like(count), torch.log(count))
        bias = bias.masked_fill(~valid, torch.finfo(dtype).min)
        from_head = p < torch.tensor(exact, device=device)[:, None]
        idx = p.clamp(max=head.shape[1] - 1)[:, :, None].expand(-1, -1, head.shape[-1])
        conv = torch.where((p == total - 1)[:, :, None], last[:, None], inner[:, None])
        conv = torch.where(from_head[:, :, None], torch.gather(head, 1, idx), conv)
        x = (conv + enc.embed_positions.weight[p]) * valid[:, :, None]
        hidden = self._layers(x, bias[:, None, None, :].expand(-1, 1, n, n), k)
        # only the real frames are returned (real first, as in the other modes); slots past a piece's real
        # frames held its kept silent frames and are zeroed
        out = hidden[:, :, : max(real)]
        return out.masked_fill_(~is_real[:, : max(real)][None, :, :, None], 0)


@dataclass
class WhisperInputs:
    """A batch prepared for the encoder: each <= 30 s piece's log-mel on the device, and what reassembles them."""

    mels: torch.Tensor  # (pieces, mels, mel frames), zero past each piece's window
    piece_samples: list[int]  # samples of audio in each piece
    owner: list[int]  # the utterance each piece belongs to
    lengths: list[int]  # real frames per utterance
