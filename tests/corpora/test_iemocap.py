"""IEMOCAP adapter on EmoEvaluation files written in the released layout (SessionN/dialog/EmoEvaluation)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from ray_ser.corpora import build_manifest, iemocap
from ray_ser.corpora.manifest import Manifest, ManifestError

HEAD = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"

# Session 1, improvised: a unanimous neutral, a frustrated turn with a double pick, and a 3-way tie (xxx).
IMPRO = HEAD + (
    "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\n"
    "C-E2:\tNeutral;\t()\n"
    "C-E3:\tNeutral;\t()\n"
    "C-E4:\tNeutral;\t()\n"
    "C-F1:\tNeutral;\t(curious)\n"
    "A-E3:\tval 3; act 2; dom  2;\t()\n"
    "A-E4:\tval 2; act 3; dom  3;\t(mildly aggravated but staying polite, attitude)\n"
    "A-F1:\tval 3; act 2; dom  1;\t()\n"
    "\n"
    "[10.0100 - 11.3925]\tSes01F_impro01_M001\tfru\t[2.0000, 3.5000, 3.5000]\n"
    "C-E1:\tFrustration; Anger;\t()\n"
    "C-E2:\tFrustration;\t(annoyed)\n"
    "C-E3:\tNeutral state;\t()\n"
    "C-M1:\tAnger;\t()\n"
    "A-E1:\tval 2; act 3; dom  3;\t()\n"
    "A-E2:\tval 2; act 4; dom  4;\t()\n"
    "A-M1:\tval 1; act 4; dom  4;\t()\n"
    "\n"
    "[14.8872 - 18.0175]\tSes01F_impro01_F002\txxx\t[2.5000, 3.0000, 3.0000]\n"
    "C-E1:\tHappiness;\t()\n"
    "C-E2:\tExcited;\t()\n"
    "C-E3:\tOther;\t(amused)\n"
    "A-E1:\tval 3; act 3; dom  3;\t()\n"
    "A-E2:\tval 2; act 3; dom  3;\t()\n"
    "\n"
)

# Session 2, scripted (dialog name carries the take: Ses02M_script01_1).
SCRIPTED = HEAD + (
    "[3.1000 - 6.6000]\tSes02M_script01_1_F003\tsad\t[1.5000, 2.0000, 2.5000]\n"
    "C-E1:\tSadness;\t()\n"
    "C-E2:\tSadness;\t()\n"
    "C-E4:\tSadness; Frustration;\t()\n"
    "C-F1:\tSadness;\t()\n"
    "A-E1:\tval 1; act 2; dom  2;\t()\n"
    "A-E2:\tval 2; act 2; dom  3;\t()\n"
    "A-F1:\tval 1; act 1; dom  2;\t()\n"
    "\n"
    "[7.0000 - 9.2500]\tSes02M_script01_1_M004\tang\t[1.0000, 4.5000, 4.0000]\n"
    "C-E1:\tAnger;\t()\n"
    "C-E2:\tAnger; Disgust;\t()\n"
    "C-E3:\tFear;\t()\n"
    "A-E1:\tval 1; act 5; dom  4;\t()\n"
    "A-E2:\tval 1; act 4; dom  4;\t()\n"
    "\n"
)
CATS = iemocap.CATEGORIES  # neutral happy excited sad angry frustrated surprise fear disgust other


def vec(**kw):
    return [pytest.approx(kw.get(c, 0.0), abs=1e-6) for c in CATS]


def make_corpus(root):
    base = root / iemocap.ROOT_DIR
    for session, dialog, text in ((1, "Ses01F_impro01", IMPRO), (2, "Ses02M_script01_1", SCRIPTED)):
        evals = base / f"Session{session}" / "dialog" / "EmoEvaluation"
        (evals / "Categorical").mkdir(parents=True)
        (evals / f"{dialog}.txt").write_text(text)
        # the per-evaluator subfolders and macOS resource forks are not summary files
        (evals / "Categorical" / f"{dialog}_e2_cat.txt").write_text("Ses01F_impro01_F000 :Neutral; ()\n")
        (evals / f"._{dialog}.txt").write_bytes(b"\x00\x05\x16\x07junk")
        (base / f"Session{session}" / "sentences" / "wav" / dialog).mkdir(parents=True)
    wav = base / "Session1" / "sentences" / "wav" / "Ses01F_impro01"
    for utt in ("Ses01F_impro01_F000", "Ses01F_impro01_M001"):  # F002 is missing on disk
        sf.write(wav / f"{utt}.wav", np.full(8000, 0.01, np.float32), 16000)
    return base


@pytest.fixture
def manifest(tmp_path):
    make_corpus(tmp_path)
    return iemocap.build(tmp_path)


def by_id(m: Manifest):
    return {u.utt_id.split("/", 1)[1]: u for u in m}


def test_turns_speakers_gender_paths(manifest, tmp_path):
    u = by_id(manifest)
    assert sorted(u) == ["Ses01F_impro01_F000", "Ses01F_impro01_F002", "Ses01F_impro01_M001",
                         "Ses02M_script01_1_F003", "Ses02M_script01_1_M004"]
    speakers = {k: (v.speaker, v.gender) for k, v in u.items()}
    assert speakers == {
        "Ses01F_impro01_F000": ("iemocap/Ses01F", "female"),
        "Ses01F_impro01_M001": ("iemocap/Ses01M", "male"),
        "Ses01F_impro01_F002": ("iemocap/Ses01F", "female"),
        "Ses02M_script01_1_F003": ("iemocap/Ses02F", "female"),
        "Ses02M_script01_1_M004": ("iemocap/Ses02M", "male"),
    }
    f000 = u["Ses01F_impro01_F000"]
    assert f000.path == str(tmp_path / "IEMOCAP_full_release" / "Session1" / "sentences" / "wav"
                            / "Ses01F_impro01" / "Ses01F_impro01_F000.wav")
    assert u["Ses02M_script01_1_M004"].path.endswith("Session2/sentences/wav/Ses02M_script01_1/Ses02M_script01_1_M004.wav")
    assert f000.corpus == "iemocap" and f000.language == "en"


def test_duration_and_extra_from_header(manifest):
    u = by_id(manifest)
    assert u["Ses01F_impro01_F000"].duration == pytest.approx(8.2357 - 6.2901)
    assert u["Ses01F_impro01_F002"].duration == pytest.approx(18.0175 - 14.8872)  # no audio on disk, still known
    assert u["Ses01F_impro01_M001"].extra == {
        "session": 1, "dialog": "Ses01F_impro01", "start": 10.01, "end": 11.3925, "mode": "improvised",
        "emo_code": "fru", "self_categories": ["angry"], "self_vad": [1.0, 4.0, 4.0],
    }
    s = u["Ses02M_script01_1_F003"].extra
    assert (s["session"], s["dialog"], s["mode"], s["start"], s["end"]) == (2, "Ses02M_script01_1", "scripted", 3.1, 6.6)


def test_votes_with_split_picks_pdf_agreement(manifest):
    u = by_id(manifest)
    neu = u["Ses01F_impro01_F000"]  # three external evaluators, C-F1 (self) does not vote
    assert neu.label == "neutral" and neu.n_raters == 3 and neu.agreement == pytest.approx(1.0)
    assert neu.votes == vec(neutral=3) and neu.pdf == vec(neutral=1)

    fru = u["Ses01F_impro01_M001"]  # "Frustration; Anger;" gives half a vote each; "Neutral state" is neutral
    assert fru.label == "frustrated" and fru.n_raters == 3
    assert fru.votes == vec(frustrated=1.5, angry=0.5, neutral=1)
    assert fru.pdf == vec(frustrated=0.5, angry=1 / 6, neutral=1 / 3)
    assert fru.agreement == pytest.approx(0.5)

    tie = u["Ses01F_impro01_F002"]  # xxx: no majority
    assert tie.label is None and tie.agreement is None and tie.n_raters == 3
    assert tie.votes == vec(happy=1, excited=1, other=1)
    assert tie.pdf == vec(happy=1 / 3, excited=1 / 3, other=1 / 3)

    sad = u["Ses02M_script01_1_F003"]
    assert sad.label == "sad" and sad.votes == vec(sad=2.5, frustrated=0.5)
    assert sad.agreement == pytest.approx(2.5 / 3)

    ang = u["Ses02M_script01_1_M004"]
    assert ang.label == "angry" and ang.pdf == vec(angry=0.5, disgust=1 / 6, fear=1 / 3)


def test_dimensions_header_order_is_valence_arousal_dominance(manifest):
    u = by_id(manifest)
    fru = u["Ses01F_impro01_M001"]  # [V, A, D] = [2.0, 3.5, 3.5]; A-E val 2,2 act 3,4 dom 3,4
    assert (fru.valence, fru.arousal, fru.dominance) == pytest.approx((2.0, 3.5, 3.5))
    assert (fru.valence_std, fru.arousal_std, fru.dominance_std) == pytest.approx((0.0, 0.5, 0.5))
    sad = u["Ses02M_script01_1_F003"]  # [1.5, 2.0, 2.5]; A-E val 1,2 act 2,2 dom 2,3; A-F1 ignored
    assert (sad.valence, sad.arousal, sad.dominance) == pytest.approx((1.5, 2.0, 2.5))
    assert (sad.valence_std, sad.arousal_std, sad.dominance_std) == pytest.approx((0.5, 0.0, 0.5))
    ang = u["Ses02M_script01_1_M004"]
    assert (ang.valence, ang.arousal, ang.dominance) == pytest.approx((1.0, 4.5, 4.0))
    assert (ang.valence_std, ang.arousal_std, ang.dominance_std) == pytest.approx((0.0, 0.5, 0.0))


def test_include_scripted_false_keeps_improvised_only(tmp_path):
    make_corpus(tmp_path)
    m = iemocap.build(tmp_path, include_scripted=False)
    assert sorted(by_id(m)) == ["Ses01F_impro01_F000", "Ses01F_impro01_F002", "Ses01F_impro01_M001"]
    assert {u.extra["mode"] for u in m} == {"improvised"}


def test_unrecognised_category_counts_as_other(tmp_path):
    base = make_corpus(tmp_path)
    f = base / "Session2" / "dialog" / "EmoEvaluation" / "Ses02M_script01_1.txt"
    f.write_text(SCRIPTED.replace("C-E3:\tFear;", "C-E3:\tBored;"))
    ang = by_id(iemocap.build(tmp_path))["Ses02M_script01_1_M004"]
    assert ang.votes == vec(angry=1.5, disgust=0.5, other=1) and ang.extra["unmapped"] == ["Bored"]


def test_registry_and_round_trip(tmp_path):
    make_corpus(tmp_path)
    m = build_manifest("iemocap", tmp_path, include_scripted=True)
    assert len(m) == 5 and m.categories == CATS
    back = Manifest.read(m.write(tmp_path / "iemocap.parquet"))
    assert back.categories == CATS and back.table.equals(m.table)
    assert [u.to_dict() for u in back] == [u.to_dict() for u in m]


def test_errors_name_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="EmoEvaluation"):
        iemocap.build(tmp_path)
    base = make_corpus(tmp_path)
    f = base / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    f.write_text(IMPRO.replace("[10.0100 - 11.3925]\tSes01F_impro01_M001\tfru\t[2.0000, 3.5000, 3.5000]",
                               "[10.0100 - 11.3925]\tSes01F_impro01_M001\tfru\t[2.0000, 3.5000]"))
    with pytest.raises(ManifestError, match=r"Ses01F_impro01.txt line 12: malformed turn header"):
        iemocap.build(tmp_path)
    f.write_text(IMPRO.replace("\tfru\t", "\tzzz\t"))
    with pytest.raises(ManifestError, match=r"Ses01F_impro01.txt line 12 \(Ses01F_impro01_M001\): unknown category"):
        iemocap.build(tmp_path)
