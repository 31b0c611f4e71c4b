"""MSP-Podcast (Lotfian & Busso 2019): naturalistic English podcast speaking turns, crowd-rated by 5+ workers.

Layout, under ``data_root/msp-podcast/`` (:data:`ROOT_DIR`), as the corpus is released::

    Audios/<FileName>                 e.g. Audios/MSP-PODCAST_0001_0008.wav
    Labels/labels_consensus.csv       one row per speaking turn
    Labels/labels_detailed.csv        one row per (speaking turn, worker); optional here

``labels_consensus.csv`` has the columns ``FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender,
Split_Set``. ``EmoClass`` is the consensus primary emotion as a letter (A angry, S sad, H happy, U surprise,
F fear, D disgust, C contempt, N neutral, O other, X no agreement); ``EmoAct/EmoVal/EmoDom`` are the mean
arousal/valence/dominance ratings on the 1-7 scale. Releases up to 1.9 spell the file
``labels_concensus.csv``; both spellings are accepted. ``SpkrID`` and ``Gender`` are ``Unknown`` for
turns whose speaker has not been identified, and empty label cells (e.g. the hidden Test3 labels) are read
as missing.

``labels_detailed.csv`` comes in two shapes, both accepted (detected from the header):

* long (release 1.6 and 2.x): one column per field, ``FileName``, a worker column (``WorkerID``,
  ``Workers``, ...), the primary emotion in ``EmoClass_Major`` (``EmoClass_Primary``/``EmoClass`` also
  accepted), the secondary emotions in ``EmoClass_Second`` (ignored) and the worker's ``EmoAct``, ``EmoVal``,
  ``EmoDom``;
* packed (releases 1.7-1.12): ``FileName`` plus one detail column (``EmoDetail``) holding
  ``"WORKER00012; Neutral; Concerned,Frustrated; A:4.0; V:3.0; D:4.0;"`` -- worker, primary emotion,
  secondary emotions (possibly empty), then the A/V/D scores.

Primary emotions are spelled out (``Angry``, ``Sad``, ``Happy``, ``Surprise``, ``Fear``, ``Disgust``,
``Contempt``, ``Neutral``) or as ``Other``/``Other-<free text>``; letter codes and the nouns (``Anger``,
``Sadness``, ...) are accepted too, and anything else counts as ``other``.

Per utterance: ``label`` is the consensus class (None for X); ``votes`` counts the workers' primary
emotions over :data:`CATEGORIES`, ``n_raters`` is the number of workers, ``agreement`` the share of them who
chose ``label`` and ``pdf`` the normalised votes. Without detailed labels for a turn, ``pdf`` is one-hot
on the consensus class (None for X) and votes/n_raters/agreement stay empty. ``arousal``/``valence``/
``dominance`` are the consensus means; ``*_std`` is the population standard deviation (ddof=0) of the
workers' scores. ``split`` is ``Split_Set`` mapped by :data:`SPLITS` (Train -> train, Development -> dev,
Test1 -> test1, ...). Speakers are ``msppodcast/<SpkrID>``; an ``Unknown`` speaker becomes
``msppodcast/unknown-<file stem>`` (one pseudo-speaker per turn, so the unidentified turns are never
pooled into one giant fake speaker) or, with ``unknown_speakers="shared"``, the single
``msppodcast/unknown``. Durations come from the audio header when the file is present, else None
(an unreadable file: None, and the reason in ``extra["audio_error"]``).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from ray_ser.corpora.labels import one_hot, votes_to_pdf
from ray_ser.corpora.manifest import Manifest, ManifestError, Utterance, read_duration

NAME = "msppodcast"
ROOT_DIR = "msp-podcast"
"""Folder under the data root holding the release (``Audios/``, ``Labels/``)."""
AUDIO_DIR = "Audios"
LABELS_DIR = "Labels"
CONSENSUS_FILES = ("labels_consensus.csv", "labels_concensus.csv")  # the second spelling is releases <= 1.9
DETAILED_FILE = "labels_detailed.csv"

CODES = {"A": "angry", "S": "sad", "H": "happy", "U": "surprise", "F": "fear", "D": "disgust",
         "C": "contempt", "N": "neutral", "O": "other"}
NO_AGREEMENT = "X"
CATEGORIES = list(CODES.values())
NAMES = {  # per-worker primary emotion, lowercased -> category
    "angry": "angry", "anger": "angry", "sad": "sad", "sadness": "sad", "happy": "happy",
    "happiness": "happy", "surprise": "surprise", "surprised": "surprise", "fear": "fear", "disgust": "disgust",
    "contempt": "contempt", "neutral": "neutral", "other": "other",
    **{k.lower(): v for k, v in CODES.items()},
}
SPLITS = {"train": "train", "development": "dev", "validation": "dev", "test1": "test1", "test2": "test2",
          "test3": "test3"}
UNKNOWN = {"", "unknown", "nan", "none"}

WORKER_COLUMNS = ("WorkerID", "Worker", "Workers", "AnnotatorID")
PRIMARY_COLUMNS = ("EmoClass_Major", "EmoClass_Primary", "EmoClass")
DETAIL_COLUMNS = ("EmoDetail",)


def primary_category(name: str) -> str:
    """A worker's primary emotion (``Angry``, ``Other-Concerned``, ``A``...) -> a name in :data:`CATEGORIES`."""
    key = name.strip().lower()
    if key.startswith("other"):
        return "other"
    return NAMES.get(key, "other")


