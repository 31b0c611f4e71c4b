"""RAVDESS adapter on the real corpus (skipped when the data root has no ravdess/)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from ray_ser.corpora import build_manifest, ravdess
from ray_ser.settings import data_root

ROOT = data_root() / "ravdess"
pytestmark = pytest.mark.skipif(not (ROOT / "Actor_01").is_dir(), reason=f"RAVDESS not found under {ROOT}")


@pytest.fixture(scope="module")
def manifest():
    return build_manifest("ravdess")


def test_size_speakers_genders_classes(manifest):
    assert len(manifest) == 1440
    assert manifest.categories == ravdess.CATEGORIES and len(manifest.categories) == 8
    speakers = Counter(manifest.column("speaker"))
    assert len(speakers) == 24
    assert set(speakers.values()) == {60}
    genders = dict((u.speaker, u.gender) for u in manifest)
    assert Counter(genders.values()) == {"male": 12, "female": 12}
    assert genders["ravdess/01"] == "male" and genders["ravdess/24"] == "female"
    labels = Counter(manifest.column("label"))
    assert set(labels) == set(ravdess.CATEGORIES)
    assert labels["neutral"] == 96 and all(labels[c] == 192 for c in ravdess.CATEGORIES if c != "neutral")


def test_strong_intensity_gives_sharper_pdf(manifest):
    by_id = {u.utt_id: u for u in manifest}
    normal = by_id["ravdess/03-01-05-01-01-01-01"]  # angry, normal intensity, actor 01
    strong = by_id["ravdess/03-01-05-02-01-01-01"]  # angry, strong intensity
    k = ravdess.CATEGORIES.index("angry")
    assert normal.label == strong.label == "angry"
    assert normal.extra["intensity"] == "normal" and strong.extra["intensity"] == "strong"
    assert normal.pdf[k] == pytest.approx(0.8, abs=1e-6)
    assert strong.pdf[k] == pytest.approx(0.9, abs=1e-6)
    assert [p for i, p in enumerate(normal.pdf) if i != k] == pytest.approx([0.2 / 7] * 7, abs=1e-6)
    assert [p for i, p in enumerate(strong.pdf) if i != k] == pytest.approx([0.1 / 7] * 7, abs=1e-6)

    pdf = np.asarray(manifest.column("pdf"))
    np.testing.assert_allclose(pdf.sum(axis=1), 1.0, atol=1e-5)
    top = pdf.max(axis=1)
    is_strong = np.asarray([u.extra["intensity"] == "strong" for u in manifest])
    assert is_strong.sum() == 672
    np.testing.assert_allclose(top[is_strong], 0.9, atol=1e-6)
    np.testing.assert_allclose(top[~is_strong], 0.8, atol=1e-6)


def test_durations_positive(manifest):
    d = np.asarray(manifest.column("duration"))
    assert d.shape == (1440,)
    assert (d > 1.0).all() and (d < 10.0).all()
