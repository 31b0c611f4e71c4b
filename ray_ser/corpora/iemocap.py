r"""IEMOCAP (Busso et al. 2008): 5 dyadic sessions, 10 actors (one woman and one man per session), ~10k turns.

Layout, under ``data_root/IEMOCAP_full_release/`` (:data:`ROOT_DIR`), as the corpus is released::

    SessionN/dialog/EmoEvaluation/<dialog>.txt        one summary file per dialog, N = 1..5
    SessionN/sentences/wav/<dialog>/<utt_id>.wav      one file per turn

Only the summary ``*.txt`` files directly in ``EmoEvaluation/`` are read (names starting ``Ses``; the
``Categorical/``, ``Attribute/`` and ``Self-evaluation/`` subfolders and macOS ``._*`` files are skipped).
Each turn is a block whose header is tab separated::

    [6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]
    C-E2:\tNeutral;\t()
    C-E3:\tNeutral; Frustration;\t()
    C-F1:\tNeutral;\t(curious)
    A-E3:\tval 3; act 2; dom  2;\t()
    A-E4:\tval 2; act 3; dom  3;\t(mildly aggravated but staying polite, attitude)
    A-F1:\tval 3; act 2; dom  1;\t()

The header gives start/end (seconds into the dialog), the turn id, the majority category (neu, hap, exc,
sad, ang, fru, sur, fea, dis, oth, or xxx = no majority) and ``[valence, activation, dominance]``, which is
the mean of the ``A-E*`` lines (the file's own comment line reads ``[V, A, D]``). ``C-E*``/``A-E*`` lines are
the external evaluators; ``C-F*``/``C-M*``/``A-F*``/``A-M*`` are the actor's self-assessment and are kept in
``extra`` only. Evaluators may pick several categories; each pick gets ``1/k`` of that evaluator's vote.
Category names are read case-insensitively (``Neutral``/``Neutral state``, ``Happiness``, ``Excited``,
``Sadness``, ``Anger``, ``Frustration``, ``Surprise``, ``Fear``, ``Disgust``, ``Other``/``Other:...``);
an unrecognised name counts as ``other`` and is listed in ``extra["unmapped"]``.

Per turn: ``label`` from the header (None for xxx); ``votes`` over :data:`CATEGORIES`, ``n_raters`` = number
of ``C-E`` lines, ``agreement`` = votes of ``label`` / n_raters, ``pdf`` = normalised votes (one-hot on the
header label when a turn has no ``C-E`` line); ``arousal``/``valence``/``dominance`` from the header (scale
1-5), ``*_std`` = population standard deviation (ddof=0) of the ``A-E`` scores. The speaker is the actor
named by the letter of the turn id's last part (``Ses01F_impro01_M000`` -> ``iemocap/Ses01M``, a man; the
letter in the dialog name only says who wore the markers). ``duration`` = end - start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ray_ser.corpora.labels import one_hot, votes_to_pdf
from ray_ser.corpora.manifest import Manifest, ManifestError, Utterance

NAME = "iemocap"
ROOT_DIR = "IEMOCAP_full_release"
"""Folder under the data root holding ``Session1`` .. ``Session5``."""
SESSIONS = (1, 2, 3, 4, 5)
CODES = {"neu": "neutral", "hap": "happy", "exc": "excited", "sad": "sad", "ang": "angry", "fru": "frustrated",
         "sur": "surprise", "fea": "fear", "dis": "disgust", "oth": "other"}
NO_AGREEMENT = "xxx"
CATEGORIES = list(CODES.values())
NAMES = {  # evaluator category names, lowercased -> category
    "neutral": "neutral", "neutral state": "neutral", "happiness": "happy", "happy": "happy",
    "excited": "excited", "excitement": "excited", "sadness": "sad", "sad": "sad", "anger": "angry",
    "angry": "angry", "frustration": "frustrated", "frustrated": "frustrated", "surprise": "surprise",
    "surprised": "surprise", "fear": "fear", "fearful": "fear", "disgust": "disgust", "disgusted": "disgust",
    "other": "other",
}
GENDERS = {"F": "female", "M": "male"}

HEADER = re.compile(
    r"^\[\s*(?P<start>\d+(?:\.\d+)?)\s*-\s*(?P<end>\d+(?:\.\d+)?)\s*\]\s+(?P<utt>Ses\w+)\s+(?P<cat>\w{3})\s+"
    r"\[\s*(?P<v>[-\d.]+)\s*,\s*(?P<a>[-\d.]+)\s*,\s*(?P<d>[-\d.]+)\s*\]\s*$"
)
EVALUATOR = re.compile(r"^(?P<kind>[CA])-(?P<who>[EFM])(?P<n>\d+)\s*:\s*(?P<rest>.*)$")
SCORE = re.compile(r"\b(?P<dim>val|act|dom)\s+(?P<x>\d+(?:\.\d+)?)")


@dataclass
class Turn:
    """One block of an EmoEvaluation file."""

    utt_id: str
    start: float
    end: float
    code: str
    vad: tuple[float, float, float]
    line: int
    categorical: list[list[str]] = field(default_factory=list)  # per external evaluator, raw names
    dimensional: list[dict[str, float]] = field(default_factory=list)  # per external evaluator
    self_categorical: list[str] = field(default_factory=list)
    self_dimensional: dict[str, float] = field(default_factory=dict)


def category(name: str) -> str | None:
    """An evaluator's category name -> a name in :data:`CATEGORIES` (None when unrecognised)."""
    key = name.strip().lower()
    return "other" if key.startswith("other") else NAMES.get(key)


