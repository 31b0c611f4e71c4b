"""ASED, the Amharic Speech Emotion Dataset (Retta et al. 2023): 2,474 clips, 65 speakers, 5 emotions.

Folders ``01Neutral`` .. ``05Angry`` hold files ``<e><k>-<sentence>-<take>-<gender>-<speaker>``: an emotion letter
(n f h s a, one file upper-case) with its folder number, sentence (01-07), take, gender (01 female, 02 male) and
speaker (01-65). Eight judges screened the clips but their votes were not released, so the PDF is the intended
category with label smoothing ``smoothing`` spread uniformly, as for RAVDESS. Five speakers have one file whose
gender code disagrees with their others: every file gets its speaker's majority code, and each disagreement is
logged and kept in ``extra["gender_code"]``.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from ray_ser.corpora.labels import Smoothing, smoothed
from ray_ser.corpora.manifest import Manifest, Utterance, read_duration

log = logging.getLogger(__name__)

NAME = "ased"
FOLDERS = {"01Neutral": "neutral", "02Fearful": "fear", "03Happy": "happy", "04Sad": "sad", "05Angry": "angry"}
LETTERS = {"n": "neutral", "f": "fear", "h": "happy", "s": "sad", "a": "angry"}
CATEGORIES = list(FOLDERS.values())
GENDERS = {"01": "female", "02": "male"}


def parse_name(stem: str) -> dict[str, str]:
    """Fields of a file name such as ``a5-03-01-02-50``; a ValueError names the stem and what is wrong."""
    parts = stem.split("-")
    if len(parts) != 5 or len(parts[0]) != 2 or parts[0][0].lower() not in LETTERS:
        raise ValueError(f"{stem}: not <e><k>-<sentence>-<take>-<gender>-<speaker>")
    if parts[3] not in GENDERS:
        raise ValueError(f"{stem}: gender code {parts[3]!r} is not 01 (female) or 02 (male)")
    return {"emotion": LETTERS[parts[0][0].lower()], "sentence": parts[1], "take": parts[2], "gender_code": parts[3],
            "speaker": parts[4]}


def build(data_root: Path, smoothing: float = 0.2, **_: object) -> Manifest:
    """Manifest of every ``<folder>/*.flac`` (or ``.wav``) under ``data_root/ased``."""
    root = Path(data_root) / NAME
    files = sorted(p for folder in FOLDERS for p in (root / folder).glob("*") if p.suffix.lower() in (".flac", ".wav"))
    if not files:
        raise FileNotFoundError(f"no ASED audio under {root} (folders {', '.join(FOLDERS)}; "
                                "get it from github.com/Ethio2021/ASED_V1)")
    parsed, rejected = [], []
    for f in files:
        try:
            fields = parse_name(f.stem)
        except ValueError as e:
            rejected.append({"utt_id": f"{NAME}/{f.stem}", "path": str(f), "reason": f"{f}: {e}"})
            continue
        if fields["emotion"] != FOLDERS[f.parent.name]:
            rejected.append({"utt_id": f"{NAME}/{f.stem}", "path": str(f),
                             "reason": f"{f}: emotion letter says {fields['emotion']}, folder says {FOLDERS[f.parent.name]}"})
            continue
        parsed.append((f, fields))
    codes: dict[str, Counter] = {}
    for _, fields in parsed:
        codes.setdefault(fields["speaker"], Counter())[fields["gender_code"]] += 1
    majority = {spk: c.most_common(1)[0][0] for spk, c in codes.items()}
    utts = []
    for f, fields in parsed:
        spk, label = fields["speaker"], fields["emotion"]
        extra = {"sentence": fields["sentence"], "take": fields["take"]}
        if fields["gender_code"] != majority[spk]:
            extra["gender_code"] = fields["gender_code"]
            log.warning("ASED %s: gender code %s disagrees with speaker %s's other %d files (%s): using %s",
                        f.name, fields["gender_code"], spk, codes[spk][majority[spk]], majority[spk],
                        GENDERS[majority[spk]])
        utts.append(Utterance(
            utt_id=f"{NAME}/{f.stem}", path=str(f), speaker=f"{NAME}/{spk}", corpus=NAME,
            duration=read_duration(str(f), extra), gender=GENDERS[majority[spk]], language="am", label=label,
            pdf=smoothed(label, CATEGORIES, 1.0 - smoothing, Smoothing.UNIFORM).tolist(), extra=extra))
    m = Manifest.from_utterances(utts, CATEGORIES)
    return Manifest(m.table, CATEGORIES, rejected=rejected) if rejected else m
