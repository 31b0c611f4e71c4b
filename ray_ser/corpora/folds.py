"""Speaker-independent folds: leave-one-speaker-out and k speaker-disjoint folds, stratified by label."""

from __future__ import annotations

from typing import Iterator

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from ray_ser.corpora.manifest import Manifest


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


def splits(manifest: Manifest) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (fold, train indices, test indices) for every fold in the ``fold`` column."""
    fold = np.asarray(manifest.column("fold"), dtype=object)
    if any(f is None for f in fold):
        raise ValueError("manifest has no fold column: call loso() or speaker_folds() first")
    fold = fold.astype(np.int64)
    for f in np.unique(fold):
        yield int(f), np.flatnonzero(fold != f), np.flatnonzero(fold == f)
