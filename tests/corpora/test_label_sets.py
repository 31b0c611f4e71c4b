"""Label sets: names resolved and checked, labels and PDFs harmonised into a set with their weights, and what falls
outside it counted per corpus."""

from __future__ import annotations

import numpy as np
import pytest

from ray_ser.corpora import label_sets as ls
from ray_ser.corpora.labels import SHARED

EMODB = ["angry", "bored", "disgust", "fear", "happy", "sad", "neutral"]
RAVDESS = ["neutral", "calm", "happy", "sad", "angry", "fear", "disgust", "surprise"]


def test_named_and_listed_sets():
    assert ls.resolve("four") == ["neutral", "happy", "sad", "angry"]
    assert ls.resolve("FIVE") == ["neutral", "happy", "sad", "angry", "fear"]
    assert ls.resolve("angry, sad") == ["angry", "sad"] == ls.resolve(["angry", "sad"])
    assert ls.resolve(None) is None


def test_a_name_outside_the_shared_vocabulary_is_refused_and_the_names_listed():
    with pytest.raises(ValueError) as e:
        ls.resolve("angry,joy")
    assert "'joy'" in str(e.value) and all(name in str(e.value) for name in SHARED)
    with pytest.raises(ValueError, match="at least two"):
        ls.resolve("angry")
    with pytest.raises(ValueError, match="twice"):
        ls.resolve("angry,angry,sad")


def test_labels_map_through_the_table_with_their_weights():
    four = ls.resolve("four")
    calm = ls.map_row("ravdess", RAVDESS, "calm", None, four)  # calm -> neutral 1.0
    assert calm.label == "neutral" and calm.pdf == [1.0, 0.0, 0.0, 0.0]
    bored = ls.map_row("emodb", EMODB, "bored", None, four)  # bored -> neutral 0.5, sad 0.5: trains, not scored
    assert bored.in_set and bored.label is None and bored.pdf == pytest.approx([0.5, 0.0, 0.5, 0.0])
    fear = ls.map_row("emodb", EMODB, "fear", None, four)
    assert not fear.in_set and fear.label is None
    assert ls.map_row("emodb", EMODB, "fear", None, ls.resolve("five")).label == "fear"


def test_a_soft_target_keeps_its_in_set_mass_renormalised():
    four = ls.resolve("four")
    pdf = np.zeros(len(RAVDESS), np.float32)
    pdf[RAVDESS.index("angry")] = 0.6
    pdf[RAVDESS.index("calm")] = 0.2  # -> neutral
    pdf[RAVDESS.index("surprise")] = 0.2  # outside the set: dropped, the rest renormalised
    m = ls.map_row("ravdess", RAVDESS, "angry", pdf, four)
    assert m.label == "angry" and m.pdf == pytest.approx([0.25, 0.0, 0.0, 0.75])
    contempt = ls.map_row("x", ["contempt", "disgust", "angry"], "contempt", None, ["disgust", "angry"])
    assert contempt.label == "disgust" and contempt.pdf == pytest.approx([1.0, 0.0])  # 0.5 weight, renormalised


def test_rows_outside_the_set_are_left_out_and_counted_per_corpus():
    rows = {
        "e/1": {"corpus": "emodb", "label": "angry", "pdf": None},
        "e/2": {"corpus": "emodb", "label": "fear", "pdf": None},
        "e/3": {"corpus": "emodb", "label": "bored", "pdf": None},
        "r/1": {"corpus": "ravdess", "label": "surprise", "pdf": None},
        "r/2": {"corpus": "ravdess", "label": "disgust", "pdf": None, "arousal": 3.0},  # kept for A/V/D only
        "r/3": {"corpus": "ravdess", "label": None, "pdf": None, "arousal": 2.0},
    }
    report = ls.SetReport(ls.resolve("four"))
    kept = ls.map_rows(rows, {"emodb": EMODB, "ravdess": RAVDESS}, report.categories, report)
    assert sorted(kept) == ["e/1", "e/3", "r/2", "r/3"]
    assert kept["r/2"]["label"] is None and kept["r/2"]["pdf"] is None and kept["r/2"]["arousal"] == 3.0
    assert report.to_dict() == {"categories": ["neutral", "happy", "sad", "angry"], "kept": {"emodb": 2, "ravdess": 1},
                                "out_of_set": {"emodb": 1, "ravdess": 2}, "unscored": {"emodb": 1}}
    assert "emodb 2 kept, 1 outside the set, 1 unscored" in report.line()
