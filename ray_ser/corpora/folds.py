"""Speaker-independent folds: leave-one-speaker-out and k speaker-disjoint folds, stratified by label."""

from __future__ import annotations

import hashlib
import math
import warnings
import zlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from ray_ser.corpora.manifest import Manifest


ALL_SPEAKERS = -1
"""The "fold" whose training rows are every speaker (no test speakers): the final model's, and the analysis rows
scored on every speaker, for use on speakers outside the corpus only."""


def loso(manifest: Manifest) -> Manifest:
    """Fold i holds every utterance of the i-th speaker (speakers sorted by name)."""
    speakers = manifest.column("speaker")
    order = {s: i for i, s in enumerate(sorted(set(speakers)))}
    return manifest.with_column("fold", [order[s] for s in speakers])


def speaker_folds(manifest: Manifest, k: int = 5, seed: int = 0) -> Manifest:
    """k speaker-disjoint folds, stratified by ``label`` (StratifiedGroupKFold) so classes stay balanced."""
    speakers = np.asarray(manifest.column("speaker"))
    n_spk = len(set(speakers.tolist()))
    if k > n_spk:
        raise ValueError(f"{k} folds need at least {k} speakers, the manifest has {n_spk}")
    labels = np.asarray([lab or "" for lab in manifest.column("label")])
    fold = np.full(len(manifest), -1, np.int32)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for i, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups=speakers)):
        fold[test] = i
    return manifest.with_column("fold", fold.tolist())


def corpus_folds(speakers: Sequence[str], labels: Sequence[str | None], corpora: Sequence[str], k: int = 5,
                 seed: int = 0) -> np.ndarray:
    """k speaker-disjoint folds over several corpora, stratified by corpus: each corpus's speakers are split into k
    folds of their own (StratifiedGroupKFold, by label), so every fold tests speakers of every corpus. A corpus with
    fewer than k speakers is refused, naming it."""
    speakers, corpora = np.asarray(speakers, dtype=object), np.asarray(corpora, dtype=object)
    labels = np.asarray([lab or "" for lab in labels], dtype=object)
    fold = np.full(len(speakers), -1, np.int64)
    for corpus in sorted(set(corpora.tolist())):
        rows = np.flatnonzero(corpora == corpus)
        n_spk = len(set(speakers[rows].tolist()))
        if n_spk < k:
            raise ValueError(f"corpus {corpus} has {n_spk} speakers: {k} folds stratified by corpus need {k} "
                             "speakers of every corpus (choose fewer folds)")
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a class with fewer members than folds
            for i, (_, test) in enumerate(splitter.split(np.zeros(len(rows)), labels[rows].astype(str),
                                                          groups=speakers[rows].astype(str))):
                fold[rows[test]] = i
    return fold


