"""A generated corpus laid out as MSP-Podcast publishes it, for benchmarks/scale.py.

    <root>/msp-podcast/Audios/MSP-PODCAST_<podcast>_<turn>.flac
    <root>/msp-podcast/Labels/labels_consensus.csv   FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender, Split_Set
    <root>/msp-podcast/Labels/labels_detailed.csv    release 2.x "long" shape: one row per (turn, worker)

What ray_ser.corpora.msppodcast parses. Speech-like FLAC clips (a harmonic voice with a gliding f0, a syllable
envelope with pauses and a little breath noise, kept quiet so FLAC packs them small) of 1-8 s, log-uniform, at
16 kHz (about 60 %), 44.1 kHz and 48 kHz; one speaker per ~50 turns (about 2,000 at 100k), each speaker in one
podcast, one split (Train / Development / Test1 / Test2, by speaker) and one gender; about 8 % of turns have an
Unknown speaker, as in the release. Each turn has 5-7 workers' primary emotions and A/V/D scores around a
hidden class (MSP-like priors); the consensus class is the plurality of the votes, X on a tie. Deterministic
in (n, seed): each turn draws from its own generator seeded by (seed, n, turn), whatever the worker pool.
"""

from __future__ import annotations

import csv
import math
import os
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT_DIR = "msp-podcast"
CODES = ("N", "H", "A", "S", "C", "U", "D", "F", "O")
PRIOR = (0.36, 0.22, 0.09, 0.09, 0.07, 0.05, 0.03, 0.02, 0.07)
"""Roughly MSP-Podcast's consensus class shares (X, no agreement, comes from tied votes)."""
NAMES = {"N": "Neutral", "H": "Happy", "A": "Angry", "S": "Sad", "C": "Contempt", "U": "Surprise", "D": "Disgust",
         "F": "Fear"}
OTHERS = ("Other", "Other-Concerned", "Other-Amused", "Other-Confused")
SECOND = ("", "Concerned", "Amused", "Frustrated", "Excited,Amused", "Disappointed", "Annoyed")
AVD = {  # class -> mean (arousal, valence, dominance) on the 1-7 scale
    "N": (3.8, 4.1, 4.0), "H": (4.9, 5.4, 4.6), "A": (5.6, 2.3, 5.3), "S": (3.0, 2.6, 3.2), "C": (4.2, 3.0, 4.8),
    "U": (5.2, 4.6, 4.2), "D": (4.5, 2.6, 4.5), "F": (4.8, 2.5, 3.0), "O": (4.2, 3.8, 4.1)}
RATES = (16000, 44100, 48000)
RATE_SHARE = (0.6, 0.25, 0.15)
SPLITS = ("Train", "Development", "Test1", "Test2")
SPLIT_SHARE = (0.62, 0.14, 0.16, 0.08)
UNKNOWN_SHARE = 0.08
UTTS_PER_SPEAKER = 50


