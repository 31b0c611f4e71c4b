"""Corpus-balanced sampling and the per-corpus standardisation of frames, on arrays (no store, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from ray_ser.train.loop import balanced_draw
from ray_ser.train.reader import ragged, standardise


def chunks(counts: dict[str, int], size: int = 50):
    ids = [f"{c}/{i}" for c, n in counts.items() for i in range(n)]
    corpus = [u.split("/")[0] for u in ids]
    for i in range(0, len(ids), size):
        yield {"utt_id": np.array(ids[i:i + size], dtype=object), "corpus": np.array(corpus[i:i + size], dtype=object),
               "x": ragged([np.zeros((2, 3))] * len(ids[i:i + size]))}


def test_every_corpus_gives_an_epoch_about_as_many_utterances_as_the_smallest():
    counts = {"small": 200, "large": 2000, "mid": 800}
    per_epoch = []
    for epoch in range(5):
        kept = [u for c in balanced_draw(chunks(counts), counts, seed=0, epoch=epoch) for u in c["utt_id"]]
        got = {k: sum(u.startswith(k + "/") for u in kept) for k in counts}
        assert got["small"] == 200  # the smallest corpus is kept whole
        assert got["large"] == pytest.approx(200, abs=45) and got["mid"] == pytest.approx(200, abs=45)
        per_epoch.append(set(kept))
    assert per_epoch[0] != per_epoch[1]  # a fresh draw each epoch ...
    again = {u for c in balanced_draw(chunks(counts), counts, seed=0, epoch=0) for u in c["utt_id"]}
    assert again == per_epoch[0]  # ... and the same draw on every worker and after a resume


def test_frames_are_standardised_by_their_own_corpus():
    rng = np.random.default_rng(0)
    a = rng.normal(5.0, 2.0, (300, 4))
    b = rng.normal(-3.0, 0.5, (200, 4))
    frames = np.vstack([a[:100], b[:50], a[100:], b[50:]]).astype(np.float16)
    lengths = np.array([100, 50, 200, 150])
    corpora = ["a", "b", "a", "b"]
    scale = {"a": [a.mean(0), a.std(0)], "b": [b.mean(0), b.std(0)]}
    out = standardise(frames, lengths, corpora, scale).astype(np.float64)
    rows_a = np.r_[0:100, 150:350]
    rows_b = np.r_[100:150, 350:500]
    for rows in (rows_a, rows_b):
        assert np.abs(out[rows].mean(0)).max() < 0.02 and np.abs(out[rows].std(0) - 1).max() < 0.02
    with pytest.raises(ValueError, match="no scaler for corpus b"):
        standardise(frames, lengths, corpora, {"a": scale["a"]})
