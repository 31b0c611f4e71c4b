"""The training reader's in-memory steps: the numpy window shuffle, the shard cache, length buckets and the collate."""

from __future__ import annotations

import numpy as np
import pytest

from ray_ser.train.reader import (
    InMemorySource,
    ShardCache,
    _concat,
    bucketed,
    collate,
    window_shuffled,
)


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


def test_collate_casts_mixed_dtypes_and_never_returns_a_view_of_the_rows():
    common = {"pdf": np.full((2, 3), 1 / 3), "dims": np.full((2, 3), np.nan), "domain": np.zeros(2, int),
              "label_index": np.zeros(2, int)}
    rows = np.empty(2, dtype=object)
    rows[:] = [np.full((3, 2), 0.1, np.float32), np.full((2, 2), 0.5, np.float16)]
    x = collate({"x": rows, **common})["x"]
    assert x.dtype.is_floating_point and x.dtype.itemsize == 4
    np.testing.assert_array_equal(x[0].numpy(), np.full((3, 2), 0.1, np.float32))  # float32 rows are not rounded
    assert x[1, 2].abs().sum() == 0 and float(x[1, 0, 0]) == 0.5
    same = np.zeros((2, 3, 2), np.float32)
    collate({"x": same, **common})["x"][:] = 7.0
    assert not same.any()  # a cached float32 batch is copied, not handed out


def test_in_memory_source_reads_back_its_records_in_order():
    records = [{"utt_id": f"u{i}", "x": np.full((i + 1, 2), i, np.float16), "label_index": i} for i in range(5)]
    src = InMemorySource.from_records(records)
    assert len(src) == 5 and src.rows["x"].dtype == object
    batches = list(src.iter_batches(2))
    assert [list(b["utt_id"]) for b in batches] == [["u0", "u1"], ["u2", "u3"], ["u4"]]
    cached = next(ShardCache(1 << 20).chunks(src, 5))
    assert [len(a) for a in cached["x"]] == [1, 2, 3, 4, 5] and list(cached["label_index"]) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="different lengths"):
        InMemorySource({"utt_id": np.array(["a", "b"]), "label_index": np.zeros(3)})


class CountingSource:
    """iter_batches over fixed chunks, counting full reads (a stand-in for a Ray DataIterator)."""

    def __init__(self, ragged: bool = True):
        self.reads = 0
        self.ragged = ragged

    def iter_batches(self, batch_size: int, batch_format: str = "numpy"):
        self.reads += 1
        yield from chunks(100, batch_size, ragged=self.ragged)


def test_shard_cache_reads_once_and_orders_like_a_cold_read():
    from ray_ser.train.reader import ShardCache

    src = CountingSource()
    warm = ShardCache(10 ** 9)
    ids = lambda cache, seed: [u for c in cache.chunks(src, 16, np.random.default_rng(seed)) for u in c["utt_id"]]  # noqa: E731
    first = ids(warm, 0)
    assert sorted(first) == sorted(f"u{i:03d}" for i in range(100))
    again = [ids(warm, e) for e in (1, 2)]
    assert src.reads == 1  # later epochs come from memory
    cold = ShardCache(10 ** 9)  # a resumed run: its first epoch is a cold read
    assert ids(cold, 2) == again[1] and again[0] != again[1]
    ordered = [u for c in warm.chunks(src, 16) for u in c["utt_id"]]
    assert ordered == [f"u{i:03d}" for i in range(100)]  # no rng: stored order (evaluation)
    x = [c["x"] for c in warm.chunks(src, 100)][0]
    ref = _concat(list(chunks(100, 16, ragged=True)))["x"]
    assert all(np.array_equal(a, b) for a, b in zip(x, ref))


def test_shard_cache_over_budget_streams_every_epoch():
    from ray_ser.train.reader import ShardCache

    src = CountingSource()
    cache = ShardCache(1000)  # smaller than two chunks
    for epoch in range(3):
        got = [u for c in cache.chunks(src, 16, np.random.default_rng(epoch)) for u in c["utt_id"]]
        assert sorted(got) == sorted(f"u{i:03d}" for i in range(100))
    assert src.reads == 3 and cache.rows is None and cache.streaming


def test_domain_of_reads_the_class_index_and_ignores_other_domains():
    from ray_ser.train.reader import IGNORE, Labels

    labels = Labels(categories=["a"], rows={"u1": {"speaker": "s2"}, "u2": {"speaker": "s9"}, "u3": {}},
                    domains=["s1", "s2", "s2"], domain_key="speaker")
    assert [labels.domain_of(u) for u in ("u1", "u2", "u3")] == [1, IGNORE, IGNORE]  # first index, as list.index


def test_labels_travel_as_one_table_and_give_each_row_its_targets():
    """A pickled Labels carries one Arrow table (no dict per utterance, whose unpickling in every map task grew
    with the corpus); the worker's target arrays equal the per-row rules: votes when there are C of them, else the
    label's one-hot, NaN for a missing dimension, IGNORE outside the label and domain sets."""
    import pickle

    from ray_ser.train.reader import IGNORE, Labels, _as_examples

    rows = {
        "u1": {"utt_id": "u1", "speaker": "s1", "corpus": "a", "label": "hap", "pdf": [0.25, 0.75], "arousal": 0.5},
        "u2": {"utt_id": "u2", "speaker": "s2", "corpus": "b", "label": "sad", "pdf": None, "valence": -1.0},
        "u3": {"utt_id": "u3", "speaker": "s3", "corpus": "a", "label": None, "pdf": [1.0, 0.0, 0.0],
               "arousal": 0.1, "valence": 0.2, "dominance": 0.3},
        "u4": {"utt_id": "u4", "speaker": "s1", "corpus": "b", "label": None},
    }
    sent = Labels(["sad", "hap"], rows, domains=["s1", "s2"], domain_key="speaker")
    blob = pickle.dumps(sent)
    got = pickle.loads(blob)
    assert got._rows is None and set(got.__getstate__()) == {"categories", "domains", "domain_key", "token", "table",
                                                                   "dim_scale"}
    ids = ["u3", "u1", "u4", "u2"]
    X = np.arange(8, dtype=np.float16).reshape(4, 2)
    ex = _as_examples(ids, ["clean"] * 4, X, np.ones(4, np.int64), None, got, None)
    assert got._rows is None  # the targets came from the table's arrays, not from rebuilt row dicts
    assert ex["label_index"].tolist() == [IGNORE, 1, IGNORE, 0]
    np.testing.assert_array_equal(ex["pdf"], np.array([[0, 0], [0.25, 0.75], [0, 0], [1, 0]], np.float32))
    np.testing.assert_array_equal(ex["dims"], np.array(
        [[0.1, 0.2, 0.3], [0.5, np.nan, np.nan], [np.nan] * 3, [np.nan, -1.0, np.nan]], np.float32))
    assert ex["domain"].tolist() == [IGNORE, 0, 0, 1] and ex["corpus"].tolist() == ["a", "a", "b", "b"]
    assert [got.domain_of(u) for u in ids] == [sent.domain_of(u) for u in ids] == [IGNORE, 0, 0, 1]
    assert got.columns() is got.columns() and pickle.loads(blob).columns() is got.columns()  # once per process
    assert got.rows["u1"]["pdf"] == [0.25, 0.75] and got.rows["u2"]["speaker"] == "s2"
    with pytest.raises(KeyError, match="u9"):
        _as_examples(["u9"], ["clean"], X[:1], np.ones(1, np.int64), None, got, None)
