"""Label schemes: smoothing rules, votes -> PDF, harmonisation with the packaged table, consensus."""

from __future__ import annotations

import numpy as np
import pytest

from ray_ser.corpora.labels import (
    FOUR_CLASS,
    SHARED,
    HarmonisationRow,
    Smoothing,
    consensus,
    harmonisation_matrix,
    harmonise,
    load_harmonisation,
    smoothed,
    votes_to_pdf,
)

CATS = ["angry", "happy", "sad", "neutral"]


def test_smoothed_uniform_exact():
    np.testing.assert_allclose(smoothed("angry", CATS, 0.7, Smoothing.UNIFORM), [0.7, 0.1, 0.1, 0.1], atol=1e-7)
    np.testing.assert_allclose(smoothed("sad", CATS, 0.4, "uniform"), [0.2, 0.2, 0.4, 0.2], atol=1e-7)
    np.testing.assert_array_equal(smoothed("happy", CATS, 1.0, "uniform"), [0, 1, 0, 0])
    assert smoothed("angry", CATS, 0.7, "uniform").dtype == np.float32


def test_smoothed_neutral_rule_exact():
    np.testing.assert_allclose(smoothed("angry", CATS, 0.65, Smoothing.NEUTRAL), [0.65, 0, 0, 0.35], atol=1e-7)
    # a neutral utterance has nowhere "more neutral" to go: the rest is spread uniformly
    np.testing.assert_allclose(smoothed("neutral", CATS, 0.7, "neutral"), [0.1, 0.1, 0.1, 0.7], atol=1e-7)
    # without a neutral category the rule falls back to uniform
    np.testing.assert_allclose(smoothed("angry", ["angry", "sad"], 0.8, "neutral"), [0.8, 0.2], atol=1e-7)


def test_smoothed_rejects_bad_input():
    with pytest.raises(ValueError, match="share"):
        smoothed("angry", CATS, 1.2, "uniform")
    with pytest.raises(ValueError):
        smoothed("angry", CATS, 0.5, "sideways")
    np.testing.assert_array_equal(smoothed("angry", ["angry"], 0.3, "uniform"), [1.0])


def test_votes_to_pdf():
    np.testing.assert_allclose(votes_to_pdf([1, 3, 0, 0]), [0.25, 0.75, 0, 0], atol=1e-7)
    np.testing.assert_allclose(votes_to_pdf([1, 3, 0], prior=1.0), [2 / 7, 4 / 7, 1 / 7], atol=1e-7)
    assert votes_to_pdf([2, 2]).dtype == np.float32
    with pytest.raises(ValueError, match="no votes"):
        votes_to_pdf([0, 0, 0])


def test_packaged_table_has_contempt_half_weight():
    rows = load_harmonisation()
    assert HarmonisationRow("*", "contempt", "disgust", 0.5) in rows
    assert all(r.source in SHARED and r.target in SHARED for r in rows)


def test_contempt_to_disgust_half_weight_renormalised():
    source, target = ["contempt", "angry"], ["angry", "disgust"]
    m = harmonisation_matrix("toy", source, target)
    np.testing.assert_array_equal(m, [[0.0, 0.5], [1.0, 0.0]])
    out = harmonise(np.array([[0.5, 0.5]]), "toy", source, target)
    np.testing.assert_allclose(out, [[2 / 3, 1 / 3]], atol=1e-6)


def test_excited_maps_to_happy():
    source = ["excited", "neutral", "sad"]
    out = harmonise(np.array([[1.0, 0, 0], [0.5, 0.25, 0.25]]), "iemocap", source, FOUR_CLASS)
    np.testing.assert_allclose(out[0], [0, 1, 0, 0], atol=1e-7)  # FOUR_CLASS = neutral, happy, sad, angry
    np.testing.assert_allclose(out[1], [0.25, 0.5, 0.25, 0], atol=1e-7)


def test_mass_outside_target_gives_nan_row():
    source = ["fear", "surprise", "angry"]
    out = harmonise(np.array([[0.6, 0.4, 0.0], [0.5, 0.0, 0.5]]), "toy", source, FOUR_CLASS)
    assert np.isnan(out[0]).all()
    np.testing.assert_allclose(out[1], [0, 0, 0, 1], atol=1e-7)


def test_corpus_rows_override_generic_rows():
    table = [HarmonisationRow("*", "calm", "neutral", 1.0), HarmonisationRow("ravdess", "calm", "sad", 0.5)]
    np.testing.assert_array_equal(harmonisation_matrix("other", ["calm"], FOUR_CLASS, table), [[1, 0, 0, 0]])
    np.testing.assert_array_equal(harmonisation_matrix("ravdess", ["calm"], FOUR_CLASS, table), [[0, 0, 0.5, 0]])


def test_consensus():
    assert consensus(np.array([0.2, 0.5, 0.3]), ["a", "b", "c"]) == "b"
    assert consensus(np.array([0.4, 0.4, 0.2]), ["a", "b", "c"]) is None
    assert consensus({"angry": 0.45, "sad": 0.45, "happy": 0.1}, ["angry", "sad", "happy"]) is None
    assert consensus({"angry": 0.1, "sad": 0.8, "happy": 0.1}, ["angry", "sad", "happy"]) == "sad"
