"""Saliency over the store: folds without leakage, one row per (fold, layer, dim), masks, layer ranking."""

from __future__ import annotations

import shutil

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from ray_ser.analysis import saliency as sal
from ray_ser.analysis import saliency_store as ss
from ray_ser.corpora import build_manifest
from ray_ser.extract.program import ExtractConfig, extract
from ray_ser.store import catalog
from ray_ser.store.core import Store
from ray_ser.store.names import sql_string

N_UTTS = 36
DIM = 32
LAYERS = 3
CONDS = ["clean", "5dB"]
_SHARED: dict[str, str] = {}


def spread_manifest(corpora, n: int):
    """n EmoDB utterances taken in turn from all 10 speakers and their categories (``Manifest.spread``)."""
    return build_manifest("emodb", corpora).spread(n)


def shared_store(request) -> str:
    """One small store (36 EmoDB utterances, clean + 5 dB, the tiny model) for the saliency, probe and
    cluster tests, extracted once per session: starting Ray and extracting are the slow part.
    Tests that rewrite shared tables work on a copy (the cluster tables are only written by test_clusters)."""
    if "uri" not in _SHARED:
        corpora = request.getfixturevalue("corpora")
        model_dir = request.getfixturevalue("tiny_model_dir")
        request.getfixturevalue("local_ray")
        uri = str(request.getfixturevalue("tmp_path_factory").mktemp("shared_store"))
        extract(spread_manifest(corpora, N_UTTS), uri, ExtractConfig(model=str(model_dir), conditions=CONDS, model_key="tiny"))
        _SHARED["uri"] = uri
    return _SHARED["uri"]


@pytest.fixture(scope="module")
def store_uri(request):
    return shared_store(request)


@pytest.fixture(scope="module")
def computed(store_uri):
    info: dict = {}
    df = ss.compute_saliency(store_uri, "tiny", "clean", folds="auto", mis=True, info=info)
    ranking = ss.layer_ranking(df)
    ss.write_saliency(store_uri, df, ranking, info["assignment"])
    return df, ranking, info


def _keys(df: pl.DataFrame, cols) -> list[tuple]:
    return list(df.select(cols).iter_rows())


def test_one_row_per_fold_layer_dim_and_reruns_replace(computed, store_uri, tmp_path):
    df, ranking, info = computed
    assert info["folds"].startswith("loso") and info["n_speakers"] == 10 and info["n"] == N_UTTS
    folds = sorted(df["fold"].unique().to_list())
    assert folds == list(range(-1, 10))
    stored = ss.read_saliency(store_uri, "tiny")
    keys = _keys(stored, ["fold", "layer", "dim"])
    assert len(keys) == len(set(keys)) == len(folds) * LAYERS * DIM
    assert stored["mis"].null_count() == 0 and stored["ccs"].null_count() == 0
    assert stored.columns == ["model", "condition", "fold_id", "fold", "layer", "dim", "ccs", "mis", "rank"]
    assert stored["fold_id"].unique().to_list() == [info["assignment"].id]

    # A re-run replaces the rows of the model/condition: same scheme -> same count; 5 folds -> LOSO folds 5..9 gone.
    copy = str(tmp_path / "store")
    shutil.copytree(store_uri, copy)
    again = ss.compute_saliency(copy, "tiny", "clean", folds="auto", mis=False)
    ss.write_saliency(copy, again, ss.layer_ranking(again))
    assert Store(copy).open(catalog.SALIENCY.name("tiny")).count_rows() == len(keys)
    assert ss.read_saliency(copy, "tiny")["mis"].null_count() == len(keys)  # the new rows, not the old
    five = ss.compute_saliency(copy, "tiny", "clean", folds=5, mis=False)
    ss.write_saliency(copy, five, ss.layer_ranking(five))
    stored5 = ss.read_saliency(copy, "tiny")
    assert sorted(stored5["fold"].unique().to_list()) == list(range(-1, 5))
    assert stored5.height == 6 * LAYERS * DIM
    assert Store(copy).open(catalog.LAYER_RANK.name("tiny")).count_rows() == 6 * LAYERS