def splits(manifest: Manifest) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (fold, train indices, test indices) for every fold in the ``fold`` column."""
    fold = np.asarray(manifest.column("fold"), dtype=object)
    if any(f is None for f in fold):
        raise ValueError("manifest has no fold column: call loso() or speaker_folds() first")
    fold = fold.astype(np.int64)
    for f in np.unique(fold):
        yield int(f), np.flatnonzero(fold != f), np.flatnonzero(fold == f)


@dataclass(frozen=True)
class FoldAssignment:
    """Which outer fold every utterance is tested in; ``id`` names the assignment in every table made with it.

    Outer fold f tests the speakers with ``fold == f`` and trains on the rest; fold -1 (all speakers) is never
    used to train or select anything that is then scored on these speakers."""

    utt_ids: tuple[str, ...]
    speakers: tuple[str, ...]
    folds: tuple[int, ...]
    description: str = ""
    strata: tuple[str, ...] | None = None
    """The corpus of every utterance when the assignment spans several: inner validation speakers are then drawn
    from every corpus. Not part of ``id`` (the folds are)."""

    def __post_init__(self):
        if not len(self.utt_ids) == len(self.speakers) == len(self.folds):
            raise ValueError("utt_ids, speakers and folds differ in length")
        if self.strata is not None and len(self.strata) != len(self.utt_ids):
            raise ValueError("strata and utt_ids differ in length")
        spk_folds: dict[str, set[int]] = {}
        for s, f in zip(self.speakers, self.folds):
            spk_folds.setdefault(s, set()).add(f)
        split = {s: sorted(f) for s, f in spk_folds.items() if len(f) > 1}
        if split:
            raise ValueError(f"speakers in more than one fold (not speaker-independent): {dict(list(split.items())[:3])}")

    @property
    def id(self) -> str:
        """12 hex digits of the SHA-1 of the sorted (utt_id, fold) pairs: equal ids, equal assignments."""
        text = "\n".join(f"{u}\t{f}" for u, f in sorted(zip(self.utt_ids, self.folds)))
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    @property
    def fold_ids(self) -> list[int]:
        return sorted(set(self.folds))

    def fold_of(self) -> dict[str, int]:
        return dict(zip(self.utt_ids, self.folds))

    def test_utts(self, fold: int) -> list[str]:
        return [u for u, f in zip(self.utt_ids, self.folds) if f == fold]

    def train_utts(self, fold: int) -> list[str]:
        """Utterances outside ``fold`` (all of them for fold -1)."""
        return [u for u, f in zip(self.utt_ids, self.folds) if f != fold]

    def speakers_of(self, fold: int) -> list[str]:
        return sorted({s for s, f in zip(self.speakers, self.folds) if f == fold})

    def inner_split(self, fold: int, share: float = 0.15, seed: int = 0) -> tuple[list[str], list[str]]:
        """(inner training, inner validation) utterances within the training speakers of outer ``fold``:
        ceil(share x training speakers) speakers, at least one, drawn with ``seed`` (for early stopping and
        model selection; the outer test speakers are in neither). With ``strata`` (several corpora) the draw is
        made in each corpus with two or more training speakers, so every corpus validates."""
        if self.strata is None:
            groups = {"": sorted({s for s, f in zip(self.speakers, self.folds) if f != fold})}
        else:
            groups = {}
            for s, f, c in zip(self.speakers, self.folds, self.strata):
                if f != fold:
                    groups.setdefault(c, set()).add(s)
            groups = {c: sorted(v) for c, v in groups.items()}
        val_spk: set[str] = set()
        for name, train_spk in sorted(groups.items()):
            if len(train_spk) < 2:
                if self.strata is None:
                    raise ValueError(f"fold {fold} leaves {len(train_spk)} training speaker(s): an inner split needs 2")
                continue
            n_val = min(len(train_spk) - 1, max(1, math.ceil(share * len(train_spk))))
            key = [seed, fold + 1] if self.strata is None else [seed, fold + 1, zlib.crc32(name.encode())]
            rng = np.random.default_rng(key)
            val_spk |= set(rng.choice(train_spk, size=n_val, replace=False).tolist())
        if not val_spk:
            raise ValueError(f"fold {fold}: no corpus has 2 training speakers for an inner split")
        inner, val = [], []
        for u, s, f in zip(self.utt_ids, self.speakers, self.folds):
            if f != fold:
                (val if s in val_spk else inner).append(u)
        return inner, val

    def corpus_of(self) -> dict[str, str] | None:
        return None if self.strata is None else dict(zip(self.utt_ids, self.strata))

    def to_polars(self):
        import polars as pl

        return pl.DataFrame({"utt_id": list(self.utt_ids), "speaker": list(self.speakers),
                             "fold": pl.Series(list(self.folds), dtype=pl.Int32)})

    def without(self, folds) -> "FoldAssignment":
        """The assignment less every utterance of ``folds`` (the speakers a search must never touch, so the
        configuration it picks can be scored on them honestly). Its id differs from the full assignment's."""
        drop = set(folds)
        keep = [i for i, f in enumerate(self.folds) if f not in drop]
        return FoldAssignment(tuple(self.utt_ids[i] for i in keep), tuple(self.speakers[i] for i in keep),
                              tuple(self.folds[i] for i in keep), f"{self.description} without folds {sorted(drop)}",
                              None if self.strata is None else tuple(self.strata[i] for i in keep))
