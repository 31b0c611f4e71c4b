"""A synthetic store of dimensional corpora written straight into LanceDB (no audio, no model), for the
dimension-only and mixed runs: every utterance's frames lie along one direction by its arousal (a latent level in
[-1, 1]) plus a speaker shift and noise, and each corpus writes that level on its own scale.

- ``aro3``: arousal only, on 1-3 (as RAVDESS's intensity: 1 neutral, 2 normal, 3 strong), no category;
- ``aro5``: arousal only, on 1-5, fewer speakers (the zero-shot corpus);
- ``mixed``: categories calm/excited, some rows with a label and arousal (1-7), some with a label alone, some
  with arousal alone (MSP-Podcast's rows without a consensus category).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from multicorpus import frame_row

from ray_ser.corpora.labels import one_hot
from ray_ser.corpora.manifest import Manifest, Utterance
from ray_ser.store.core import Store

MODEL = "synthetic"
DIM = 12
LEVELS = (-1.0, 0.0, 1.0)
SCALES = {"aro3": (1.0, 3.0), "aro5": (1.0, 5.0), "mixed": (1.0, 7.0)}
"""The scale each corpus writes arousal on: level -1 is the low end, +1 the high end."""


def _frames(rng, direction, level, spk_shift, cond, T):
    noise = 0.7 if cond == "clean" else 1.2
    return level * direction + spk_shift + noise * rng.standard_normal((T, DIM))


def build_dims_store(root: Path, per_level: int = 4, conditions=("clean", "5dB"), seed: int = 0,
                     speakers: dict[str, int] | None = None) -> str:
    """The store under ``root/store`` (returns its URI): the three corpora's manifests and ``emb__synthetic`` with two
    layers (layer 1 is layer 0 plus noise), frames on."""
    speakers = speakers or {"aro3": 6, "aro5": 3, "mixed": 5}
    rng = np.random.default_rng(seed)
    direction = 1.5 * rng.standard_normal(DIM)
    store = Store(str(root / "store"))
    rows = []
    for corpus, n_spk in speakers.items():
        lo, hi = SCALES[corpus]
        cats = ["calm", "excited"] if corpus == "mixed" else []
        utts = []
        for s in range(n_spk):
            spk_shift = 0.4 * rng.standard_normal(DIM)
            for j, level in enumerate(LEVELS):
                for i in range(per_level):
                    uid = f"{corpus}/s{s}_l{j}_{i}"
                    value = lo + (level + 1) / 2 * (hi - lo)
                    label = aro = None
                    if corpus == "mixed":
                        label = "excited" if level > 0 or (level == 0 and i % 2) else "calm"
                        kind = i % 3  # 0: both, 1: label alone, 2: arousal alone
                        aro = None if kind == 1 else value
                        label = None if kind == 2 else label
                    else:
                        aro = value
                    utts.append(Utterance(utt_id=uid, path=f"/nowhere/{uid}.wav", speaker=f"{corpus}/s{s}",
                                          corpus=corpus, duration=1.0, gender="female" if s % 2 else "male",
                                          label=label, pdf=None if label is None else one_hot(label, cats).tolist(),
                                          arousal=aro))
                    for cond in conditions:
                        T = int(rng.integers(5, 9))
                        base = _frames(rng, direction, level, spk_shift, cond, T)
                        for layer in (0, 1):
                            x = (base if layer == 0 else base + 0.5 * rng.standard_normal((T, DIM))).astype(np.float32)
                            rows.append(frame_row(uid, cond, layer, x))
        store.put_manifest(Manifest.from_utterances(utts, cats))
    table = store.embeddings(MODEL, dim=DIM, meta={"model": MODEL})
    table.add(pa.Table.from_pylist(rows, schema=table.schema))
    return store.uri
