"""MSP-Podcast adapter on a small fixture written in the released layout (Audios/, Labels/*.csv)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import soundfile as sf

from ray_ser.corpora import build_manifest, msppodcast
from ray_ser.corpora.manifest import Manifest, ManifestError

CONSENSUS = """FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set
MSP-PODCAST_0153_0024.wav,O,4.0,3.6,4.2,31,Male,Test2
MSP-PODCAST_0001_0008.wav,H,5.2,5.6,4.8,127,Female,Train
MSP-PODCAST_0001_0011.wav,X,4.0,3.333333,4.166667,127,Female,Train
MSP-PODCAST_0002_0005.wav,A,6.0,2.0,5.5,Unknown,Unknown,Development
MSP-PODCAST_0153_0020.wav,N,3.6,4.0,4.0,31,Male,Test1
"""

# (file, worker, primary, secondary, A, V, D): one row per worker, as in labels_detailed.csv.
# 0001_0008: 3 Happy, 1 Neutral, 1 Other-Amused. 0001_0011: Sad/Neutral tie (2-2) -> X.
# 0002_0005 has no detailed rows (one-hot fallback); 0153_0024: plurality of Other-* answers.
RATINGS = [
    ("MSP-PODCAST_0001_0008.wav", "WORKER00000017", "Happy", "Excited,Amused", 5, 6, 5),
    ("MSP-PODCAST_0001_0008.wav", "WORKER00000023", "Happy", "", 6, 6, 5),
    ("MSP-PODCAST_0001_0008.wav", "WORKER00000104", "Happy", "Happy", 5, 5, 4),
    ("MSP-PODCAST_0001_0008.wav", "WORKER00000233", "Neutral", "Concerned", 5, 5, 5),
    ("MSP-PODCAST_0001_0008.wav", "WORKER00000377", "Other-Amused", "Amused", 5, 6, 5),
    ("MSP-PODCAST_0001_0011.wav", "WORKER00000017", "Sad", "Disappointed", 4, 3, 4),
    ("MSP-PODCAST_0001_0011.wav", "WORKER00000023", "Sad", "", 4, 3, 4),
    ("MSP-PODCAST_0001_0011.wav", "WORKER00000104", "Neutral", "", 4, 4, 4),
    ("MSP-PODCAST_0001_0011.wav", "WORKER00000233", "Neutral", "Concerned", 4, 4, 5),
    ("MSP-PODCAST_0001_0011.wav", "WORKER00000377", "Angry", "Annoyed,Frustrated", 4, 3, 4),
    ("MSP-PODCAST_0001_0011.wav", "WORKER00000412", "Contempt", "", 4, 3, 4),
    ("MSP-PODCAST_0153_0020.wav", "WORKER00000017", "Neutral", "", 4, 4, 4),
    ("MSP-PODCAST_0153_0020.wav", "WORKER00000023", "Neutral", "", 3, 4, 4),
    ("MSP-PODCAST_0153_0020.wav", "WORKER00000104", "Neutral", "Concerned", 4, 4, 4),
    ("MSP-PODCAST_0153_0020.wav", "WORKER00000233", "Neutral", "", 3, 4, 4),
    ("MSP-PODCAST_0153_0020.wav", "WORKER00000377", "Sad", "Depressed", 4, 4, 4),
    ("MSP-PODCAST_0153_0024.wav", "WORKER00000017", "Other-Concerned", "Concerned", 4, 3, 4),
    ("MSP-PODCAST_0153_0024.wav", "WORKER00000023", "Other", "Confused", 4, 4, 4),
    ("MSP-PODCAST_0153_0024.wav", "WORKER00000104", "Neutral", "", 4, 4, 5),
    ("MSP-PODCAST_0153_0024.wav", "WORKER00000233", "Other-Curious", "", 4, 4, 4),
    ("MSP-PODCAST_0153_0024.wav", "WORKER00000377", "Sad", "", 4, 3, 4),
]
DURATIONS = {"MSP-PODCAST_0001_0008.wav": 2.0, "MSP-PODCAST_0001_0011.wav": 1.25,
             "MSP-PODCAST_0153_0020.wav": 1.5}  # 0002_0005 and 0153_0024 have no audio
CATS = msppodcast.CATEGORIES  # angry sad happy surprise fear disgust contempt neutral other


def _write_packed(path):
    """Releases 1.7-1.12: FileName + one EmoDetail cell per worker."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["FileName", "EmoDetail"])
        for name, worker, primary, second, a, v, d in RATINGS:
            w.writerow([name, f"{worker}; {primary}; {second}; A:{a:.6f}; V:{v:.6f}; D:{d:.6f};"])


