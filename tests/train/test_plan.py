"""The run's utterances, fold assignment and fold plan over a store of several corpora with different category
lists (tests/multicorpus.py): the label set decides what is read, folds are stratified by corpus, and the
per-corpus scaler undoes each corpus's planted offset and scale."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from multicorpus import CORPORA, MODEL, build_multi_store

from ray_ser.corpora.label_sets import SetReport
from ray_ser.train.config import TrainConfig
from ray_ser.train.plan import planned_fold, resolve_assignment, run_rows
from ray_ser.store import Store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return build_multi_store(tmp_path_factory.mktemp("multi"), conditions=("clean",))


def cfg(store, **kw) -> TrainConfig:
    return TrainConfig(store=store, model=MODEL, layer=0, **kw)


def test_one_corpus_of_a_mixed_store_trains_without_a_label_set(store):
    rows = run_rows(cfg(store, corpora=["gamma"]), Store(store))
    assert {r["corpus"] for r in rows.values()} == {"gamma"} and len(rows) == 6 * 4 * 3
    a = resolve_assignment(cfg(store, corpora=["gamma"], folds="3"), Store(store))
    assert len(a.fold_ids) == 3 and a.strata is None


def test_corpora_with_different_lists_need_a_label_set(store):
    with pytest.raises(ValueError, match=r"different category lists.*--label-set"):
        run_rows(cfg(store, corpora=["alpha", "beta"]), Store(store))


def test_the_label_set_keeps_the_in_set_rows_and_counts_the_rest(store):
    report = SetReport(["neutral", "happy", "sad", "angry"])
    rows = run_rows(cfg(store, corpora=["alpha", "beta"], label_set="four"), Store(store), report=report)
    per = 6 * 3  # speakers x utterances per class
    assert report.kept == Counter({"alpha": 4 * per, "beta": 5 * per})  # beta's calm -> neutral
    assert report.out_of_set == Counter({"alpha": per, "beta": per})  # fear, disgust
    calm = [r for u, r in rows.items() if "_calm_" in u]
    assert calm and all(r["label"] == "neutral" for r in calm)
    assert not any(r["corpus"] == "gamma" for r in rows.values())


def test_folds_over_several_corpora_are_speaker_disjoint_and_hold_every_corpus(store):
    a = resolve_assignment(cfg(store, corpora=["alpha", "beta", "gamma"], label_set="four", folds="3"), Store(store))
    assert a.fold_ids == [0, 1, 2] and "per corpus" in a.description
    spk_folds: dict[str, set] = {}
    for s, f in zip(a.speakers, a.folds):
        spk_folds.setdefault(s, set()).add(f)
    assert all(len(v) == 1 for v in spk_folds.values())
    corpus_of = a.corpus_of()
    for f in a.fold_ids:
        assert {corpus_of[u] for u in a.test_utts(f)} == set(CORPORA)
        inner, val = a.inner_split(f, 0.15)
        assert {corpus_of[u] for u in val} == set(CORPORA)  # every corpus validates
        assert not {s for s in map(lambda u: u.split("_")[0], val)} & {s for s in map(lambda u: u.split("_")[0], inner)}
    with pytest.raises(ValueError, match="loso"):
        resolve_assignment(cfg(store, corpora=["alpha", "beta"], label_set="four", folds="loso"), Store(store))
    with pytest.raises(ValueError, match="corpus alpha has 6 speakers"):
        resolve_assignment(cfg(store, corpora=["alpha", "beta"], label_set="four", folds="7"), Store(store))


def test_the_per_corpus_scaler_is_fitted_on_each_corpus_training_speakers(store):
    c = cfg(store, corpora=["alpha", "beta", "gamma"], label_set="four", folds="3", scaler="per-corpus")
    a = resolve_assignment(c, Store(c.store))
    plan, labels, _ = planned_fold(c, Store(c.store), a, 0)
    assert plan.norm_mean is None and sorted(plan.corpus_norm) == sorted(CORPORA)
    means = {k: np.mean(v[0]) for k, v in plan.corpus_norm.items()}
    stds = {k: np.mean(v[1]) for k, v in plan.corpus_norm.items()}
    # the planted offsets (0, +4, -4) and scales (1, 3, 0.5) are what each corpus's scaler learned
    assert means["beta"] - means["alpha"] == pytest.approx(4.0, abs=0.8)
    assert means["gamma"] - means["alpha"] == pytest.approx(-4.0, abs=0.8)
    assert stds["beta"] / stds["alpha"] == pytest.approx(3.0, rel=0.15)
    assert stds["gamma"] / stds["alpha"] == pytest.approx(0.5, rel=0.15)
    assert plan.corpus_counts == {k: len([u for u in plan.inner if labels.rows[u]["corpus"] == k]) for k in CORPORA}
    assert set(plan.test) <= set(a.test_utts(0)) and not set(plan.inner) & set(plan.test)
    glob = planned_fold(c.model_copy(update={"scaler": "global"}), Store(c.store), a, 0)[0]
    assert glob.corpus_norm is None and len(glob.norm_mean) == 12


def test_dimensions_any_corpus_has_switch_the_head_on(tmp_path):
    uri = build_multi_store(tmp_path, per_class=2, conditions=("clean",), arousal={"gamma": True})
    c = cfg(uri, corpora=["alpha", "gamma"], label_set="four", folds="2")
    plan, _, _ = planned_fold(c, Store(c.store), resolve_assignment(c, Store(c.store)), 0)
    assert plan.has_dims and plan.model_cfg["n_dims"] == 3  # gamma has arousal only: the head trains per dimension
    assert plan.corpus_dims == {"alpha": [], "gamma": ["arousal"]}
