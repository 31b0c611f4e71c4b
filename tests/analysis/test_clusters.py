"""Frame clusters: seeded k-means is reproducible, every stored frame gets an id, purity is sane."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest
from test_probe import load_job
from test_saliency_store import CONDS, shared_store

from ray_ser.analysis import clusters as cl
from ray_ser.store import catalog
from ray_ser.store.core import Store
from ray_ser.store.names import table_name

LAYER = 1
KS = [4, 8]


@pytest.fixture(scope="module")
def store_uri(local_ray, request):
    return shared_store(request)  # Ray Data assigns the frames: this module always starts Ray


@pytest.fixture(scope="module")
def assignment(store_uri):
    from ray_ser.analysis.saliency_store import fold_assignment

    return fold_assignment(store_uri, "tiny", "clean")


FOLD = 2


@pytest.fixture(scope="module")
def fitted(store_uri, assignment):
    cents = cl.fit_kmeans(store_uri, "tiny", LAYER, KS, assignment, FOLD, sample_frames=3000, seed=0)
    rows = cl.assign_frames(store_uri, "tiny", LAYER, cents, assignment, -1)  # fold -1 labels every utterance
    return cents, rows


def emb_frames(uri: str) -> dict[tuple[str, str], int]:
    t = Store(uri).embeddings("tiny").to_lance().to_table(columns=["utt_id", "condition", "n_frames"], filter=f"layer = {LAYER}")
    return {(u, c): n for u, c, n in zip(*(t.column(k).to_pylist() for k in ("utt_id", "condition", "n_frames")))}


def test_same_seed_same_centroids_and_ids(store_uri, fitted, assignment):
    cents, _ = fitted
    for k in KS:
        assert cents[k].shape == (k, 32) and cents[k].dtype == np.float32
        np.testing.assert_array_equal(cl.read_centroids(store_uri, "tiny", LAYER, k, FOLD, assignment.id), cents[k])
    first = cl.read_frame_clusters(store_uri, "tiny", LAYER, 8, -1, assignment.id, condition=None)
    again = cl.fit_kmeans(store_uri, "tiny", LAYER, KS, assignment, FOLD, sample_frames=3000, seed=0)
    for k in KS:
        np.testing.assert_array_equal(again[k], cents[k])
    cl.assign_frames(store_uri, "tiny", LAYER, again, assignment, -1)
    second = cl.read_frame_clusters(store_uri, "tiny", LAYER, 8, -1, assignment.id, condition=None)
    assert first.equals(second)
    other = cl.fit_kmeans(store_uri, "tiny", LAYER, [8], assignment, FOLD, sample_frames=3000, seed=1, write=False)
    assert not np.array_equal(other[8], cents[8])


def test_centroids_of_folds_coexist_and_never_see_test_speakers(store_uri, fitted, assignment):
    cents, _ = fitted
    other = cl.fit_kmeans(store_uri, "tiny", LAYER, [4], assignment, 5, sample_frames=3000, seed=0)
    np.testing.assert_array_equal(cl.read_centroids(store_uri, "tiny", LAYER, 4, FOLD, assignment.id), cents[4])
    np.testing.assert_array_equal(cl.read_centroids(store_uri, "tiny", LAYER, 4, 5, assignment.id), other[4])
    # the training sample of fold 2 holds no frame of fold 2's speakers: it equals a draw from the others only
    X = cl.draw_frames(store_uri, "tiny", LAYER, "clean", n=10**6, seed=0, train_utts=assignment.train_utts(FOLD))
    Y = cl.draw_frames(store_uri, "tiny", LAYER, "clean", n=10**6, seed=0, train_utts=assignment.utt_ids)
    assert len(X) < len(Y)
    with pytest.raises(KeyError, match="fold assignment 0123456789ab"):  # another assignment's: none stored
        cl.read_centroids(store_uri, "tiny", LAYER, 4, FOLD, "0123456789ab")
    again = cl.ensure_centroids(store_uri, "tiny", LAYER, 4, assignment, FOLD)  # stored: read, not refitted
    np.testing.assert_array_equal(again, cents[4])
    # a Tune search's pool folds (another assignment) fit their own beside the cluster job's, which stay
    pool = assignment.without([f for f in assignment.fold_ids if f != FOLD][:1])
    assert pool.id != assignment.id
    mine = cl.ensure_centroids(store_uri, "tiny", LAYER, 4, pool, FOLD)
    np.testing.assert_array_equal(cl.read_centroids(store_uri, "tiny", LAYER, 4, FOLD, pool.id), mine)
    np.testing.assert_array_equal(cl.read_centroids(store_uri, "tiny", LAYER, 4, FOLD, assignment.id), cents[4])


def test_every_frame_of_every_condition_gets_an_id(store_uri, fitted, assignment):
    _, rows = fitted
    want = emb_frames(store_uri)
    assert {c for _, c in want} == set(CONDS)
    table = Store(store_uri).open(catalog.FRAME_CLUSTERS.name("tiny")).to_arrow()
    assert table.num_rows == rows == len(want) * len(KS)  # the re-assignment replaced, never duplicated
    for k in KS:
        t = cl.read_frame_clusters(store_uri, "tiny", LAYER, k, -1, assignment.id, condition=None)
        got = {(u, c): (n, ids) for u, c, n, ids in zip(*(t.column(x).to_pylist() for x in ("utt_id", "condition", "n_frames", "ids")))}
        assert set(got) == set(want)
        for key, (n, ids) in got.items():
            assert n == want[key] == len(ids)
            assert all(0 <= i < k for i in ids)
        assert sum(want.values()) == pc.sum(pc.list_value_length(t.column("ids"))).as_py()


def test_ids_are_the_nearest_centroids(store_uri, fitted, assignment):
    from ray_ser.store.core import iter_frames

    cents, _ = fitted
    t = cl.read_frame_clusters(store_uri, "tiny", LAYER, 8, -1, assignment.id, condition="clean")
    ids = dict(zip(t.column("utt_id").to_pylist(), t.column("ids").to_pylist()))
    for uid, frames in list(iter_frames(store_uri, "tiny", "clean", LAYER))[:3]:
        X = frames.astype(np.float64)
        d = ((X[:, None, :] - cents[8][None].astype(np.float64)) ** 2).sum(-1)
        best = d.min(axis=1)
        chosen = d[np.arange(len(X)), ids[uid]]
        np.testing.assert_allclose(chosen, best, rtol=1e-4, atol=1e-4)  # float32 ties aside, the argmin


def test_purity_bounds(store_uri, fitted, assignment):
    for k in KS:
        p, base = cl.purity(store_uri, "tiny", LAYER, k, [-1], assignment.id)
        assert 0.0 < base <= p <= 1.0
    counts, names = cl.cluster_label_counts(store_uri, "tiny", LAYER, 4, -1, assignment.id)
    assert counts.shape == (4, len(names)) and p == pytest.approx(cl.purity(store_uri, "tiny", LAYER, 8, [-1], assignment.id)[0])


def test_training_sample_is_limited_to_train_utts(store_uri):
    t = Store(store_uri).embeddings("tiny").to_lance().to_table(columns=["utt_id", "n_frames"], filter=f"layer = {LAYER} AND condition = 'clean'")
    utts = sorted(t.column("utt_id").to_pylist())[:3]
    n = sum(c for u, c in zip(t.column("utt_id").to_pylist(), t.column("n_frames").to_pylist()) if u in utts)
    X = cl.draw_frames(store_uri, "tiny", LAYER, "clean", n=10**6, seed=0, train_utts=utts)
    assert X.shape == (n, 32) and X.dtype == np.float32


def test_cluster_job(store_uri, capsys):
    job = load_job("frames")
    out = job.main(["--store", store_uri, "--model", "tiny", "--layer", "2", "--k", "3,5", "--sample-frames", "2000",
                    "--conditions", "clean", "--fold", "0,1,2"])
    text = capsys.readouterr().out
    assert "purity k=3:" in text and "purity k=5:" in text
    from ray_ser.analysis.saliency_store import fold_assignment

    a = fold_assignment(store_uri, "tiny", "clean")
    n_test = sum(len(a.test_utts(f)) for f in (0, 1, 2))  # out-of-fold: each fold labels its own test speakers
    assert set(out["purity"]) == {3, 5} and out["rows"] == 2 * n_test and out["fold_id"] == a.id
    t = cl.read_frame_clusters(store_uri, "tiny", 2, 3, [0, 1, 2], a.id)
    assert sorted(t.column("utt_id").to_pylist()) == sorted(u for f in (0, 1, 2) for u in a.test_utts(f))
    assert table_name("tiny") in Store(store_uri).names()


def test_fold_plans_written_after_the_frames_stage_fit_no_kmeans_again(store_uri, tmp_path, monkeypatch):
    """``ray-ser run`` writes the fold plans after the frames stage: a plan reads the centroids that stage fitted
    for its (fold, layer, k) instead of fitting them a second time; written before, it fits them itself."""
    import shutil

    from ray_ser.analysis.fold_plans import read_fold_plan
    from ray_ser.config import ExperimentConfig
    from ray_ser.jobs import frames as frames_job
    from ray_ser.jobs.saliency import run_plans

    fits = []
    real = cl.fit_kmeans

    def counted(*a, **kw):
        fits.append((a[2], tuple(a[3]), a[5]))  # layer, ks, fold
        return real(*a, **kw)

    monkeypatch.setattr(cl, "fit_kmeans", counted)
    monkeypatch.setattr(frames_job, "fit_kmeans", counted)

    def config(uri: str) -> ExperimentConfig:
        return ExperimentConfig(
            store={"uri": uri}, extract={"model": "tiny", "model_key": "tiny", "conditions": ["clean"]},
            analysis={"clusters": {"layer": str(LAYER), "k": [4], "fold": "0", "sample_frames": 2000,
                                   "conditions": ["clean"]}},
            train={"arch": "tcgru", "layers": [LAYER], "n_clusters": 4, "pooled": False, "outer_folds": "0",
                   "spec_augment": False})

    after = str(tmp_path / "after")
    shutil.copytree(store_uri, after)
    result = frames_job.run(config(after), Store(after), plans=True)
    assert result.fold_plans == [0]
    assert fits == [(LAYER, (4,), 0)]  # the frames stage's fit only: the plan read it
    plan = read_fold_plan(config(after).train.plan_spec(), result.fold_id, 0)
    assert plan.layer == LAYER  # training reads the centroids of this layer: the frames stage's

    fits.clear()
    before = str(tmp_path / "before")
    shutil.copytree(store_uri, before)
    assert run_plans(config(before), Store(before), "tiny") == [0]  # plans first: the plan fits its own centroids
    assert fits == [(LAYER, (4,), 0)]
