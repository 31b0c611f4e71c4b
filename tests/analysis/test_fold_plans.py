"""Fold plans are written by the analysis stage and read by training (ray_ser.analysis.fold_plans): the plan read
back is the plan built in memory, field by field; a stored plan is re-read, never rebuilt; two configs never share
one; a missing plan is refused naming the stage; a failed build leaves no half-written plan."""

from __future__ import annotations

import pytest
from multicorpus import MODEL, build_multi_store

from ray_ser.analysis import fold_plans as fp
from ray_ser.store import catalog
from ray_ser.train.config import TrainConfig
from ray_ser.train.plan import PlanMissing, plan_fold, prepare_plans, resolve_assignment
from ray_ser.store import Store


@pytest.fixture
def store(tmp_path) -> str:
    return build_multi_store(tmp_path, per_class=2, conditions=("clean",), arousal={"gamma": True})


def cfg(store, **kw) -> TrainConfig:
    base = dict(store=store, model=MODEL, layer=0, corpora=["alpha", "gamma"], label_set="four", folds="3")
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("kw", [{}, {"scaler": "per-corpus", "adv_weight": 0.5}, {"inner_folds": 3},
                                {"layer": None, "layers": [0, 1], "keep_ratio": 0.5}, {"layer": 1, "n_clusters": 3}])
def test_the_plan_read_back_is_the_plan_built_field_by_field(store, kw):
    c = cfg(store, **kw)
    a = resolve_assignment(c, Store(c.store))
    spec = c.plan_spec()
    folds = [0, a.fold_ids[-1], -1]
    built = {f: fp.build_plan(spec, a, f) for f in folds}
    assert sorted(fp.write_fold_plans(spec, a, folds)) == sorted(folds)
    for f in folds:
        read = fp.read_fold_plan(spec, a.id, f)
        assert read.to_dict() == built[f].to_dict()
        plan, labels, centroids = plan_fold(c, Store(c.store), a, f)
        assert {**plan.to_dict(), "model_cfg": {}} == built[f].to_dict()  # training adds the model's fields alone
        assert plan.model_cfg["input_dim"] == built[f].input_dim and plan.model_cfg["n_classes"] == 4
        assert labels.categories == built[f].categories and labels.dim_scale == built[f].dim_scale
        assert (centroids is not None) == bool(c.n_clusters)
        if c.n_clusters:
            assert centroids.shape == (3, len(built[f].norm_mean))
        if c.adv_weight:
            assert labels.domains == plan.domains and plan.n_domains == len(plan.domains) > 0


def test_a_stored_plan_is_re_read_never_rebuilt(store, monkeypatch, capsys):
    c = cfg(store)
    a = resolve_assignment(c, Store(c.store))
    assert prepare_plans(c, Store(c.store), a, [0, 1]) == [0, 1]
    assert "fold plans: 2 built (analysis), 0 stored" in capsys.readouterr().out
    first = plan_fold(c, Store(c.store), a, 0)[0]

    def refuse(*args, **kw):
        raise AssertionError("a stored plan was rebuilt")

    monkeypatch.setattr(fp, "build_plan", refuse)
    assert prepare_plans(c, Store(c.store), a, [0, 1]) == [] and fp.write_fold_plans(c.plan_spec(), a, [0, 1]) == []
    assert plan_fold(c, Store(c.store), a, 0)[0].to_dict() == first.to_dict()
    rows = catalog.read(store, catalog.FOLD_PLANS, MODEL, columns=["fold", "plan_key"])
    assert rows.num_rows == 2  # one row per plan


def test_two_configs_never_share_a_plan_and_a_missing_one_names_the_stage(store):
    c = cfg(store)
    a = resolve_assignment(c, Store(c.store))
    prepare_plans(c, Store(c.store), a, [0])
    other = c.model_copy(update={"keep_ratio": 0.5})
    assert other.plan_spec().key != c.plan_spec().key
    # fields that do not change a plan (the model's size, the learning rate) share it
    assert c.model_copy(update={"lr": 0.01, "gru_hidden": 8}).plan_spec().key == c.plan_spec().key
    with pytest.raises(PlanMissing, match="ray-ser saliency"):
        plan_fold(other, Store(other.store), a, 0)
    with pytest.raises(PlanMissing, match="ray-ser saliency"):
        prepare_plans(other, Store(other.store), a, [0], build=False)
    with pytest.raises(PlanMissing):
        plan_fold(c, Store(c.store), a, 1)


def test_a_failed_build_leaves_no_half_written_plan(store, monkeypatch):
    c = cfg(store)
    a = resolve_assignment(c, Store(c.store))
    real = fp.build_plan

    def crash_on_one(spec, assignment, fold, read=None, store=None):
        if fold == 1:
            raise RuntimeError("killed while building fold 1")
        return real(spec, assignment, fold, read, store=store)

    monkeypatch.setattr(fp, "build_plan", crash_on_one)
    with pytest.raises(RuntimeError):
        fp.write_fold_plans(c.plan_spec(), a, [0, 1, 2])
    assert fp.stored_folds(c.plan_spec(), a.id) == {0}  # fold 0 whole, fold 1 absent, nothing in between
    monkeypatch.setattr(fp, "build_plan", real)
    assert fp.write_fold_plans(c.plan_spec(), a, [0, 1, 2]) == [1, 2]
    # the analysis stage, having rewritten what plans are made from, replaces them (one row per plan still)
    assert fp.write_fold_plans(c.plan_spec(), a, [0], rebuild=True) == [0]
    assert catalog.read(store, catalog.FOLD_PLANS, MODEL, columns=["fold"]).num_rows == 3
