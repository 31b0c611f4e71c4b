"""The training reader's in-memory steps: the numpy window shuffle, length buckets and the collate."""

from __future__ import annotations

import numpy as np
import pytest

from ray_ser.datasets import bucketed, collate, window_shuffled


def chunks(n: int = 100, size: int = 16, ragged: bool = False):
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 9, n) if ragged else np.full(n, 5)
    for s in range(0, n, size):
        idx = np.arange(s, min(n, s + size))
        x = [np.full((lengths[i], 2), i, np.float16) for i in idx]
        xs = np.empty(len(x), dtype=object)
        xs[:] = x
        yield {"utt_id": np.array([f"u{i:03d}" for i in idx]), "n_frames": lengths[idx],
               "x": xs if ragged else np.stack(x), "label_index": idx % 3}


@pytest.mark.parametrize("ragged", [False, True])
def test_window_shuffle_yields_every_row_once_in_a_seeded_order(ragged):
    out = list(window_shuffled(chunks(ragged=ragged), np.random.default_rng(1)))
    ids = [u for c in out for u in c["utt_id"]]
    assert sorted(ids) == [f"u{i:03d}" for i in range(100)]
    # rows stay whole: x, n_frames and label travel with their utt_id
    for c in out:
        for u, x, n, y in zip(c["utt_id"], c["x"], c["n_frames"], c["label_index"]):
            i = int(u[1:])
            assert x.shape[0] == n and float(x[0, 0]) == i and y == i % 3
    again = [u for c in window_shuffled(chunks(ragged=ragged), np.random.default_rng(1)) for u in c["utt_id"]]
    other = [u for c in window_shuffled(chunks(ragged=ragged), np.random.default_rng(2)) for u in c["utt_id"]]
    assert again == ids and other != ids
    # rows leave their chunk: every yielded chunk mixes rows read in different chunks
    assert [len(c["utt_id"]) for c in out] == [16] * 5 + [4, 16]  # the held chunk comes last
    assert all(len({int(u[1:]) // 16 for u in c["utt_id"]}) > 1 for c in out)


def test_buckets_are_full_batches_of_similar_length():
    batches = list(bucketed(window_shuffled(chunks(ragged=True), np.random.default_rng(0)), 4, np.random.default_rng(0)))
    assert sum(len(b["utt_id"]) for b in batches) == 100
    spread = [int(np.ptp(b["n_frames"])) for b in batches]
    assert np.mean(spread) <= 2


def test_collate_equal_lengths_matches_the_padding_path():
    fixed = next(chunks())
    ragged = dict(fixed)
    xs = np.empty(len(fixed["x"]), dtype=object)
    xs[:] = list(fixed["x"])
    ragged["x"] = xs
    common = {"pdf": np.full((16, 3), 1 / 3), "dims": np.full((16, 3), np.nan), "domain": np.zeros(16, int)}
    a = collate({**fixed, **common})
    b = collate({**ragged, **common})
    assert a["x"].dtype == b["x"].dtype and a["x"].shape == (16, 5, 2)
    assert (a["x"] == b["x"]).all() and (a["lengths"] == b["lengths"]).all() and (a["lengths"] == 5).all()
    r = collate({**next(chunks(ragged=True)), **common})
    assert r["x"].shape[1] == int(r["lengths"].max()) and float(r["x"][0, int(r["lengths"][0]):].abs().sum()) == 0
