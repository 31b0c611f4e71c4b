"""ASED adapter on the real corpus (skipped when the data root has no ased/)."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from ray_ser.corpora import ased, build_manifest
from ray_ser.settings import data_root

ROOT = data_root() / "ased"
pytestmark = pytest.mark.skipif(not (ROOT / "01Neutral").is_dir(), reason=f"ASED not found under {ROOT}")


@pytest.fixture(scope="module")
def manifest():
    return build_manifest("ased")


def test_size_speakers_genders_classes(manifest):
    assert len(manifest) == 2474 and not manifest.rejected
    assert manifest.categories == ["neutral", "fear", "happy", "sad", "angry"]
    assert Counter(manifest.column("label")) == {"neutral": 522, "fear": 510, "happy": 486, "sad": 470, "angry": 486}
    speakers = dict((u.speaker, u.gender) for u in manifest)
    assert len(speakers) == 65
    assert Counter(speakers.values()) == {"male": 40, "female": 25}
    assert set(manifest.column("language")) == {"am"}
    assert 2.0 <= min(manifest.column("duration")) and max(manifest.column("duration")) < 4.0


def test_file_name_fields_and_soft_target(manifest):
    by_id = {u.utt_id: u for u in manifest}
    u = by_id["ased/a5-03-01-02-50"]
    assert (u.label, u.speaker, u.gender, u.extra["sentence"], u.extra["take"]) == ("angry", "ased/50", "male", "03", "01")
    assert u.pdf[manifest.categories.index("angry")] == pytest.approx(0.8)
    assert sum(u.pdf) == pytest.approx(1.0)
    upper = [x for x in manifest if x.path.rsplit("/", 1)[1][0].isupper()]
    assert len(upper) == 1 and upper[0].label == "sad"  # the one upper-case file name is read like the others


def test_speaker_majority_gender_and_logged_disagreements(caplog):
    with caplog.at_level(logging.WARNING, logger="ray_ser.corpora.ased"):
        m = build_manifest("ased")
    odd = {u.speaker: u for u in m if "gender_code" in u.extra}
    assert sorted(odd) == ["ased/09", "ased/15", "ased/21", "ased/23", "ased/25"]
    for spk, u in odd.items():
        assert u.extra["gender_code"] == "02" and u.gender == "female"  # the speaker's other files say 01
        assert all(x.gender == "female" for x in m if x.speaker == spk)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 5 and all("disagrees" in w for w in warned)


def test_bad_names_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="x1-01: not"):
        ased.parse_name("x1-01")
    with pytest.raises(ValueError, match="gender code '03'"):
        ased.parse_name("a5-03-01-03-50")
    assert ased.parse_name("S4-01-02-01-09")["emotion"] == "sad"
