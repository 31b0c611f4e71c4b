"""The dense batches of a cache of one-frame rows (the pooled path's mean frames) train the same model as the generic
per-row collate: same batches in the same order, same weights, history, best epoch and temperature."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ray_ser.train.config import TrainConfig
from ray_ser.train.loop import EVAL_ROWS, build_fold_model, epoch_batches, evaluate_batches, fit_fold
from ray_ser.train.reader import DenseRows, InMemorySource, ShardCache, collate, ragged
from ray_ser.train.synthetic_fold import synthetic_fold


def pooled_rows(rows: dict, conditions: list[str], rng: np.random.Generator) -> dict:
    """``rows`` as the pooled path holds them: one float32 mean frame per row, real lengths in ``n_frames``, a
    corpus per row, a copy per condition (sorted by utterance and condition, as :class:`PooledFrames` gives)."""
    n = len(rows["utt_id"])
    base = {**rows, "x": ragged([a.mean(0, dtype=np.float64, keepdims=True).astype(np.float32) for a in rows["x"]]),
            "n_frames": rng.integers(40, 300, n).astype(np.int64),
            "corpus": np.array(["a" if i % 3 else "b" for i in range(n)], dtype=object)}
    order = [(i, c) for i in range(n) for c in conditions]
    out = {k: (ragged([v[i] for i, _ in order]) if v.dtype == object else v[[i for i, _ in order]])
           for k, v in base.items()}
    out["condition"] = np.array([c for _, c in order], dtype=object)
    if len(conditions) > 1:  # the noisy copy's frames differ
        noise = rng.standard_normal((len(order), out["x"][0].shape[1])).astype(np.float32) * 0.1
        out["x"] = ragged([a + noise[j] * (c != "clean") for j, (a, c) in enumerate(zip(out["x"], out["condition"]))])
    return out


def fold(balance: bool, conditions: list[str], inner_folds: bool):
    cfg = TrainConfig(arch="mlp", mlp_hidden=0, spec_augment=False, epochs=6, patience=3, batch_size=8, lr=3e-3,
                      weight_decay=1e-3, refit=True, conditions=conditions, balance="corpus" if balance else "none",
                      seed=3)
    f = synthetic_fold(cfg, n_train=90, n_val=30, dim=24, frames=(3, 9), n_classes=4)
    rng = np.random.default_rng(1)
    train = pooled_rows(f.train.rows, conditions, rng)
    val = pooled_rows(f.val.rows, ["clean"], rng)
    plan = dataclasses.replace(f.plan, corpus_counts={"a": 60, "b": 30} if balance else None)
    both = {k: ragged([*f.train.rows[k], *f.val.rows[k]]) if f.train.rows[k].dtype == object
            else np.concatenate([f.train.rows[k], f.val.rows[k]]) for k in f.train.rows}
    pool = pooled_rows(both, conditions, rng)
    if inner_folds:
        ids = sorted(set(pool["utt_id"]))
        plan = dataclasses.replace(plan, cv_val=[ids[0::2], ids[1::2]])
    return cfg, plan, InMemorySource(train), InMemorySource(val), InMemorySource(pool)


def fit(cfg, plan, train, val, pool, tb_dir):
    torch.set_num_threads(1)
    reports = []
    state = fit_fold(cfg, plan, None if plan.cv_val else train, None if plan.cv_val else val,
                     lambda m, st: reports.append({k: v for k, v in m.items() if k != "seconds"}),
                     refit_source=pool, pool_source=pool if plan.cv_val else None, tb_dir=str(tb_dir))
    return state, reports


@pytest.mark.parametrize("balance,conditions,inner_folds", [(False, ["clean"], False), (True, ["clean", "5dB"], False),
                                                             (True, ["clean", "5dB"], True)])
def test_dense_batches_train_the_same_model(balance, conditions, inner_folds, monkeypatch, tmp_path):
    cfg, plan, train, val, pool = fold(balance, conditions, inner_folds)
    fast, fast_reports = fit(cfg, plan, train, val, pool, tmp_path / "fast")
    monkeypatch.setattr(DenseRows, "fits", staticmethod(lambda rows: False))  # the generic per-row collate
    slow, slow_reports = fit(cfg, plan, train, val, pool, tmp_path / "slow")
    assert fast["history"] == slow["history"] and fast_reports == slow_reports
    for k in ("best_epoch", "best_score", "epoch", "scores", "best_temperature", "phase", "refit_epochs"):
        assert fast.get(k) == slow.get(k), k
    assert fast["best_temperature"] is not None and fast["refit_epochs"] >= 1
    for name in ("model", "best_model"):
        assert fast[name].keys() == slow[name].keys()
        for k in fast[name]:
            assert torch.equal(fast[name][k], slow[name][k]), (name, k)


def test_a_dense_batch_is_the_collated_batch():
    """Every training batch of an epoch equals the generic collate of the same rows; the validation pass is one
    dense batch (up to ``EVAL_ROWS`` rows) holding the generic batches' rows in their order."""
    cfg, plan, train, *_ = fold(True, ["clean", "5dB"], False)
    dense, generic = ShardCache(1 << 30, dense=True), ShardCache(1 << 30, dense=False)
    for epoch in range(2):
        a = list(epoch_batches(train, cfg, epoch, True, cache=dense, corpus_counts={"a": 60, "b": 30}))
        b = list(epoch_batches(train, cfg, epoch, True, cache=generic, corpus_counts={"a": 60, "b": 30}))
        assert len(a) == len(b) > 3 and dense._dense is not None and generic._dense is None
        for x, y in zip(a, b):
            assert x.keys() == y.keys()
            for k in x:
                assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k
    (whole,) = epoch_batches(train, cfg, 0, False, cache=dense)
    parts = list(epoch_batches(train, cfg, 0, False, cache=generic))
    assert len(parts) > 3 and all(len(p["lengths"]) <= cfg.batch_size for p in parts)
    assert whole.keys() == parts[0].keys() and len(whole["lengths"]) == len(train.rows["utt_id"]) < EVAL_ROWS
    for k in whole:
        assert whole[k].dtype == parts[0][k].dtype and torch.equal(whole[k], torch.cat([p[k] for p in parts])), k


