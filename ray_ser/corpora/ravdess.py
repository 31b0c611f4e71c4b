"""RAVDESS speech (Livingstone & Russo 2018): 1,440 acted English utterances, 24 actors, 8 emotions.

File names ``MM-VC-EE-II-SS-RR-AA`` carry modality, channel, emotion, intensity, statement, repetition and
actor (odd ids male). The corpus gives the intended emotion only, so the PDF is the intended category with
label smoothing ``smoothing`` spread uniformly; strong intensity multiplies the smoothing by ``strong_factor``
(0.5 by default), i.e. strongly acted utterances get sharper targets.
"""

from __future__ import annotations

from pathlib import Path

from ray_ser.corpora.labels import Smoothing, smoothed
from ray_ser.corpora.manifest import Manifest, Utterance, read_duration

NAME = "ravdess"
EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fear",
            "07": "disgust", "08": "surprise"}
CATEGORIES = list(EMOTIONS.values())
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}


def build(data_root: Path, smoothing: float = 0.2, strong_factor: float = 0.5, **_: object) -> Manifest:
    """Manifest of every ``Actor_*/*.flac`` (or ``.wav``) under ``data_root/ravdess``."""
    root = Path(data_root) / NAME
    files = sorted(p for p in root.glob("Actor_*/*") if p.suffix.lower() in (".flac", ".wav"))
    if not files:
        raise FileNotFoundError(f"no RAVDESS audio under {root} (get it from zenodo.org/record/1188976)")
    utts = []
    for f in files:
        modality, channel, emo, intensity, statement, repetition, actor = f.stem.split("-")
        label = EMOTIONS[emo]
        eps = smoothing * (strong_factor if intensity == "02" else 1.0)
        extra = {"intensity": "strong" if intensity == "02" else "normal", "statement": STATEMENTS[statement],
                 "repetition": int(repetition), "vocal_channel": "speech" if channel == "01" else "song"}
        utts.append(
            Utterance(
                utt_id=f"ravdess/{f.stem}", path=str(f), speaker=f"ravdess/{actor}", corpus=NAME,
                duration=read_duration(str(f), extra), gender="male" if int(actor) % 2 else "female",
                language="en", label=label, pdf=smoothed(label, CATEGORIES, 1.0 - eps, Smoothing.UNIFORM).tolist(),
                extra=extra,
            )
        )
    return Manifest.from_utterances(utts, CATEGORIES)
