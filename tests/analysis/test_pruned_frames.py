"""The saliency-pruned frame store: the union of the folds' kept dimensions, each fold reading exactly its own."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_saliency_store import CONDS, DIM, N_UTTS, shared_store

from ray_ser.analysis import saliency as sal
from ray_ser.analysis import saliency_store as ss
from ray_ser.analysis.pruned_frames import (
    iter_pruned_frames,
    pruned_meta,
    pruned_table_name,
    write_pruned_frames,
)
from ray_ser.store.core import Store, iter_frames


@pytest.fixture(scope="module")
def pruned(request, tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("pruned") / "store")
    shutil.copytree(shared_store(request), uri)  # saliency is written into a copy: other modules' tables stay
    info: dict = {}
    df = ss.compute_saliency(uri, "tiny", "clean", folds="auto", mis=False, info=info)
    ss.write_saliency(uri, df, ss.layer_ranking(df), info["assignment"])
    return uri, write_pruned_frames(uri, "tiny", layer=1, keep_ratio=0.6), info["assignment"]


def test_table_holds_the_union_of_fold_masks_for_every_row(pruned):
    uri, info, assignment = pruned
    assert info.table == pruned_table_name("tiny", 1, 0.6) == "pruned__tiny_L1_keep0.6"
    assert info.rows == N_UTTS * len(CONDS) and info.dim == DIM
    assert info.kept_per_fold == sal.kept_size(DIM, 0.6) <= info.width <= DIM
    meta = pruned_meta(uri, "tiny", 1, 0.6)
    assert meta["fold_id"] == assignment.id and len(meta["dims"]) == info.width
    assert set(map(int, meta["folds"])) == set(range(10)) | {-1}
    union = set().union(*(set(d) for d in meta["folds"].values()))
    assert sorted(union) == meta["dims"]


@pytest.mark.parametrize("fold", [0, 7, -1])
@pytest.mark.parametrize("condition", CONDS)
def test_each_fold_reads_exactly_its_own_dimensions_of_the_full_frames(pruned, fold, condition):
    uri, _, assignment = pruned
    mask = ss.saliency_mask(uri, "tiny", 1, 0.6, fold, fold_id=assignment.id)
    full = dict(iter_frames(uri, "tiny", condition=condition, layer=1))
    got = dict(iter_pruned_frames(uri, "tiny", 1, 0.6, fold, condition=condition, fold_id=assignment.id))
    assert got.keys() == full.keys() and len(got) == N_UTTS
    for uid, frames in got.items():
        assert frames.dtype == np.float16 and frames.shape == (full[uid].shape[0], mask.sum())
        np.testing.assert_array_equal(frames, full[uid][:, mask])


def test_wrong_fold_id_or_missing_table_is_an_error(pruned):
    uri, _, _ = pruned
    with pytest.raises(ValueError, match="fold assignment"):
        next(iter_pruned_frames(uri, "tiny", 1, 0.6, 0, fold_id="not-this-one"))
    with pytest.raises(KeyError, match="jobs/prune_frames.py"):
        next(iter_pruned_frames(uri, "tiny", 2, 0.6, 0))
    with pytest.raises(KeyError, match="no mask"):
        next(iter_pruned_frames(uri, "tiny", 1, 0.6, 42))


def test_pruned_frames_take_width_over_dim_of_the_layer_they_came_from(pruned):
    uri, info, _ = pruned
    frames = lambda t: t.column("frames").combine_chunks().flatten().flatten().nbytes  # noqa: E731
    full = Store(uri).embeddings("tiny").to_lance().to_table(columns=["frames"], filter="layer = 1")
    small = Store(uri).open(info.table).to_lance().to_table(columns=["frames"])
    assert frames(small) * DIM == frames(full) * info.width


def test_prune_job_runs_from_a_config_and_the_open_store(pruned, capsys):
    """``jobs/prune_frames.run(cfg, store)``: the stage contract's typed result, the same table as the function's."""
    from ray_ser.config import ConfigError, ExperimentConfig
    from ray_ser.jobs import prune_frames

    uri, info, _ = pruned
    cfg = ExperimentConfig(store={"uri": uri}, extract={"model": "tiny", "model_key": "tiny"},
                           analysis={"prune": {"layer": 1, "keep_ratio": 0.6}})
    result = prune_frames.run(cfg, Store(uri))
    assert (result.table, result.rows, result.width, result.kept_per_fold) == \
        (info.table, info.rows, info.width, info.kept_per_fold)
    assert result["table"] == "pruned__tiny_L1_keep0.6" and f'"rows": {info.rows}' in capsys.readouterr().out
    with pytest.raises(ConfigError, match="analysis.prune.layer"):
        prune_frames.run(ExperimentConfig(store={"uri": uri}), Store(uri))
