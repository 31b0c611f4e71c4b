"""Speaker-independent folds on the real EmoDB manifest (skipped when the data root has no emodb/)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from ray_ser.corpora import build_manifest
from ray_ser.corpora.folds import loso, speaker_folds, splits
from ray_ser.settings import data_root

ROOT = data_root() / "emodb"
pytestmark = pytest.mark.skipif(not (ROOT / "wav").is_dir(), reason=f"EmoDB not found under {ROOT}")


@pytest.fixture(scope="module")
def manifest():
    return build_manifest("emodb")


def _speakers_per_fold(m) -> dict[int, set[str]]:
    out = defaultdict(set)
    for f, s in zip(m.column("fold"), m.column("speaker")):
        out[f].add(s)
    return out


def test_loso_one_speaker_per_fold(manifest):
    m = loso(manifest)
    per_fold = _speakers_per_fold(m)
    assert sorted(per_fold) == list(range(10))
    assert all(len(s) == 1 for s in per_fold.values())
    assert sorted(next(iter(s)) for s in per_fold.values()) == sorted(set(manifest.column("speaker")))
    assert per_fold[0] == {"emodb/03"}  # speakers sorted by name


def test_speaker_folds_are_disjoint_and_stratified(manifest):
    m = speaker_folds(manifest, k=5, seed=0)
    per_fold = _speakers_per_fold(m)
    assert sorted(per_fold) == list(range(5))
    seen = [s for spk in per_fold.values() for s in spk]
    assert len(seen) == len(set(seen)) == 10  # no speaker in two folds, every speaker in one
    classes = set(manifest.categories)
    for f in range(5):
        fold_labels = {lab for lab, g in zip(m.column("label"), m.column("fold")) if g == f}
        assert fold_labels == classes, f"fold {f} lacks {classes - fold_labels}"
    # deterministic for a seed
    assert speaker_folds(manifest, k=5, seed=0).column("fold") == m.column("fold")


@pytest.mark.parametrize("make", [loso, lambda m: speaker_folds(m, k=5)], ids=["loso", "k5"])
def test_splits_disjoint_in_speakers(manifest, make):
    m = make(manifest)
    speakers = np.asarray(m.column("speaker"))
    n_folds = 0
    covered = np.zeros(len(m), int)
    for fold, train, test in splits(m):
        n_folds += 1
        assert len(train) + len(test) == len(m)
        assert set(speakers[train]).isdisjoint(speakers[test]), fold
        covered[test] += 1
    assert n_folds == len(set(m.column("fold")))
    assert (covered == 1).all()  # every utterance is tested exactly once


def test_too_many_folds_raises(manifest):
    with pytest.raises(ValueError, match="11 folds need at least 11 speakers"):
        speaker_folds(manifest, k=11)


def test_splits_without_folds_raises(manifest):
    with pytest.raises(ValueError, match="no fold column"):
        list(splits(manifest))
