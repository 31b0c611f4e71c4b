"""The pooled path (a model that sees only the mean frame trains on mean frames read once, its folds as concurrent
Ray tasks) learns the same models as the frame path (a Ray Train run per fold over the frames), and folds trained
at once give the same predictions as folds trained one after another."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ray_ser.evaluate.predict import predict_fold
from ray_ser.train.checkpoints import fold_checkpoints
from ray_ser.train.config import TrainConfig
from ray_ser.train.driver import run
from ray_ser.train.pooled import pooled_model
from ray_ser.store import Store

pytestmark = pytest.mark.usefixtures("local_ray")


def linear_cfg(uri: str, **kw) -> TrainConfig:
    """3 epochs (and a refit of up to 3) each; the frame path checkpoints once, at the end (what a fold learns does
    not depend on how often it is checkpointed)."""
    base = dict(store=uri, model="tiny", layers=[1, 2], arch="mlp", mlp_hidden=0, spec_augment=False, epochs=3,
                patience=5, batch_size=8, lr=3e-3, weight_decay=1e-3, refit=True, cpus_per_worker=0.5,
                checkpoint_every_s=3600)
    return TrainConfig(**{**base, **kw})


def predictions(store: str, *outs) -> pl.DataFrame:
    """Every fold's test predictions (clean) in the run folders ``outs``, one row per (fold, utterance),
    probabilities as a list."""
    parts = [predict_fold(Store(store), path, conditions=["clean"]).select("fold", "utt_id", "probs")
             for out in outs for _, path in sorted(fold_checkpoints(out).items())]
    return pl.concat(parts).sort("fold", "utt_id")


@pytest.fixture(scope="module")
def frame_fold0(synth_store, local_ray, tmp_path_factory):
    """(config, run folder) of fold 0 trained on the frame path (a Ray Train run), shared by the tests that
    compare a pooled or a concurrent run with it."""
    cfg = linear_cfg(synth_store, pooled=False)
    out = tmp_path_factory.mktemp("frame_fold0")
    return cfg, out, run(cfg, Store(cfg.store), "0", out)


@pytest.fixture(scope="module")
def pooled_fold0(synth_store, local_ray, tmp_path_factory):
    """(config, run folder, summaries) of fold 0 trained on the pooled path, shared by the pooled-vs-frame test and
    the folds-at-once test (as its fold 0 trained alone)."""
    cfg = linear_cfg(synth_store)
    out = tmp_path_factory.mktemp("pooled_fold0")
    return cfg, out, run(cfg, Store(cfg.store), "0", out)


def assert_same_models(a, b, atol: float) -> None:
    pa_, pb = predictions(*a), predictions(*b)
    assert pa_["utt_id"].to_list() == pb["utt_id"].to_list() and len(pa_) > 0
    np.testing.assert_allclose(np.stack(pa_["probs"].to_list()), np.stack(pb["probs"].to_list()), atol=atol, rtol=0)


def test_only_a_model_that_sees_the_mean_frame_takes_the_pooled_path():
    cfg = TrainConfig(arch="mlp", spec_augment=False)
    assert pooled_model(cfg) and pooled_model(cfg.model_copy(update={"mlp_hidden": 0}))
    assert not pooled_model(cfg.model_copy(update={"pooled": False}))
    assert not pooled_model(cfg.model_copy(update={"spec_augment": True}))
    assert not pooled_model(cfg.model_copy(update={"arch": "tcgru", "pooling": "mean"}))


@pytest.mark.parametrize("scaler,keep_ratio,atol", [("global", 1.0, 1e-5), ("per-corpus", 0.5, 2e-3)])
def test_pooled_folds_learn_the_frame_path_models(synth_store, tmp_path, scaler, keep_ratio, atol, request):
    """Same seed, same fold: the same predictions to float tolerance (the per-corpus scaler's frame path rounds
    each standardised frame to float16 before the mean; the pooled path scales the mean)."""
    cfg = linear_cfg(synth_store, scaler=scaler, keep_ratio=keep_ratio)
    if scaler == "global":  # the shared pooled and frame-path runs of this config
        shared, pooled_dir, pooled = request.getfixturevalue("pooled_fold0")
        assert shared == cfg
        shared, frames_dir, frames = request.getfixturevalue("frame_fold0")
        assert shared == cfg.model_copy(update={"pooled": False})
    else:
        pooled_dir = tmp_path / "pooled"
        pooled = run(cfg, Store(cfg.store), "0", pooled_dir)
        frames_dir = tmp_path / "frames"
        frames = run(cfg.model_copy(update={"pooled": False}), Store(cfg.store), "0", frames_dir)
    assert pooled[0]["compute_s"] > 0 and frames[0]["compute_s"] > 0
    assert [s["best_epoch"] for s in pooled] == [s["best_epoch"] for s in frames]
    assert_same_models((synth_store, pooled_dir), (synth_store, frames_dir), atol)
    if scaler == "global":  # the train job's pooled test report predicts as the evaluation does
        check_pooled_report(synth_store, pooled_dir)
    ea = pl.read_parquet(pooled_dir / "epochs.parquet")
    eb = pl.read_parquet(frames_dir / "epochs.parquet")
    assert ea.drop("value").equals(eb.drop("value"))
    np.testing.assert_allclose(ea["value"].to_numpy(), eb["value"].to_numpy(), atol=max(atol, 1e-4), rtol=1e-3)


def test_folds_trained_at_once_match_folds_trained_one_by_one(synth_store, tmp_path, pooled_fold0):
    """Two outer folds and the final model (its inner folds) trained at once, against each trained alone (fold 0
    alone is the shared pooled run)."""
    cfg = linear_cfg(synth_store, final=True, final_inner_folds=2)
    shared, fold0, _ = pooled_fold0
    assert shared == cfg.model_copy(update={"final": False, "final_inner_folds": shared.final_inner_folds})
    together = run(cfg, Store(cfg.store), "0,1", tmp_path / "together")
    assert sorted(s["fold"] for s in together[:-1]) == [0, 1] and together[-1]["fold"] < 0
    run(cfg.model_copy(update={"final": False}), Store(cfg.store), "1", tmp_path / "alone")
    run(cfg.model_copy(update={"outer_folds": "none"}), Store(cfg.store), None, tmp_path / "alone")
    alone = {**fold_checkpoints(fold0), **fold_checkpoints(tmp_path / "alone")}
    assert sorted(fold_checkpoints(fold0)) == [0] and sorted(alone) == sorted(fold_checkpoints(tmp_path / "together"))
    assert_same_models((synth_store, tmp_path / "together"), (synth_store, fold0, tmp_path / "alone"), 0.0)
    from ray_ser.train.checkpoints import final_checkpoint
    import json

    a, b = (json.loads((final_checkpoint(tmp_path / d) / "config.json").read_text()) for d in ("together", "alone"))
    assert (a["best_epoch"], a["refit_epochs"]) == (b["best_epoch"], b["refit_epochs"])


def test_frame_path_folds_run_at_once_with_the_same_models(synth_store, tmp_path, frame_fold0):
    """The frame path's folds as concurrent Ray Train runs (2 CPUs, 0.5 each: two at once, one CPU left for the
    reads) give the models of one run after another (train.fold_slots 1: fold 0 alone is the shared run)."""
    import ray

    from ray_ser.train.driver import fold_slots

    cfg, fold0, _ = frame_fold0
    assert ray.cluster_resources()["CPU"] == 2 and fold_slots(cfg, 5) == 2 and fold_slots(cfg, 1) == 1
    assert fold_slots(cfg.model_copy(update={"fold_slots": 1}), 5) == 1
    assert fold_slots(cfg.model_copy(update={"cpus_per_worker": 1.0}), 5) == 1
    run(cfg, Store(cfg.store), "0,1", tmp_path / "together")
    run(cfg.model_copy(update={"fold_slots": 1}), Store(cfg.store), "1", tmp_path / "alone")
    assert_same_models((synth_store, tmp_path / "together"), (synth_store, fold0, tmp_path / "alone"), 0.0)


def check_pooled_report(store: str, out) -> None:
    from ray_ser.train.calibration import scale
    from ray_ser.train.checkpoints import load_fold_model
    from ray_ser.train.pooled import pooled_predictions
    from ray_ser.train.reader import PooledFrames

    opened = Store(store)
    fm = load_fold_model(fold_checkpoints(out)[0], store=opened)
    conditions = ["clean", "5dB"]
    reads = PooledFrames.read(opened, "tiny", fm.plan.read_layers, fm.plan.test, conditions)
    mine = pooled_predictions(fm, opened, reads, conditions).sort("utt_id", "condition")
    theirs = predict_fold(opened, fold_checkpoints(out)[0], conditions=conditions).sort("utt_id", "condition")
    assert mine["utt_id"].to_list() == theirs["utt_id"].to_list() and len(mine) == 2 * len(fm.plan.test)
    p = np.stack(mine["probs"].to_list())
    p = p if fm.temperature is None else scale(p, fm.temperature)
    np.testing.assert_allclose(p, np.stack(theirs["probs"].to_list()), atol=1e-5)
