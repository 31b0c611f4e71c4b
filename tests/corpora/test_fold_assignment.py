"""Fold assignments: ids identify the (utterance, fold) pairs, inner splits stay inside the training speakers."""

from __future__ import annotations

import pytest

from ray_ser.corpora.folds import FoldAssignment


def make(n_spk: int = 10, per: int = 4) -> FoldAssignment:
    utts = [f"s{s}_{i}" for s in range(n_spk) for i in range(per)]
    spk = [f"s{s}" for s in range(n_spk) for _ in range(per)]
    return FoldAssignment(tuple(utts), tuple(spk), tuple(int(s[1:]) for s in spk), "loso")


def test_id_depends_on_pairs_not_order():
    a = make()
    b = FoldAssignment(a.utt_ids[::-1], a.speakers[::-1], a.folds[::-1])
    assert a.id == b.id and len(a.id) == 12
    moved = list(a.folds)
    moved[0:4] = [1] * 4  # speaker s0 joins fold 1
    assert FoldAssignment(a.utt_ids, a.speakers, tuple(moved)).id != a.id


def test_speaker_in_two_folds_is_refused():
    with pytest.raises(ValueError, match="more than one fold"):
        FoldAssignment(("a", "b"), ("s", "s"), (0, 1))


def test_train_test_and_inner_split():
    a = make()
    for f in a.fold_ids:
        test, train = set(a.test_utts(f)), set(a.train_utts(f))
        assert test and not test & train and test | train == set(a.utt_ids)
        inner, val = a.inner_split(f, share=0.15, seed=0)
        spk = dict(zip(a.utt_ids, a.speakers))
        val_spk, inner_spk = {spk[u] for u in val}, {spk[u] for u in inner}
        assert len(val_spk) == 2 and not val_spk & inner_spk  # ceil(0.15 x 9) speakers held out
        assert set(inner) | set(val) == train and f"s{f}" not in val_spk | inner_spk
        assert a.inner_split(f, seed=0) == (inner, val)
    with pytest.raises(ValueError, match="inner split"):
        make(n_spk=2).inner_split(0)
