"""Speech-like test audio of any length, rate and channel count, and a generic-CSV corpus of it.

A voiced source (harmonics of a gliding f0 with vibrato and jitter, rolled off like a glottal pulse), a
syllable-rate amplitude envelope with pauses, and a little breath noise: enough structure that a model's
frames differ along the utterance, written at the rates and channel counts real corpora come in."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf


def speech_like(seconds: float, rate: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    """float32 samples, (frames,) mono or (frames, channels); peak 0.5."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    f0 = rng.uniform(90, 240) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t))  # intonation
    f0 *= 1 + 0.015 * np.sin(2 * np.pi * rng.uniform(4.5, 6.5) * t)  # vibrato
    f0 *= 1 + 0.005 * rng.standard_normal(n).cumsum() / np.sqrt(np.arange(1, n + 1))  # jitter
    phase = 2 * np.pi * np.cumsum(f0) / rate
    top = max(1, min(20, int(min(4000, rate / 2 - 200) // f0.max())))  # harmonics below Nyquist and 4 kHz
    x = sum(np.sin(h * phase + rng.uniform(0, 2 * np.pi)) / h ** 1.2 for h in range(1, top + 1))
    syllable = rng.uniform(3.0, 5.5)
    env = np.clip(np.sin(np.pi * ((t * syllable) % 1.0)), 0, None) ** 0.7
    pauses = (np.sin(2 * np.pi * t / rng.uniform(1.5, 3.0)) > -0.8).astype(np.float64)  # a pause every few s
    x = x * env * pauses + 0.01 * rng.standard_normal(n)
    x = (0.5 * x / max(np.abs(x).max(), 1e-9)).astype(np.float32)
    if channels == 1:
        return x
    return np.stack([x * (1.0 - 0.2 * c) for c in range(channels)], axis=1)


@dataclass(frozen=True)
class Clip:
    name: str
    seconds: float
    rate: int
    channels: int
    fmt: str = "WAV"


MIXED = (
    Clip("s8k_0p3", 0.3, 8000, 1),
    Clip("s44k_0p9_st", 0.9, 44100, 2, "FLAC"),
    Clip("s22k_1p7", 1.7, 22050, 1),
    Clip("s16k_2p6_st", 2.6, 16000, 2),
    Clip("s8k_4p1_st", 4.1, 8000, 2, "FLAC"),
    Clip("s44k_7p3", 7.3, 44100, 1),
    Clip("s16k_12", 12.0, 16000, 1),
    Clip("s22k_31p5", 31.5, 22050, 1, "FLAC"),  # past one 30 s Whisper window
    Clip("s16k_45_st", 45.0, 16000, 2),  # the longest: two windows
)
"""0.3 s to 45 s at 8 / 16 / 22.05 / 44.1 kHz, mono and stereo, WAV and FLAC."""


def write_corpus(folder: Path, clips=MIXED, labels=("calm", "excited")) -> Path:
    """The clips as audio files plus ``mixed.csv`` for the generic CSV adapter; returns the CSV's path."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, c in enumerate(clips):
        path = folder / f"{c.name}.{c.fmt.lower()}"
        sf.write(path, speech_like(c.seconds, c.rate, seed=i, channels=c.channels), c.rate, format=c.fmt,
                 subtype="PCM_16")
        rows.append({"utt_id": c.name, "path": path.name, "speaker": f"spk{i % 3}", "label": labels[i % len(labels)]})
    out = folder / "mixed.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def save_tiny_whisper(path: Path) -> Path:
    """A 2-layer, 32-wide random-init Whisper (80 mel bins, 30 s windows) saved with save_pretrained."""
    import torch
    from transformers import WhisperConfig, WhisperModel

    torch.manual_seed(0)
    cfg = WhisperConfig(num_mel_bins=80, d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, max_source_positions=1500,
                        max_target_positions=16, vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                        decoder_start_token_id=1)
    WhisperModel(cfg).eval().save_pretrained(path)
    return path