def _number(text: str | None) -> float | None:
    if text is None or text.strip().lower() in UNKNOWN:
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def _parse_packed(detail: str) -> tuple[str | None, str, dict[str, float]]:
    """``"WORKER1; Neutral; Concerned,Sad; A:4.0; V:3.0; D:4.0;"`` -> (worker, primary, {"A": 4.0, ...})."""
    parts = [p.strip() for p in detail.split(";")]
    parts = parts[:-1] if parts and not parts[-1] else parts
    scores: dict[str, float] = {}
    while parts and len(parts[-1]) > 1 and parts[-1][0] in "AVD" and parts[-1][1] == ":":
        scores.setdefault(parts[-1][0], float(parts[-1][2:]))
        parts.pop()
    if len(parts) < 2 or not parts[1]:
        raise ValueError(f"no primary emotion in {detail!r}")
    return parts[0] or None, parts[1], scores


def read_detailed(path: Path) -> dict[str, list[tuple[str, dict[str, float]]]]:
    """FileName -> one (category, {"A"/"V"/"D": score}) per worker, from either shape of the file."""
    out: dict[str, list[tuple[str, dict[str, float]]]] = defaultdict(list)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        if "FileName" not in header:
            raise ManifestError(f"{path}: no FileName column in header {header}")
        primary = next((c for c in PRIMARY_COLUMNS if c in header), None)
        packed = next((c for c in DETAIL_COLUMNS if c in header), None)
        if primary is None and packed is None and len(header) == 2:
            packed = header[1]  # FileName plus one unnamed/renamed detail column
        if primary is None and packed is None:
            raise ManifestError(f"{path}: cannot tell the primary-emotion column in header {header} "
                                f"(expected one of {PRIMARY_COLUMNS + DETAIL_COLUMNS})")
        for row in reader:
            name = (row.get("FileName") or "").strip()
            if not name:
                continue
            try:
                if primary is not None:
                    emotion = row[primary] or ""
                    scores = {k: v for k, col in (("A", "EmoAct"), ("V", "EmoVal"), ("D", "EmoDom"))
                              if (v := _number(row.get(col))) is not None}
                    if not emotion.strip():
                        raise ValueError(f"empty {primary}")
                else:
                    _, emotion, scores = _parse_packed(row[packed] or "")
            except ValueError as e:
                raise ManifestError(f"{path} line {reader.line_num} ({name}): {e}") from e
            out[name].append((primary_category(emotion), scores))
    return dict(out)


def _std(values: Iterable[float]) -> float | None:
    v = list(values)
    return float(np.std(v)) if v else None