def read_evaluation(path: Path) -> list[Turn]:
    """Parse one ``EmoEvaluation/<dialog>.txt``; malformed lines raise ManifestError naming file and line."""
    turns: list[Turn] = []
    for i, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("%"):
            continue
        if line.startswith("["):
            m = HEADER.match(line)
            if not m:
                raise ManifestError(f"{path} line {i}: malformed turn header {line!r}")
            turns.append(Turn(m["utt"], float(m["start"]), float(m["end"]), m["cat"].lower(),
                              (float(m["v"]), float(m["a"]), float(m["d"])), i))
            continue
        m = EVALUATOR.match(line)
        if not m:
            continue  # free-text lines carry nothing we use
        if not turns:
            raise ManifestError(f"{path} line {i}: evaluator line before any turn header")
        turn, external = turns[-1], m["who"] == "E"
        fields = m["rest"].split("\t")[0]
        if m["kind"] == "C":
            names = [n.strip() for n in fields.split(";") if n.strip()]
            if external:
                turn.categorical.append(names)
            else:
                turn.self_categorical.extend(names)
        else:
            scores = {s["dim"]: float(s["x"]) for s in SCORE.finditer(fields)}
            if external:
                turn.dimensional.append(scores)
            else:
                turn.self_dimensional.update(scores)
    return turns


def _std(values: list[float]) -> float | None:
    return float(np.std(values)) if values else None


def _utterance(turn: Turn, session: int, source: Path, root: Path) -> Utterance:
    where = f"{source} line {turn.line} ({turn.utt_id})"
    if turn.code != NO_AGREEMENT and turn.code not in CODES:
        raise ManifestError(f"{where}: unknown category {turn.code!r}")
    label = CODES.get(turn.code)
    letter = turn.utt_id.rsplit("_", 1)[-1][:1].upper()
    if letter not in GENDERS:
        raise ManifestError(f"{where}: cannot read the speaker's gender from the turn id")
    turn_dialog = turn.utt_id.rsplit("_", 1)[0]

    votes = pdf = agreement = n_raters = None
    unmapped: list[str] = []
    if turn.categorical:
        counts = np.zeros(len(CATEGORIES), np.float64)
        for names in turn.categorical:
            for n in names:
                c = category(n)
                if c is None:
                    unmapped.append(n)
                    c = "other"
                counts[CATEGORIES.index(c)] += 1.0 / len(names)
        n_raters = len(turn.categorical)
        votes, pdf = counts.tolist(), votes_to_pdf(counts).tolist()
        agreement = float(counts[CATEGORIES.index(label)] / n_raters) if label else None
    elif label is not None:
        pdf = one_hot(label, CATEGORIES).tolist()

    valence, arousal, dominance = turn.vad
    std = {d: _std([s[d] for s in turn.dimensional if d in s]) for d in ("val", "act", "dom")}
    extra = {
        "session": session, "dialog": turn_dialog, "start": turn.start, "end": turn.end,
        "mode": "improvised" if "_impro" in turn_dialog else "scripted", "emo_code": turn.code,
    }
    if turn.self_categorical:
        extra["self_categories"] = [category(n) or "other" for n in turn.self_categorical]
    if turn.self_dimensional:
        extra["self_vad"] = [turn.self_dimensional.get(d) for d in ("val", "act", "dom")]
    if unmapped:
        extra["unmapped"] = unmapped
    path = root / f"Session{session}" / "sentences" / "wav" / turn_dialog / f"{turn.utt_id}.wav"
    return Utterance(
        utt_id=f"{NAME}/{turn.utt_id}", path=str(path), speaker=f"{NAME}/Ses{session:02d}{letter}", corpus=NAME,
        duration=round(turn.end - turn.start, 4), gender=GENDERS[letter], language="en", label=label,
        pdf=pdf, votes=votes, n_raters=n_raters, agreement=agreement,
        arousal=arousal, valence=valence, dominance=dominance,
        arousal_std=std["act"], valence_std=std["val"], dominance_std=std["dom"], extra=extra,
    )


def build(data_root: Path, include_scripted: bool = True, **_: object) -> Manifest:
    """Manifest of every turn in ``SessionN/dialog/EmoEvaluation/*.txt`` under ``data_root/IEMOCAP_full_release``."""
    root = Path(data_root) / ROOT_DIR
    files = [(s, f) for s in SESSIONS
             for f in sorted((root / f"Session{s}" / "dialog" / "EmoEvaluation").glob("Ses*.txt"))]
    if not files:
        raise FileNotFoundError(f"no SessionN/dialog/EmoEvaluation/*.txt under {root} "
                                "(IEMOCAP is licensed from SAIL, USC: sail.usc.edu/iemocap)")
    utts = []
    for session, f in files:
        for turn in read_evaluation(f):
            u = _utterance(turn, session, f, root)
            if include_scripted or u.extra["mode"] == "improvised":
                utts.append(u)
    utts.sort(key=lambda u: u.utt_id)
    return Manifest.from_utterances(utts, CATEGORIES)
