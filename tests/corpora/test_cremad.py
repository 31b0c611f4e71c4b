"""CREMA-D adapter on the real rating tables (skipped when the data root has no crema-d-labels/)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from ray_ser.corpora import build_manifest
from ray_ser.settings import data_root

ROOT = data_root() / "crema-d-labels"
VOTES = ROOT / "processedResults" / "tabulatedVotes.csv"
pytestmark = pytest.mark.skipif(not VOTES.exists(), reason=f"CREMA-D rating tables not found under {ROOT}")


@pytest.fixture(scope="module")
def manifest():
    return build_manifest("cremad")


@pytest.fixture(scope="module")
def by_id(manifest):
    return {u.utt_id: u for u in manifest}


def _votes_row(clip: str) -> dict[str, str]:
    """The voice-only (id 1xxxxx) row of ``clip``, parsed here from the header and that one line."""
    lines = VOTES.read_text().splitlines()
    header = next(csv.reader([lines[0]]))
    for line in lines[1:]:
        if f'"{clip}"' in line and line.startswith('"1'):
            return dict(zip(header, next(csv.reader([line]))))
    raise AssertionError(f"{clip} not in {VOTES}")


def test_voice_only_clips_and_speakers(manifest):
    assert len(manifest) == 7442
    assert manifest.categories == ["angry", "disgust", "fear", "happy", "neutral", "sad"]
    assert len(set(manifest.column("speaker"))) == 91
    pdf = np.asarray(manifest.column("pdf"))
    np.testing.assert_allclose(pdf.sum(axis=1), 1.0, atol=1e-5)
    assert all(u.extra["modality"] == "voice" for u in manifest.head(5))


def test_pdf_is_votes_over_responses(by_id):
    row = _votes_row("1001_IEO_SAD_LO")
    votes = [float(row[c]) for c in "ADFHNS"]
    n = int(row["numResponses"])
    assert votes == [1, 1, 0, 0, 7, 1] and n == 10 and row["emoVote"] == "N"
    u = by_id["cremad/1001_IEO_SAD_LO"]
    np.testing.assert_allclose(u.pdf, np.asarray(votes) / n, atol=1e-6)
    assert u.votes == votes
    assert u.n_raters == n
    assert u.agreement == pytest.approx(float(row["agreement"]), abs=1e-6)
    assert u.label == "neutral"  # the raters' vote, not the intended SAD
    assert u.extra["intended"] == "sad" and u.extra["level"] == "LO" and u.extra["sentence"] == "IEO"
    assert u.speaker == "cremad/1001"
    assert u.duration is None  # no audio in the shared folder


def test_tied_vote_has_no_label(by_id, manifest):
    row = _votes_row("1001_IEO_ANG_MD")
    assert row["emoVote"] == "A:D"
    u = by_id["cremad/1001_IEO_ANG_MD"]
    assert u.label is None
    np.testing.assert_allclose(u.pdf, [5 / 12, 5 / 12, 0, 0, 1 / 12, 1 / 12], atol=1e-6)
    labels = manifest.column("label")
    assert 0 < labels.count(None) < len(labels) // 2


def test_gender_from_demographics(by_id):
    with open(ROOT / "VideoDemographics.csv", newline="") as f:
        demo = {r["ActorID"]: r for r in csv.DictReader(f)}
    assert demo["1091"]["Sex"] == "Female" and demo["1001"]["Sex"] == "Male"
    assert by_id["cremad/1091_WSI_SAD_XX"].gender == "female"
    assert by_id["cremad/1091_WSI_SAD_XX"].extra["age"] == int(demo["1091"]["Age"])
    assert by_id["cremad/1001_IEO_SAD_LO"].gender == "male"

