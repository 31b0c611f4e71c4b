"""Label sets: the categories a cross-corpus run trains and scores on, and every corpus's labels mapped into them.

A run names its set (``four`` = angry, happy, neutral, sad; ``five`` adds fear; or a list of shared names). Each
corpus's PDF goes through the harmonisation table (:mod:`ray_ser.corpora.labels`, weights included) into the set,
and its label becomes the set's category the table sends it to (None when it splits evenly, e.g. bored -> neutral
0.5, sad 0.5: such an utterance trains on its soft target but is not scored). An utterance whose label has no
mass in the set (or, without a label, whose PDF has none) is out of the set: left out and counted per corpus.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ray_ser.corpora.labels import FOUR_CLASS, SHARED, consensus, harmonise, one_hot

NAMED = {"four": list(FOUR_CLASS), "five": [*FOUR_CLASS, "fear"]}
"""The named sets (EmoBox's cross-corpus track uses ``four``)."""


def resolve(spec: str | Sequence[str] | None) -> list[str] | None:
    """The categories of a label-set spec (a name, a comma-separated string or a list of shared names); None stays
    None (the corpora's own category list). A name outside :data:`~ray_ser.corpora.labels.SHARED` is refused."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec.strip().lower() in NAMED:
            return list(NAMED[spec.strip().lower()])
        spec = [s for s in spec.split(",")]
    names = [str(s).strip().lower() for s in spec if str(s).strip()]
    unknown = [n for n in names if n not in SHARED]
    if unknown:
        raise ValueError(f"label set: {unknown[0]!r} is not a shared category name (or one of {', '.join(NAMED)}); "
                         f"the shared names are {', '.join(SHARED)}")
    if len(names) < 2:
        raise ValueError(f"label set {names}: a classifier needs at least two categories")
    if len(set(names)) != len(names):
        raise ValueError(f"label set {names} names a category twice")
    return names


@dataclass
class Mapped:
    """One utterance's labels in the set: ``label`` (None: not scored), ``pdf`` (None: out of the set)."""

    label: str | None
    pdf: list[float] | None

    @property
    def in_set(self) -> bool:
        return self.pdf is not None


def map_row(corpus: str, categories: Sequence[str], label: str | None, pdf: Sequence[float] | None,
            target: Sequence[str]) -> Mapped:
    """``label`` and ``pdf`` (indexed by the corpus's ``categories``) moved into the set ``target``."""
    own = None
    if label is not None:
        own = harmonise(one_hot(label, categories)[None], corpus, categories, target)[0]
        if np.isnan(own).any():
            return Mapped(None, None)
    soft = None
    if pdf is not None and len(pdf) == len(categories):
        soft = harmonise(np.asarray(pdf, np.float32)[None], corpus, categories, target)[0]
        if np.isnan(soft).any():
            soft = None
    if soft is None:
        soft = own
    if soft is None:
        return Mapped(None, None)
    return Mapped(consensus(own, list(target)) if own is not None else None, [float(v) for v in soft])


@dataclass
class SetReport:
    """What a label set kept and left out, per corpus (recorded with the run and printed on the console)."""

    categories: list[str]
    kept: Counter = field(default_factory=Counter)
    out_of_set: Counter = field(default_factory=Counter)
    unscored: Counter = field(default_factory=Counter)
    """Kept for training (soft target in the set) but with no single category to score against."""

    def to_dict(self) -> dict:
        return {"categories": self.categories, "kept": dict(self.kept), "out_of_set": dict(self.out_of_set),
                "unscored": dict(self.unscored)}

    def line(self) -> str:
        parts = []
        for c in sorted(set(self.kept) | set(self.out_of_set)):
            part = f"{c} {self.kept[c]} kept"
            if self.out_of_set[c]:
                part += f", {self.out_of_set[c]} outside the set"
            if self.unscored[c]:
                part += f", {self.unscored[c]} unscored (no single category)"
            parts.append(part)
        return f"label set {','.join(self.categories)}: " + "; ".join(parts)


def map_rows(rows: dict[str, dict], corpus_categories: dict[str, list[str]], target: Sequence[str],
             report: SetReport | None = None) -> dict[str, dict]:
    """Manifest rows (utt_id -> row with corpus, label, pdf) with label and pdf in the set; rows out of the set are
    dropped unless they carry A/V/D (kept for the dimensional head, unlabelled), and counted in ``report``."""
    from ray_ser.corpora.manifest import DIMENSIONS

    out = {}
    for u, r in rows.items():
        corpus = r["corpus"]
        if r.get("label") is None and r.get("pdf") is None:
            out[u] = r
            if report is not None:
                report.kept[corpus] += 1
            continue
        m = map_row(corpus, corpus_categories[corpus], r.get("label"), r.get("pdf"), target)
        if not m.in_set:
            if report is not None:
                report.out_of_set[corpus] += 1
            if any(r.get(d) is not None for d in DIMENSIONS):
                out[u] = {**r, "label": None, "pdf": None}
            continue
        out[u] = {**r, "label": m.label, "pdf": m.pdf}
        if report is not None:
            report.kept[corpus] += 1
            if m.label is None:
                report.unscored[corpus] += 1
    return out
