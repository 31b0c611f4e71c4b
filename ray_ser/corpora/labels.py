"""Label schemes: the shared category names, votes -> probability targets, and cross-corpus harmonisation.

Every adapter names its categories from ``SHARED`` so that harmonisation is a table lookup, never a guess.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from typing import Mapping, Sequence

import numpy as np

SHARED = (
    "neutral", "calm", "happy", "excited", "sad", "angry", "frustrated", "fear",
    "disgust", "contempt", "surprise", "bored", "other",
)
"""The shared vocabulary of category names; corpus labels are spelled in it."""

FOUR_CLASS = ("neutral", "happy", "sad", "angry")
"""The usual cross-corpus target set."""


class Smoothing(str, Enum):
    """Where the probability mass that graders did not give the intended category goes."""

    UNIFORM = "uniform"  # spread evenly over the other categories
    NEUTRAL = "neutral"  # all of it to neutral ("neutral smoothing"); uniform for neutral utterances


def one_hot(label: str, categories: Sequence[str]) -> np.ndarray:
    v = np.zeros(len(categories), np.float32)
    v[list(categories).index(label)] = 1.0
    return v


def smoothed(label: str, categories: Sequence[str], share: float, rule: Smoothing | str) -> np.ndarray:
    """A PDF giving ``share`` to ``label`` and ``1 - share`` to the others by ``rule``.

    Used where a corpus publishes how often the intended emotion was recognised but not the other votes
    (EmoDB's perception test), or where an acted label is softened by a chosen amount (RAVDESS).
    """
    rule = Smoothing(rule)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    cats = list(categories)
    k = cats.index(label)
    v = np.zeros(len(cats), np.float64)
    v[k] = share
    rest = 1.0 - share
    if rule is Smoothing.NEUTRAL and label != "neutral" and "neutral" in cats:
        v[cats.index("neutral")] += rest
    elif len(cats) > 1:
        others = [i for i in range(len(cats)) if i != k]
        v[others] += rest / len(others)
    else:
        v[k] = 1.0
    return v.astype(np.float32)


def votes_to_pdf(votes: Sequence[float], prior: float = 0.0) -> np.ndarray:
    """Normalise vote counts to a PDF; ``prior`` adds that many pseudo-votes to every category."""
    v = np.asarray(votes, np.float64) + prior
    total = v.sum()
    if total <= 0:
        raise ValueError(f"no votes to normalise: {list(votes)}")
    return (v / total).astype(np.float32)


@dataclass(frozen=True)
class HarmonisationRow:
    corpus: str
    source: str
    target: str
    weight: float


def load_harmonisation(path: str | None = None) -> list[HarmonisationRow]:
    """Read a mapping table (corpus, source, target, weight); the packaged default when ``path`` is None."""
    if path is None:
        text = resources.files("ray_ser.corpora").joinpath("harmonisation.csv").read_text()
    else:
        with open(path, newline="") as f:
            text = f.read()
    rows = csv.DictReader(line for line in text.splitlines() if line and not line.startswith("#"))
    return [HarmonisationRow(r["corpus"], r["source"], r["target"], float(r["weight"])) for r in rows]


def harmonisation_matrix(
    corpus: str,
    source: Sequence[str],
    target: Sequence[str],
    table: Sequence[HarmonisationRow] | None = None,
) -> np.ndarray:
    """Matrix M (len(source) x len(target)) so that ``pdf @ M`` moves soft labels to ``target``.

    Rows for ``corpus`` override rows for ``*`` (every corpus); a source category with the same name in
    ``target`` maps to itself with weight 1 unless a row says otherwise. Weights below 1 drop that share
    of the mass (e.g. contempt -> disgust 0.5); :func:`harmonise` renormalises what is left.
    """
    table = load_harmonisation() if table is None else table
    m = np.zeros((len(source), len(target)), np.float32)
    explicit: dict[str, dict[str, float]] = {}
    for scope in ("*", corpus):  # corpus-specific rows replace the generic ones
        scoped: dict[str, dict[str, float]] = {}
        for r in table:
            if r.corpus == scope:
                scoped.setdefault(r.source, {})[r.target] = r.weight
        explicit.update(scoped)
    for i, s in enumerate(source):
        mapping = explicit.get(s, {s: 1.0})
        for t, w in mapping.items():
            if t in target:
                m[i, list(target).index(t)] = w
    return m


def harmonise(
    pdf: np.ndarray, corpus: str, source: Sequence[str], target: Sequence[str],
    table: Sequence[HarmonisationRow] | None = None,
) -> np.ndarray:
    """Map PDFs (n x len(source)) to ``target``; rows whose mass all falls outside come back as NaN."""
    out = np.asarray(pdf, np.float32) @ harmonisation_matrix(corpus, source, target, table)
    total = out.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, out / total, np.nan).astype(np.float32)


def consensus(pdf: Mapping[str, float] | np.ndarray, categories: Sequence[str]) -> str | None:
    """The plurality category of a PDF, or None on a tie (no agreement)."""
    p = np.asarray(list(pdf.values()) if isinstance(pdf, Mapping) else pdf, np.float64)
    top = np.flatnonzero(np.isclose(p, p.max()))
    return categories[int(top[0])] if len(top) == 1 else None