@pytest.mark.parametrize("eval_rows,sizes", [(None, [90]), (21, [16] * 5 + [10])])
def test_one_validation_pass_reports_the_batches_loss_and_outputs(eval_rows, sizes, monkeypatch):
    """The loss of large forward passes, taken over slices of the batch size, is the per-batch loss bit for bit; the
    outputs are the same rows. A split larger than one dense chunk (``EVAL_ROWS`` 21, batch 8) is cut into chunks of
    whole batches (21 // 8 * 8 = 16 rows), so the slices are still the batches."""
    import ray_ser.train.loop as loop

    if eval_rows is not None:
        monkeypatch.setattr(loop, "EVAL_ROWS", eval_rows)
    cfg, plan, train, *_ = fold(False, ["clean"], False)
    dense, generic = ShardCache(1 << 30, dense=True), ShardCache(1 << 30, dense=False)
    assert [len(b["lengths"]) for b in epoch_batches(train, cfg, 0, False, cache=dense)] == sizes
    assert cfg.batch_size == 8
    torch.manual_seed(0)
    model = build_fold_model(plan)
    whole = evaluate_batches(model, epoch_batches(train, cfg, 0, False, cache=dense), "cpu", cfg.target,
                             loss_rows=cfg.batch_size)
    batched = evaluate_batches(model, epoch_batches(train, cfg, 0, False, cache=generic), "cpu", cfg.target)
    assert whole[0] == batched[0] and set(whole[0]) == {"loss", "uar", "ccc_valence", "ccc_arousal", "ccc_dominance"}
    assert whole[1].keys() == batched[1].keys()
    for k in whole[1]:
        np.testing.assert_array_equal(whole[1][k], batched[1][k])


def test_only_one_frame_rows_are_dense():
    x1 = ragged([np.zeros((1, 4), np.float16), np.ones((1, 4), np.float16)])
    rows = {"utt_id": np.array(["u", "v"], dtype=object), "x": x1, "label_index": np.array([0, 1]),
            "pdf": np.eye(2, dtype=np.float32), "dims": np.full((2, 3), np.nan, np.float32), "domain": np.zeros(2, int)}
    assert DenseRows.fits(rows)
    t = DenseRows(rows).take(np.array([1, 0]))
    ref = collate({k: v[[1, 0]] for k, v in rows.items()})
    assert t["x"].dtype == torch.float32 and all(torch.equal(t[k], ref[k]) for k in ref)
    assert not DenseRows.fits({**rows, "x": ragged([np.zeros((2, 4)), np.zeros((1, 4))])})
    assert not DenseRows.fits({**rows, "frame_ids": ragged([np.zeros(1), np.zeros(1)])})

