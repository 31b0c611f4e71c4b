"""EmoDB adapter on the real corpus (skipped when the data root has no emodb/)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ray_ser.corpora import build_manifest, emodb
from ray_ser.settings import data_root

ROOT = data_root() / "emodb"
pytestmark = pytest.mark.skipif(not (ROOT / "wav").is_dir(), reason=f"EmoDB not found under {ROOT}")

MALE = {"03", "10", "11", "12", "15"}
COUNTS = {"angry": 127, "bored": 81, "disgust": 46, "fear": 69, "happy": 71, "neutral": 79, "sad": 62}
NAMED = ("03a01Fa.wav", "10a02Ab.wav", "16b10Td.wav")  # happy, fear, sad


@pytest.fixture(scope="module")
def manifest():
    return build_manifest("emodb")


@pytest.fixture(scope="module")
def by_id(manifest):
    return {u.utt_id: u for u in manifest}


def _rates_from_erkennung(names) -> dict[str, float]:
    """Recognition rates of ``names`` read straight from erkennung.txt (Latin-1, tabs, decimal commas)."""
    out = {}
    for line in (ROOT / "erkennung.txt").read_bytes().decode("latin-1").splitlines():
        m = re.search(r"(\d\d[ab]\d\d[A-Z][a-z]\.wav)\s+(\d+),(\d+)", line)
        if m and m.group(1) in names:
            out[m.group(1)] = float(f"{m.group(2)}.{m.group(3)}") / 100
    assert set(out) == set(names)
    return out


def test_size_speakers_classes(manifest):
    assert len(manifest) == 535
    assert manifest.corpus == "emodb"
    assert manifest.categories == emodb.CATEGORIES
    assert len(set(manifest.column("speaker"))) == 10
    assert Counter(manifest.column("label")) == COUNTS


def test_gender_per_speaker(manifest):
    genders = {(u.speaker, u.gender) for u in manifest}
    assert len(genders) == 10  # one gender per speaker
    for spk, gender in genders:
        assert gender == ("male" if spk.split("/")[1] in MALE else "female"), spk


def test_every_pdf_is_a_distribution(manifest):
    pdf = np.asarray(manifest.column("pdf"), np.float64)
    assert pdf.shape == (535, 7)
    np.testing.assert_allclose(pdf.sum(axis=1), 1.0, atol=1e-5)
    assert (pdf >= 0).all()
    labels = manifest.column("label")
    assert all(pdf[i].argmax() == emodb.CATEGORIES.index(lab) for i, lab in enumerate(labels) if pdf[i].max() > 0.5)


def test_pdf_of_label_is_the_recognition_rate(by_id):
    rates = _rates_from_erkennung(NAMED)
    assert rates == pytest.approx({"03a01Fa.wav": 0.90, "10a02Ab.wav": 0.85, "16b10Td.wav": 0.95})
    for name, rate in rates.items():
        u = by_id[f"emodb/{Path(name).stem}"]
        k = emodb.CATEGORIES.index(u.label)
        assert u.pdf[k] == pytest.approx(rate, abs=1e-6), name
        assert u.agreement == pytest.approx(rate, abs=1e-6)
        assert u.n_raters == 20
        others = [p for i, p in enumerate(u.pdf) if i != k]  # uniform smoothing by default
        assert others == pytest.approx([(1 - rate) / 6] * 6, abs=1e-6)


def test_labels_from_file_names(by_id):
    assert by_id["emodb/03a01Fa"].label == "happy"
    assert by_id["emodb/10a02Ab"].label == "fear"
    assert by_id["emodb/16b10Td"].label == "sad"
    assert by_id["emodb/03a01Fa"].extra["text"] == "a01"


def test_durations_positive(manifest):
    d = np.asarray(manifest.column("duration"))
    assert (d > 0.5).all() and (d < 15).all()


def test_neutral_smoothing_puts_rest_on_neutral():
    m = build_manifest("emodb", smoothing="neutral")
    rates = _rates_from_erkennung(NAMED + ("03a01Nc.wav",))
    by_id = {u.utt_id: u for u in m}
    n = emodb.CATEGORIES.index("neutral")
    for name in NAMED:
        u = by_id[f"emodb/{Path(name).stem}"]
        k = emodb.CATEGORIES.index(u.label)
        expected = np.zeros(7)
        expected[k] = rates[name]
        expected[n] = 1 - rates[name]
        np.testing.assert_allclose(u.pdf, expected, atol=1e-6, err_msg=name)
    # a neutral utterance recognised by 100 % is one-hot
    np.testing.assert_allclose(by_id["emodb/03a01Nc"].pdf, np.eye(7)[n], atol=1e-6)
    pdf = np.asarray(m.column("pdf"))
    np.testing.assert_allclose(pdf.sum(axis=1), 1.0, atol=1e-5)
    non_neutral = np.asarray([lab != "neutral" for lab in m.column("label")])
    # only the label and neutral carry mass in non-neutral rows
    assert ((pdf[non_neutral] > 0).sum(axis=1) <= 2).all()
