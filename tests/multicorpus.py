"""A synthetic store of three corpora with different category lists and a planted per-corpus shift, written
straight into LanceDB (no audio, no model), for the cross-corpus tests: every class has its own mean frame shared
by all corpora, and each corpus adds its own offset and scale to every frame, as recording conditions and
languages do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from ray_ser.corpora.labels import smoothed
from ray_ser.corpora.manifest import Manifest, Utterance
from ray_ser.store.core import Store

MODEL = "synthetic"
DIM = 12
CORPORA = {  # name: (categories, speakers, offset, scale)
    "alpha": (["angry", "happy", "neutral", "sad", "fear"], 6, 0.0, 1.0),
    "beta": (["neutral", "calm", "happy", "sad", "angry", "disgust"], 6, 4.0, 3.0),
    "gamma": (["angry", "happy", "neutral", "sad"], 6, -4.0, 0.5),
}
SHARED_CLASSES = ["angry", "happy", "neutral", "sad", "fear", "disgust", "calm"]


def frame_row(uid: str, cond: str, layer: int, x: np.ndarray) -> dict:
    """One ``emb__synthetic`` row of an utterance's (T, DIM) float32 frames ``x`` (5 dB SNR when not clean)."""
    return {"utt_id": uid, "condition": cond, "layer": layer, "n_frames": len(x), "duration": 1.0,
            "snr_db": None if cond == "clean" else 5.0, "rt60": None, "mean": x.mean(0).tolist(),
            "std": x.std(0).tolist(), "frames": x.astype(np.float16).tolist(), "aug_params": None}


def _centres(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = {name: 1.5 * rng.standard_normal(DIM) for name in SHARED_CLASSES}
    c["calm"] = c["neutral"] + 0.2 * rng.standard_normal(DIM)  # harmonised into neutral
    return c


def build_multi_store(root: Path, per_class: int = 3, conditions=("clean", "5dB"), seed: int = 0,
                      corpora: dict | None = None, arousal: dict[str, bool] | None = None) -> str:
    """The store under ``root/store`` (returns its URI): manifests of every corpus and ``emb__synthetic`` with
    two layers (layer 1 is layer 0 plus noise), frames on. ``arousal``: corpora whose manifests carry arousal."""
    corpora = corpora or CORPORA
    rng = np.random.default_rng(seed)
    centres = _centres(seed)
    store = Store(str(root / "store"))
    rows = []
    for corpus, (cats, n_spk, offset, scale) in corpora.items():
        utts = []
        for s in range(n_spk):
            spk_shift = 0.3 * rng.standard_normal(DIM)
            for c in cats:
                for i in range(per_class):
                    uid = f"{corpus}/s{s}_{c}_{i}"
                    aro = None
                    if arousal and arousal.get(corpus):
                        aro = float({"angry": 6.0, "happy": 5.0, "fear": 5.5}.get(c, 2.5) + 0.3 * rng.standard_normal())
                    utts.append(Utterance(utt_id=uid, path=f"/nowhere/{uid}.wav", speaker=f"{corpus}/s{s}",
                                          corpus=corpus, duration=1.0, gender="female" if s % 2 else "male",
                                          label=c, pdf=smoothed(c, cats, 0.8, "uniform").tolist(), arousal=aro))
                    for cond in conditions:
                        noise = 0.8 if cond == "clean" else 1.4
                        T = int(rng.integers(5, 9))
                        base = centres[c] + spk_shift + noise * rng.standard_normal((T, DIM))
                        for layer in (0, 1):
                            x = base if layer == 0 else base + 0.5 * rng.standard_normal((T, DIM))
                            rows.append(frame_row(uid, cond, layer, (offset + scale * x).astype(np.float32)))
        store.put_manifest(Manifest.from_utterances(utts, cats))
    table = store.embeddings(MODEL, dim=DIM, meta={"model": MODEL})
    table.add(pa.Table.from_pylist(rows, schema=table.schema))
    return store.uri