def build(data_root: Path, folder: str = ROOT_DIR, unknown_speakers: str = "per_file", **_: object) -> Manifest:
    """Manifest of every row of ``Labels/labels_consensus.csv`` under ``data_root/<folder>``.

    ``unknown_speakers``: ``"per_file"`` (default) gives each unidentified turn its own pseudo-speaker,
    ``"shared"`` pools them as ``msppodcast/unknown``.
    """
    if unknown_speakers not in ("per_file", "shared"):
        raise ValueError(f"unknown_speakers must be 'per_file' or 'shared', got {unknown_speakers!r}")
    root = Path(data_root) / folder
    labels = root / LABELS_DIR
    consensus_csv = next((labels / n for n in CONSENSUS_FILES if (labels / n).exists()), None)
    if consensus_csv is None:
        raise FileNotFoundError(f"{labels / CONSENSUS_FILES[0]} not found (MSP-Podcast is licensed from the "
                                "MSP lab, UT Dallas: ecs.utdallas.edu/research/researchlabs/msp-lab)")
    detailed = read_detailed(labels / DETAILED_FILE) if (labels / DETAILED_FILE).exists() else {}

    with open(consensus_csv, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        reader.fieldnames = [h.strip() for h in reader.fieldnames or []]
        missing = {"FileName", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"} - set(reader.fieldnames)
        emo_col = next((c for c in ("EmoClass", "EmoClass_Major") if c in reader.fieldnames), None)
        if missing or emo_col is None:
            raise ManifestError(f"{consensus_csv}: header {reader.fieldnames} lacks "
                                f"{sorted(missing | ({'EmoClass'} if emo_col is None else set()))}")
        rows = [(reader.line_num, r) for r in reader]

    utts = []
    for line, row in sorted(rows, key=lambda lr: lr[1]["FileName"]):
        name = row["FileName"].strip()
        stem = Path(name).stem
        where = f"{consensus_csv} line {line} ({name})"
        code = (row[emo_col] or "").strip().upper()
        if code and code != NO_AGREEMENT and code not in CODES:
            raise ManifestError(f"{where}: unknown EmoClass {code!r} (expected one of {list(CODES) + ['X']})")
        label = CODES.get(code)
        try:
            arousal, valence, dominance = (_number(row[c]) for c in ("EmoAct", "EmoVal", "EmoDom"))
        except ValueError as e:
            raise ManifestError(f"{where}: {e}") from e

        ratings = detailed.get(name, [])
        votes = pdf = n_raters = agreement = None
        stds: dict[str, float | None] = {"A": None, "V": None, "D": None}
        if ratings:
            counts = np.zeros(len(CATEGORIES), np.float64)
            for category, _scores in ratings:
                counts[CATEGORIES.index(category)] += 1
            votes = counts.tolist()
            pdf = votes_to_pdf(counts).tolist()
            n_raters = len(ratings)
            agreement = float(counts[CATEGORIES.index(label)] / n_raters) if label else None
            stds = {k: _std(s[k] for _, s in ratings if k in s) for k in stds}
        elif label is not None:
            pdf = one_hot(label, CATEGORIES).tolist()

        spk = (row["SpkrID"] or "").strip()
        speaker_known = spk.lower() not in UNKNOWN
        if speaker_known:
            speaker = f"{NAME}/{spk}"
        else:
            speaker = f"{NAME}/unknown-{stem}" if unknown_speakers == "per_file" else f"{NAME}/unknown"
        gender = (row["Gender"] or "").strip().lower()
        split = (row["Split_Set"] or "").strip()
        path = root / AUDIO_DIR / name
        extra = {"emo_class": code or None, "speaker_known": speaker_known}
        utts.append(
            Utterance(
                utt_id=f"{NAME}/{stem}", path=str(path), speaker=speaker, corpus=NAME,
                duration=read_duration(str(path), extra),
                gender=gender if gender in ("male", "female") else None, language="en",
                split=SPLITS.get(split.lower(), split.lower()) if split else None,
                label=label, pdf=pdf, votes=votes, n_raters=n_raters, agreement=agreement,
                arousal=arousal, valence=valence, dominance=dominance,
                arousal_std=stds["A"], valence_std=stds["V"], dominance_std=stds["D"],
                extra=extra,
            )
        )
    return Manifest.from_utterances(utts, CATEGORIES)
