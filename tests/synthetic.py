"""A small learnable synthetic corpus (generic CSV adapter) and its store, so training and evaluation tests run
in CI without ../shared: each class has its own pitch contour and brightness, each speaker its own pitch offset."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

CLASSES = ("calm", "excited", "sad")
SR = 16000


def voice(rng: np.random.Generator, f0: float, slope: float, bright: float, seconds: float, sr: int = SR) -> np.ndarray:
    """A harmonic voice-like tone: gliding f0 with vibrato, harmonics rolled off by ``bright``, syllable envelope."""
    t = np.arange(int(seconds * sr)) / sr
    f = f0 * (1 + slope * t / seconds) * (1 + 0.02 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(f) / sr
    x = sum(bright ** (h - 1) * np.sin(h * phase) for h in range(1, 8))
    env = 0.5 * (1 - np.cos(2 * np.pi * np.clip(t * 3.0 % 1.0, 0, 1))) ** 0.5
    x = x * env + 0.01 * rng.standard_normal(len(t))
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def write_corpus(folder: Path, n_speakers: int = 6, per_class: int = 4, seed: int = 0) -> Path:
    """WAVs and ``synth.csv`` (utt_id, path, speaker, gender, label, p_<class>) under ``folder``; returns the CSV."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    style = {"calm": (0.0, 0.3), "excited": (0.6, 0.8), "sad": (-0.3, 0.15)}
    base = {"calm": 1.0, "excited": 1.5, "sad": 0.8}
    rows = []
    for s in range(n_speakers):
        offset = 110.0 * (1.0 + 0.15 * s) * (1.6 if s % 2 else 1.0)
        for c in CLASSES:
            for i in range(per_class):
                slope, bright = style[c]
                seconds = float(rng.uniform(0.8, 1.6))
                x = voice(rng, offset * base[c], slope, bright, seconds)
                uid = f"s{s}_{c}_{i}"
                sf.write(folder / f"{uid}.wav", x, SR)
                pdf = np.full(len(CLASSES), 0.1)
                pdf[CLASSES.index(c)] = 0.8
                rows.append({"utt_id": uid, "path": f"{uid}.wav", "speaker": f"s{s}",
                             "gender": "female" if s % 2 else "male", "label": c, "n_raters": 10,
                             **{f"p_{k}": f"{p:.2f}" for k, p in zip(CLASSES, pdf)}})
    path = folder / "synth.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def build_store(tmp: Path, model_dir: Path, conditions=("clean", "5dB"), **corpus) -> str:
    """Extract the synthetic corpus with the tiny model (key "tiny") into a new store; returns its URI."""
    from ray_ser.corpora import build_manifest
    from ray_ser.extract.program import ExtractConfig, extract

    csv_path = write_corpus(tmp / "audio", **corpus)
    manifest = build_manifest("csv", tmp, csv=str(csv_path))
    uri = str(tmp / "store")
    extract(manifest, uri, ExtractConfig(model=str(model_dir), conditions=list(conditions), model_key="tiny"))
    return uri
