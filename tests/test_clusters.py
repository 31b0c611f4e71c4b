"""Frame clusters: seeded k-means is reproducible, every stored frame gets an id, purity is sane."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest

from ray_ser import clusters as cl
from ray_ser.store import Store, table_name

from test_probe import load_job
from test_saliency_store import CONDS, shared_store
LAYER = 1
KS = [4, 8]


@pytest.fixture(scope="module")
def store_uri(local_ray, request):
    return shared_store(request)  # Ray Data assigns the frames: this module always starts Ray


@pytest.fixture(scope="module")
def fitted(store_uri):
    cents = cl.fit_kmeans(store_uri, "tiny", LAYER, KS, sample_frames=3000, seed=0)
    rows = cl.assign_frames(store_uri, "tiny", LAYER, cents)
    return cents, rows


def emb_frames(uri: str) -> dict[tuple[str, str], int]:
    t = Store(uri).embeddings("tiny").to_lance().to_table(columns=["utt_id", "condition", "n_frames"], filter=f"layer = {LAYER}")
    return {(u, c): n for u, c, n in zip(*(t.column(k).to_pylist() for k in ("utt_id", "condition", "n_frames")))}


def test_same_seed_same_centroids_and_ids(store_uri, fitted):
    cents, _ = fitted
    for k in KS:
        assert cents[k].shape == (k, 32) and cents[k].dtype == np.float32
        np.testing.assert_array_equal(cl.read_centroids(store_uri, "tiny", LAYER, k), cents[k])
    first = cl.read_frame_clusters(store_uri, "tiny", LAYER, 8, condition=None)
    again = cl.fit_kmeans(store_uri, "tiny", LAYER, KS, sample_frames=3000, seed=0)
    for k in KS:
        np.testing.assert_array_equal(again[k], cents[k])
    cl.assign_frames(store_uri, "tiny", LAYER, again)
    second = cl.read_frame_clusters(store_uri, "tiny", LAYER, 8, condition=None)
    assert first.equals(second)
    other = cl.fit_kmeans(store_uri, "tiny", LAYER, [8], sample_frames=3000, seed=1, write=False)
    assert not np.array_equal(other[8], cents[8])


def test_every_frame_of_every_condition_gets_an_id(store_uri, fitted):
    _, rows = fitted
    want = emb_frames(store_uri)
    assert {c for _, c in want} == set(CONDS)
    table = Store(store_uri).open(cl.frame_clusters_table_name("tiny")).to_arrow()
    assert table.num_rows == rows == len(want) * len(KS)  # the re-assignment replaced, never duplicated
    for k in KS:
        t = cl.read_frame_clusters(store_uri, "tiny", LAYER, k, condition=None)
        got = {(u, c): (n, ids) for u, c, n, ids in zip(*(t.column(x).to_pylist() for x in ("utt_id", "condition", "n_frames", "ids")))}
        assert set(got) == set(want)
        for key, (n, ids) in got.items():
            assert n == want[key] == len(ids)
            assert all(0 <= i < k for i in ids)
        assert sum(want.values()) == pc.sum(pc.list_value_length(t.column("ids"))).as_py()


def test_ids_are_the_nearest_centroids(store_uri, fitted):
    from ray_ser.store import iter_frames

    cents, _ = fitted
    t = cl.read_frame_clusters(store_uri, "tiny", LAYER, 8, condition="clean")
    ids = dict(zip(t.column("utt_id").to_pylist(), t.column("ids").to_pylist()))
    for uid, frames in list(iter_frames(store_uri, "tiny", "clean", LAYER))[:3]:
        X = frames.astype(np.float64)
        d = ((X[:, None, :] - cents[8][None].astype(np.float64)) ** 2).sum(-1)
        best = d.min(axis=1)
        chosen = d[np.arange(len(X)), ids[uid]]
        np.testing.assert_allclose(chosen, best, rtol=1e-4, atol=1e-4)  # float32 ties aside, the argmin


def test_purity_bounds(store_uri, fitted):
    for k in KS:
        p = cl.purity(store_uri, "tiny", LAYER, k)
        base = cl.majority_share(store_uri, "tiny", LAYER, k)
        assert 0.0 < base <= p <= 1.0


def test_training_sample_is_limited_to_train_utts(store_uri):
    t = Store(store_uri).embeddings("tiny").to_lance().to_table(columns=["utt_id", "n_frames"], filter=f"layer = {LAYER} AND condition = 'clean'")
    utts = sorted(t.column("utt_id").to_pylist())[:3]
    n = sum(c for u, c in zip(t.column("utt_id").to_pylist(), t.column("n_frames").to_pylist()) if u in utts)
    X = cl.draw_frames(store_uri, "tiny", LAYER, "clean", n=10**6, seed=0, train_utts=utts)
    assert X.shape == (n, 32) and X.dtype == np.float32


def test_cluster_job(store_uri, capsys):
    job = load_job("cluster")
    out = job.main(["--store", store_uri, "--model", "tiny", "--layer", "2", "--k", "3,5", "--sample-frames", "2000",
                    "--conditions", "clean"])
    text = capsys.readouterr().out
    assert "purity k=3:" in text and "purity k=5:" in text
    assert set(out["purity"]) == {3, 5} and out["rows"] == 2 * len(emb_frames(store_uri)) // len(CONDS)
    assert table_name("tiny") in Store(store_uri).names()