def n_speakers(n: int) -> int:
    """Identified speakers for ``n`` turns: one per ~50 (2,000 at 100k), at least 4."""
    return max(4, n // UTTS_PER_SPEAKER)


def voice(seconds: float, rate: int, rng: np.random.Generator, f0: float, syllable: float, peak: float = 0.3,
          noise: float = 4e-5) -> np.ndarray:
    """float32 mono, about ``peak``: harmonics of a gliding f0 (intonation, vibrato), a syllable envelope with
    pauses, and a floor of noise about one 16-bit step (the noise is what FLAC cannot pack: at 4e-5 a clip takes
    ~16 KB/s, ~5.5 GB at 100k turns; at 3e-4 it would take ~24 KB/s)."""
    n = round(seconds * rate)
    t = np.arange(n) / rate
    f = f0 * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t + rng.uniform(0, 2 * np.pi)))
    f *= 1 + 0.015 * np.sin(2 * np.pi * rng.uniform(4.5, 6.5) * t)
    phase = 2 * np.pi * np.cumsum(f) / rate
    top = max(1, min(12, int(min(4000, rate / 2 - 200) // f.max())))
    x = np.zeros(n)
    for h in range(1, top + 1):
        x += np.sin(h * phase + rng.uniform(0, 2 * np.pi)) / h ** 1.2
    env = np.clip(np.sin(np.pi * ((t * syllable) % 1.0)), 0, None) ** 0.7
    pauses = (np.sin(2 * np.pi * t / rng.uniform(1.5, 3.0) + rng.uniform(0, 2 * np.pi)) > -0.8)
    x = x * env * pauses
    x = peak * x / max(np.abs(x).max(), 1e-9) + noise * rng.standard_normal(n)
    return x.astype(np.float32)


def plan(n: int, seed: int = 0) -> list[dict]:
    """One dict per turn: file name, speaker (None = Unknown), gender, split, hidden class, seconds, rate, and
    the per-turn seed of its audio and votes."""
    rng = np.random.default_rng([seed, n, 1])
    k = n_speakers(n)
    spk_split = rng.choice(len(SPLITS), size=k, p=SPLIT_SHARE)
    spk_gender = rng.choice(["Male", "Female"], size=k)
    spk_f0 = np.where(spk_gender == "Male", rng.uniform(90, 150, k), rng.uniform(160, 250, k))
    spk_podcast = np.arange(k) // 2 + 1  # two identified speakers per podcast
    speaker = rng.integers(0, k, size=n)
    speaker[: min(n, k)] = np.arange(min(n, k))  # every speaker has a turn
    unknown = rng.random(n) < UNKNOWN_SHARE
    cls = rng.choice(len(CODES), size=n, p=PRIOR)
    seconds = np.exp(rng.uniform(math.log(1.0), math.log(8.0), size=n))
    rate = rng.choice(RATES, size=n, p=RATE_SHARE)
    turns: dict[int, int] = {}
    out = []
    for i in range(n):
        s = int(speaker[i])
        podcast = int(spk_podcast[s])
        turns[podcast] = turns.get(podcast, 0) + 1
        out.append({
            "file": f"MSP-PODCAST_{podcast:04d}_{turns[podcast]:04d}.flac",
            "speaker": None if unknown[i] else s + 1, "gender": None if unknown[i] else str(spk_gender[s]),
            "split": SPLITS[int(rng.choice(len(SPLITS), p=SPLIT_SHARE)) if unknown[i] else int(spk_split[s])],
            "cls": CODES[int(cls[i])], "seconds": round(float(seconds[i]), 3), "rate": int(rate[i]),
            "f0": float(spk_f0[s]), "seed": (seed, n, i),
        })
    return out


def _write_audio(args: tuple[str, dict]) -> int:
    folder, t = args
    rng = np.random.default_rng(list(t["seed"]))
    cls_shift = {"A": 1.25, "H": 1.15, "U": 1.2, "S": 0.9, "N": 1.0}.get(t["cls"], 1.05)
    syllable = {"A": 5.5, "H": 5.0, "S": 3.0}.get(t["cls"], 4.2) * rng.uniform(0.9, 1.1)
    x = voice(t["seconds"], t["rate"], rng, t["f0"] * cls_shift, syllable)
    path = os.path.join(folder, t["file"])
    sf.write(path, x, t["rate"], format="FLAC", subtype="PCM_16")
    return os.path.getsize(path)


def _ratings(t: dict) -> list[tuple[str, str, str, float, float, float]]:
    """5-7 workers' (worker, primary, secondary, A, V, D) around the turn's hidden class."""
    rng = np.random.default_rng([*t["seed"], 2])
    a0, v0, d0 = AVD[t["cls"]]
    rows = []
    for w in rng.choice(400, size=int(rng.integers(5, 8)), replace=False):
        code = t["cls"] if rng.random() < 0.6 else CODES[int(rng.choice(len(CODES), p=PRIOR))]
        primary = OTHERS[int(rng.integers(len(OTHERS)))] if code == "O" else NAMES[code]
        score = lambda m: float(np.clip(round(m + rng.normal(0, 0.9)), 1, 7))
        rows.append((f"WORKER{int(w):08d}", primary, SECOND[int(rng.integers(len(SECOND)))],
                     score(a0), score(v0), score(d0)))
    return rows


def _consensus(ratings) -> str:
    """Plurality of the workers' primary emotions as a letter (Other-* count as O); X on a tie."""
    letter = {v: k for k, v in NAMES.items()}
    counts: dict[str, int] = {}
    for _, primary, *_ in ratings:
        code = letter.get(primary, "O")
        counts[code] = counts.get(code, 0) + 1
    best = max(counts.values())
    top = [c for c, v in counts.items() if v == best]
    return top[0] if len(top) == 1 else "X"


def write_corpus(root: str | Path, n: int, seed: int = 0, processes: int | None = None) -> dict:
    """Write ``n`` turns under ``<root>/msp-podcast``; returns {"root", "n", "speakers", "bytes", "audio_bytes",
    "seconds_of_audio"}. ``root`` is the data root (what build_manifest("msppodcast", root) takes)."""
    base = Path(root) / ROOT_DIR
    audio, labels = base / "Audios", base / "Labels"
    audio.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    turns = plan(n, seed)
    processes = processes or min(2, os.cpu_count() or 1)
    work = [(str(audio), t) for t in turns]
    if processes > 1:
        with get_context("fork").Pool(processes) as pool:
            sizes = list(pool.imap(_write_audio, work, chunksize=16))
    else:
        sizes = [_write_audio(w) for w in work]
    with open(labels / "labels_consensus.csv", "w", newline="") as fc, \
            open(labels / "labels_detailed.csv", "w", newline="") as fd:
        cons, det = csv.writer(fc), csv.writer(fd)
        cons.writerow(["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"])
        det.writerow(["FileName", "WorkerID", "EmoClass_Major", "EmoClass_Second", "EmoAct", "EmoVal", "EmoDom"])
        for t in turns:
            ratings = _ratings(t)
            for worker, primary, second, a, v, d in ratings:
                det.writerow([t["file"], worker, primary, second, a, v, d])
            mean = [float(np.mean([r[k] for r in ratings])) for k in (3, 4, 5)]
            cons.writerow([t["file"], _consensus(ratings), *(f"{m:.6f}" for m in mean),
                           t["speaker"] if t["speaker"] is not None else "Unknown", t["gender"] or "Unknown",
                           t["split"]])
    label_bytes = sum(p.stat().st_size for p in labels.iterdir())
    return {"root": str(root), "n": n, "speakers": n_speakers(n), "audio_bytes": int(sum(sizes)),
            "bytes": int(sum(sizes) + label_bytes), "seconds_of_audio": float(sum(t["seconds"] for t in turns))}