def test_fold_scores_equal_a_direct_computation_on_the_training_rows(computed, store_uri):
    df, _, info = computed
    rows, L, names, fold, _ = ss.labelled_rows(store_uri, "tiny", "clean")
    assert set(names) <= set(Store(store_uri).manifest("emodb").categories)  # the PDF columns (EmoDB has no V/A/D)
    assert L.shape == (N_UTTS, len(names)) and np.allclose(L.sum(axis=1), 1.0, atol=1e-3)
    folds = info["fold_frame"]
    # speaker-disjoint: no speaker on both sides of any fold
    for f in range(10):
        test_spk = set(folds.filter(pl.col("fold") == f)["speaker"].to_list())
        train_spk = set(folds.filter(pl.col("fold") != f)["speaker"].to_list())
        assert test_spk and not test_spk & train_spk
    stored = ss.read_saliency(store_uri, "tiny")
    for layer in range(LAYERS):
        H = ss.layer_matrix(store_uri, "tiny", "clean", layer, rows["utt_id"].to_list())
        for f in (-1, 0, 4, 9):
            train = np.ones(len(fold), bool) if f == -1 else fold != f
            got = stored.filter((pl.col("fold") == f) & (pl.col("layer") == layer))
            np.testing.assert_allclose(got["ccs"].to_numpy(), sal.ccs(H[train], L[train]), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(got["mis"].to_numpy(), sal.mis(H[train], L[train]), rtol=1e-10, atol=1e-12)
            np.testing.assert_array_equal(got["rank"].to_numpy(), sal.rank(got["ccs"].to_numpy()))


def test_changing_the_test_fold_vectors_leaves_its_scores_unchanged(computed, store_uri, tmp_path):
    """No test-fold utterance is used for its fold's mask: scramble fold 0's vectors in a copy of the store."""
    df, _, info = computed
    victims = info["fold_frame"].filter(pl.col("fold") == 0)["utt_id"].to_list()
    copy = str(tmp_path / "store")
    shutil.copytree(store_uri, copy)
    table = Store(copy).embeddings("tiny")
    where = "utt_id IN (" + ", ".join(sql_string(u) for u in victims) + ")"
    rows = table.to_lance().to_table(filter=where)
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((rows.num_rows, DIM)).astype(np.float32) * 10
    rows = rows.set_column(rows.column_names.index("mean"), "mean",
                           pa.FixedSizeListArray.from_arrays(pa.array(noise.ravel()), DIM))
    table.delete(where)
    table.add(rows.cast(table.schema))

    changed = ss.compute_saliency(copy, "tiny", "clean", folds="auto", mis=True)
    for col in ("ccs", "mis"):
        before, after = (d.filter(pl.col("fold") == 0).sort(["layer", "dim"])[col].to_numpy() for d in (df, changed))
        np.testing.assert_array_equal(after, before)
        # ... while every mask that did see those utterances moves
        for f in (-1, 1):
            b, a = (d.filter(pl.col("fold") == f).sort(["layer", "dim"])[col].to_numpy() for d in (df, changed))
            assert not np.allclose(a, b)


def test_saliency_mask_sizes_and_contents(computed, store_uri):
    df, _, _ = computed
    for ratio, size in ((0.8, 26), (0.6, 19), (0.4, 13), (1.0, 32)):
        for fold in (-1, 3):
            mask = ss.saliency_mask(store_uri, "tiny", layer=2, keep_ratio=ratio, fold=fold)
            assert mask.dtype == bool and mask.shape == (DIM,) and mask.sum() == size
            scores = df.filter((pl.col("fold") == fold) & (pl.col("layer") == 2)).sort("dim")["ccs"].to_numpy()
            np.testing.assert_array_equal(mask, sal.dimension_mask(scores, ratio))
    assert ss.saliency_mask(store_uri, "tiny", 1, 0.6, fold=-1, score="mis").sum() == 19
    with pytest.raises(KeyError):
        ss.saliency_mask(store_uri, "tiny", layer=7, keep_ratio=0.5, fold=0)


def test_layer_ranking(computed, store_uri):
    df, ranking, _ = computed
    assert ranking.height == 11 * LAYERS
    assert len(set(_keys(ranking, ["fold", "layer"]))) == ranking.height
    for f in (-1, 2):
        r = ranking.filter(pl.col("fold") == f).sort("layer")
        want = [sal.layer_score(df.filter((pl.col("fold") == f) & (pl.col("layer") == layer)).sort("dim")["ccs"].to_numpy())
                for layer in range(LAYERS)]
        np.testing.assert_allclose(r["layer_score"].to_numpy(), want)
        order = sal.rank_layers({layer: df.filter((pl.col("fold") == f) & (pl.col("layer") == layer))["ccs"].to_numpy()
                                 for layer in range(LAYERS)})
        assert r.sort("layer_rank")["layer"].to_list() == order
    for f in (-1, 3):
        assert ss.best_layer(store_uri, "tiny", fold=f) == ranking.filter((pl.col("fold") == f) & (pl.col("layer_rank") == 0))["layer"][0]
    assert set(ranking["criterion"].to_list()) == {ss.CRITERION}
    mean = ss.mean_over_folds(ranking).sort("layer")
    assert mean.height == LAYERS and sorted(mean["layer_rank"].to_list()) == [0, 1, 2]
    np.testing.assert_allclose(
        mean["layer_score"].to_numpy(),
        ranking.filter(pl.col("fold") >= 0).group_by("layer").agg(pl.col("layer_score").mean()).sort("layer")["layer_score"].to_numpy())
    stored = ss.read_folds(store_uri, "tiny")
    assert stored.height == N_UTTS and stored["fold"].n_unique() == 10


def test_fold_ids_are_checked_on_read(computed, store_uri):
    _, _, info = computed
    assignment = info["assignment"]
    assert ss.stored_assignment(store_uri, "tiny") == assignment
    assert ss.fold_assignment(store_uri, "tiny", "clean").id == assignment.id  # same rows, rule and seed
    mask = ss.saliency_mask(store_uri, "tiny", 2, 0.6, fold=1, fold_id=assignment.id)
    assert mask.sum() == 19
    other = ss.fold_assignment(store_uri, "tiny", "clean", folds=3)
    assert other.id != assignment.id
    with pytest.raises(ValueError, match="fold assignment"):
        ss.saliency_mask(store_uri, "tiny", 2, 0.6, fold=1, fold_id=other.id)
    with pytest.raises(ValueError, match="fold assignment"):
        ss.best_layer(store_uri, "tiny", fold=1, fold_id=other.id)


def test_targets_for_prefers_dimensions_then_pdf_then_labels():
    base = {"utt_id": ["a", "b", "c"], "label": ["sad", "happy", "sad"], "pdf": [[0.9, 0.1], [0.2, 0.8], [1.0, 0.0]]}
    L, names = ss.targets_for(pl.DataFrame(base), ["sad", "happy"])
    assert names == ["sad", "happy"] and L.shape == (3, 2) and L[1, 1] == pytest.approx(0.8)
    avd = {**base, "arousal": [1.0, 2.0, 3.0], "valence": [3.0, 2.0, 1.0], "dominance": [2.0, 2.0, 1.0]}
    L, names = ss.targets_for(pl.DataFrame(avd), ["sad", "happy"])
    assert names == ["arousal", "valence", "dominance"] and L[:, 0].tolist() == [1.0, 2.0, 3.0]
    partial = {**avd, "valence": [3.0, None, 1.0]}  # V/A/D missing on a row -> the PDF
    assert ss.targets_for(pl.DataFrame(partial), ["sad", "happy"])[1] == ["sad", "happy"]
    no_pdf = {**base, "pdf": [None, None, None]}
    L, names = ss.targets_for(pl.DataFrame(no_pdf, schema_overrides={"pdf": pl.List(pl.Float64)}), ["sad", "happy"])
    assert L.tolist() == [[1, 0], [0, 1], [1, 0]]
    with pytest.raises(ValueError):
        ss.targets_for(pl.DataFrame({"utt_id": ["a"], "label": [None]}, schema_overrides={"label": pl.Utf8}), None)


def test_assign_folds():
    frame = pl.DataFrame({"utt_id": [f"u{i}" for i in range(40)], "speaker": [f"s{i % 20}" for i in range(40)],
                          "label": ["a", "b"] * 20})
    fold, desc = ss.assign_folds(frame, "auto")  # 20 speakers > 12 -> 5 speaker-disjoint folds
    assert desc.startswith("speaker-disjoint k=5") and sorted(set(fold.tolist())) == list(range(5))
    spk = np.asarray(frame["speaker"].to_list())
    for f in range(5):
        assert not set(spk[fold == f]) & set(spk[fold != f])
    fold, desc = ss.assign_folds(frame, "loso")
    assert len(set(fold.tolist())) == 20
    small = frame.filter(pl.col("speaker").is_in(["s0", "s1", "s2"]))
    assert ss.assign_folds(small, "auto")[1].startswith("loso (3")
    with pytest.raises(ValueError):
        ss.assign_folds(frame, "bogus")
