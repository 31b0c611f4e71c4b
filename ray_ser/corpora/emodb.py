"""EmoDB (Burkhardt et al. 2005): 535 acted German utterances, 10 speakers, 7 emotions, a 20-listener test.

File names are ``SSTTTEV.wav`` (speaker, text, emotion letter, version). ``erkennung.txt`` (Latin-1, tab
separated, decimal commas) gives each file's recognition rate and naturalness in percent; the rate becomes
the intended category's probability and the rest is spread by a :class:`~ray_ser.corpora.labels.Smoothing`
rule, since the perception test does not say what the other listeners chose.
"""

from __future__ import annotations

from pathlib import Path

from ray_ser.corpora.labels import Smoothing, smoothed
from ray_ser.corpora.manifest import Manifest, Utterance, read_duration

NAME = "emodb"
EMOTIONS = {"W": "angry", "L": "bored", "E": "disgust", "A": "fear", "F": "happy", "T": "sad", "N": "neutral"}
CATEGORIES = ["angry", "bored", "disgust", "fear", "happy", "sad", "neutral"]
SPEAKERS = {  # id: (gender, age), from the corpus documentation
    "03": ("male", 31), "08": ("female", 34), "09": ("female", 21), "10": ("male", 32), "11": ("male", 26),
    "12": ("male", 30), "13": ("female", 32), "14": ("female", 35), "15": ("male", 25), "16": ("female", 31),
}
LISTENERS = 20


def read_perception_test(path: Path) -> dict[str, tuple[float, float]]:
    """file name -> (recognition rate, naturalness), both as fractions in [0, 1]."""
    out: dict[str, tuple[float, float]] = {}
    for line in path.read_text(encoding="latin-1").splitlines()[1:]:
        parts = [p.replace("\xa0", " ").strip() for p in line.split("\t")]
        if len(parts) < 4 or not parts[1].endswith(".wav"):
            continue
        rate, natural = (float(p.replace(",", ".")) / 100.0 for p in parts[2:4])
        out[parts[1]] = (rate, natural)
    return out


def build(data_root: Path, smoothing: Smoothing | str = Smoothing.UNIFORM, **_: object) -> Manifest:
    """Manifest of every ``wav/*.wav`` under ``data_root/emodb``."""
    root = Path(data_root) / NAME
    wavs = sorted((root / "wav").glob("*.wav"))
    if not wavs:
        raise FileNotFoundError(f"no EmoDB wav files under {root / 'wav'} (get EmoDB from emodb.bilderbar.info)")
    test = read_perception_test(root / "erkennung.txt") if (root / "erkennung.txt").exists() else {}
    utts = []
    for wav in wavs:
        name = wav.name
        spk, text, letter = name[0:2], name[2:5], name[5]
        label = EMOTIONS[letter]
        gender, age = SPEAKERS[spk]
        rate, natural = test.get(name, (None, None))
        pdf = smoothed(label, CATEGORIES, rate, smoothing) if rate is not None else smoothed(label, CATEGORIES, 1.0, smoothing)
        extra = {"text": text, "version": name[6], "age": age, "naturalness": natural}
        utts.append(
            Utterance(
                utt_id=f"emodb/{wav.stem}", path=str(wav), speaker=f"emodb/{spk}", corpus=NAME,
                duration=read_duration(str(wav), extra), gender=gender, language="de", label=label,
                pdf=pdf.tolist(), n_raters=LISTENERS if rate is not None else None, agreement=rate,
                extra=extra,
            )
        )
    return Manifest.from_utterances(utts, CATEGORIES)