def _write_long(path):
    """Release 2.x (and 1.6): one column per field."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["FileName", "WorkerID", "EmoClass_Major", "EmoClass_Second", "EmoAct", "EmoVal", "EmoDom"])
        for name, worker, primary, second, a, v, d in RATINGS:
            w.writerow([name, worker, primary, second, float(a), float(v), float(d)])


def make_corpus(root, detailed="packed", consensus_name="labels_consensus.csv"):
    base = root / msppodcast.ROOT_DIR
    (base / "Labels").mkdir(parents=True)
    (base / "Audios").mkdir()
    (base / "Labels" / consensus_name).write_text(CONSENSUS)
    if detailed == "packed":
        _write_packed(base / "Labels" / "labels_detailed.csv")
    elif detailed == "long":
        _write_long(base / "Labels" / "labels_detailed.csv")
    for name, seconds in DURATIONS.items():
        sf.write(base / "Audios" / name, np.full(int(16000 * seconds), 0.01, np.float32), 16000)
    return base


def vec(**kw):
    return [kw.get(c, 0.0) for c in CATS]


@pytest.fixture
def manifest(tmp_path):
    make_corpus(tmp_path)
    return msppodcast.build(tmp_path)


def by_id(m: Manifest):
    return {u.utt_id: u for u in m}


def test_rows_speakers_gender_split(manifest, tmp_path):
    u = by_id(manifest)
    assert list(u) == sorted(u)  # sorted by file name
    assert set(u) == {"msppodcast/MSP-PODCAST_0001_0008", "msppodcast/MSP-PODCAST_0001_0011",
                      "msppodcast/MSP-PODCAST_0002_0005", "msppodcast/MSP-PODCAST_0153_0020",
                      "msppodcast/MSP-PODCAST_0153_0024"}
    h = u["msppodcast/MSP-PODCAST_0001_0008"]
    assert h.speaker == "msppodcast/127" and h.gender == "female" and h.split == "train"
    assert h.corpus == "msppodcast" and h.language == "en"
    assert h.path == str(tmp_path / "msp-podcast" / "Audios" / "MSP-PODCAST_0001_0008.wav")
    assert u["msppodcast/MSP-PODCAST_0153_0020"].speaker == "msppodcast/31"
    assert u["msppodcast/MSP-PODCAST_0153_0020"].gender == "male"
    assert u["msppodcast/MSP-PODCAST_0153_0020"].split == "test1"
    assert u["msppodcast/MSP-PODCAST_0153_0024"].split == "test2"
    unk = u["msppodcast/MSP-PODCAST_0002_0005"]
    assert unk.speaker == "msppodcast/unknown-MSP-PODCAST_0002_0005"
    assert unk.gender is None and unk.split == "dev" and unk.extra["speaker_known"] is False


def test_durations_from_audio_header_or_none(manifest):
    u = by_id(manifest)
    assert u["msppodcast/MSP-PODCAST_0001_0008"].duration == pytest.approx(2.0)
    assert u["msppodcast/MSP-PODCAST_0001_0011"].duration == pytest.approx(1.25)
    assert u["msppodcast/MSP-PODCAST_0153_0020"].duration == pytest.approx(1.5)
    assert u["msppodcast/MSP-PODCAST_0002_0005"].duration is None
    assert u["msppodcast/MSP-PODCAST_0153_0024"].duration is None


def test_votes_pdf_agreement(manifest):
    u = by_id(manifest)
    h = u["msppodcast/MSP-PODCAST_0001_0008"]
    assert h.label == "happy" and h.n_raters == 5
    assert h.votes == vec(happy=3, neutral=1, other=1)
    assert h.pdf == pytest.approx(vec(happy=0.6, neutral=0.2, other=0.2), abs=1e-6)
    assert h.agreement == pytest.approx(0.6)

    tie = u["msppodcast/MSP-PODCAST_0001_0011"]  # X: Sad 2, Neutral 2, Angry 1, Contempt 1
    assert tie.label is None and tie.agreement is None and tie.n_raters == 6
    assert tie.votes == vec(sad=2, neutral=2, angry=1, contempt=1)
    assert tie.pdf == pytest.approx(vec(sad=1 / 3, neutral=1 / 3, angry=1 / 6, contempt=1 / 6), abs=1e-6)
    assert tie.extra["emo_class"] == "X"

    n = u["msppodcast/MSP-PODCAST_0153_0020"]
    assert n.label == "neutral" and n.votes == vec(neutral=4, sad=1) and n.agreement == pytest.approx(0.8)

    o = u["msppodcast/MSP-PODCAST_0153_0024"]  # Other, Other-Concerned, Other-Curious all count as other
    assert o.label == "other" and o.votes == vec(other=3, neutral=1, sad=1) and o.agreement == pytest.approx(0.6)

    one_hot = u["msppodcast/MSP-PODCAST_0002_0005"]  # no detailed rows: one-hot on the consensus class
    assert one_hot.label == "angry" and one_hot.pdf == vec(angry=1.0)
    assert one_hot.votes is None and one_hot.n_raters is None and one_hot.agreement is None


def test_dimensions_means_from_consensus_std_from_workers(manifest):
    h = by_id(manifest)["msppodcast/MSP-PODCAST_0001_0008"]
    assert (h.arousal, h.valence, h.dominance) == pytest.approx((5.2, 5.6, 4.8), abs=1e-6)
    # A: 5 6 5 5 5, V: 6 6 5 5 6, D: 5 5 4 5 5 -> population std
    assert h.arousal_std == pytest.approx(0.4, abs=1e-6)
    assert h.valence_std == pytest.approx(math.sqrt(0.24), abs=1e-6)
    assert h.dominance_std == pytest.approx(0.4, abs=1e-6)
    tie = by_id(manifest)["msppodcast/MSP-PODCAST_0001_0011"]
    assert tie.arousal_std == 0.0
    assert tie.valence == pytest.approx(3.333333, abs=1e-6)
    unk = by_id(manifest)["msppodcast/MSP-PODCAST_0002_0005"]
    assert (unk.arousal, unk.valence, unk.dominance) == pytest.approx((6.0, 2.0, 5.5))
    assert unk.arousal_std is None and unk.valence_std is None and unk.dominance_std is None


def test_long_detailed_format_gives_the_same_manifest(tmp_path):
    packed = msppodcast.build(make_corpus(tmp_path / "a").parent)
    long = msppodcast.build(make_corpus(tmp_path / "b", detailed="long").parent)
    strip = lambda m: [{**u.to_dict(), "path": None} for u in m]  # noqa: E731
    assert strip(packed) == strip(long)


def test_without_detailed_labels_pdf_is_one_hot(tmp_path):
    make_corpus(tmp_path, detailed=None)
    u = by_id(msppodcast.build(tmp_path))
    assert u["msppodcast/MSP-PODCAST_0001_0008"].pdf == vec(happy=1.0)
    assert u["msppodcast/MSP-PODCAST_0001_0008"].votes is None
    assert u["msppodcast/MSP-PODCAST_0001_0008"].arousal_std is None
    assert u["msppodcast/MSP-PODCAST_0001_0011"].pdf is None  # X and nothing to count


def test_old_consensus_spelling_and_shared_unknown_speaker(tmp_path):
    make_corpus(tmp_path, consensus_name="labels_concensus.csv")
    m = msppodcast.build(tmp_path, unknown_speakers="shared")
    assert by_id(m)["msppodcast/MSP-PODCAST_0002_0005"].speaker == "msppodcast/unknown"


def test_registry_and_round_trip(tmp_path):
    make_corpus(tmp_path)
    m = build_manifest("msppodcast", tmp_path)
    assert m.categories == CATS
    back = Manifest.read(m.write(tmp_path / "out" / "msppodcast.parquet"))
    assert back.categories == CATS
    assert back.table.equals(m.table)
    assert [u.to_dict() for u in back] == [u.to_dict() for u in m]


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="labels_consensus.csv"):
        msppodcast.build(tmp_path)
    base = make_corpus(tmp_path)
    (base / "Labels" / "labels_consensus.csv").write_text(CONSENSUS.replace(",N,3.6", ",Q,3.6"))
    with pytest.raises(ManifestError, match=r"labels_consensus.csv line 6 \(MSP-PODCAST_0153_0020.wav\).*'Q'"):
        msppodcast.build(tmp_path)
    (base / "Labels" / "labels_consensus.csv").write_text(CONSENSUS)
    with open(base / "Labels" / "labels_detailed.csv", "a") as f:
        f.write('MSP-PODCAST_0001_0008.wav,"WORKER9; Happy; ; A:x; V:1; D:1;"\n')
    with pytest.raises(ManifestError, match=r"labels_detailed.csv line 23 \(MSP-PODCAST_0001_0008.wav\)"):
        msppodcast.build(tmp_path)
