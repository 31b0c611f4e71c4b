"""CREMA-D (Cao et al. 2014): 7,442 clips, 91 actors, 6 emotions, 9-12 crowd raters per clip.

Labels come from ``processedResults/tabulatedVotes.csv``: the voice-only rows (ids 1xxxxx) give per-clip
vote counts for A, D, F, H, N, S, turned into a PDF by normalising the counts. A tied vote (``N:S``) has no
consensus ``label``. Actor sex comes from ``VideoDemographics.csv``. Audio is expected at
``crema-d/AudioWAV/<clip>.wav`` (the published layout); durations are read when the audio is present
(an unreadable file leaves ``duration`` null and its reason in ``extra["audio_error"]``).
"""

from __future__ import annotations

import csv
from pathlib import Path

from ray_ser.corpora.labels import votes_to_pdf
from ray_ser.corpora.manifest import Manifest, Utterance, read_duration

NAME = "cremad"
LABELS_DIR = "crema-d-labels"
AUDIO_DIR = "crema-d/AudioWAV"
CODES = {"A": "angry", "D": "disgust", "F": "fear", "H": "happy", "N": "neutral", "S": "sad"}
CATEGORIES = list(CODES.values())
INTENDED = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
MODALITIES = {"1": "voice", "2": "face", "3": "audiovisual"}


def build(data_root: Path, modality: str = "voice", audio_dir: str | None = None, **_: object) -> Manifest:
    """Manifest of the clips rated in ``modality`` (voice by default: the raters heard the audio only)."""
    root = Path(data_root)
    labels = root / LABELS_DIR
    votes_csv = labels / "processedResults" / "tabulatedVotes.csv"
    if not votes_csv.exists():
        raise FileNotFoundError(f"{votes_csv} not found (get CREMA-D from github.com/CheyneyComputerScience/CREMA-D)")
    prefix = {v: k for k, v in MODALITIES.items()}[modality]
    with open(labels / "VideoDemographics.csv", newline="") as f:
        demo = {r["ActorID"]: r for r in csv.DictReader(f)}
    wav_dir = Path(audio_dir) if audio_dir else root / AUDIO_DIR
    utts = []
    with open(votes_csv, newline="") as f:
        for row in csv.DictReader(f):
            if not row[""].startswith(prefix):
                continue
            clip = row["fileName"]
            actor, sentence, emo, level = clip.split("_")
            votes = [float(row[c]) for c in CODES]
            vote = row["emoVote"]
            path = wav_dir / f"{clip}.wav"
            d = demo.get(actor, {})
            extra = {"sentence": sentence, "intended": INTENDED.get(emo), "level": level,
                     "age": int(d["Age"]) if d.get("Age") else None, "race": d.get("Race"),
                     "ethnicity": d.get("Ethnicity"), "modality": modality}
            utts.append(
                Utterance(
                    utt_id=f"cremad/{clip}", path=str(path), speaker=f"cremad/{actor}", corpus=NAME,
                    duration=read_duration(str(path), extra),
                    gender=d.get("Sex", "").lower() or None, language="en",
                    label=CODES[vote] if vote in CODES else None, pdf=votes_to_pdf(votes).tolist(), votes=votes,
                    n_raters=int(row["numResponses"]), agreement=float(row["agreement"]),
                    extra=extra,
                )
            )
    return Manifest.from_utterances(utts, CATEGORIES)
