"""The learned layer mix (train.layer_mix): its weights are a softmax over the stored layers in the store's order,
it sums layers the same on frames and on pooled vectors, it fronts every head, its checkpoint round-trips, a fold
trained with layers: all writes layer_weights.parquet, and layer_mix none leaves the model as it was."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from ray_ser.train.config import TrainConfig
from ray_ser.train.loop import build_fold_model, fit_fold
from ray_ser.train.nn import LayerMix, ModelConfig, build_model, masked_mean, mix_weights
from ray_ser.train.synthetic_fold import synthetic_fold
from ray_ser.store import Store


def test_the_mix_is_a_softmax_weighted_sum_of_the_layers_on_frames_and_pooled_vectors():
    torch.manual_seed(0)
    mix = LayerMix(3)
    with torch.no_grad():
        mix.logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
    w = mix.weights().detach()
    np.testing.assert_allclose(w.detach().numpy(), np.exp([0.5, -1.0, 2.0]) / np.exp([0.5, -1.0, 2.0]).sum(), rtol=1e-6)
    assert float(w.sum()) == pytest.approx(1.0) and bool((w > 0).all())
    x, lengths = torch.randn(4, 6, 3 * 5), torch.tensor([6, 2, 4, 1])
    reference = sum(float(w[l]) * x[..., 5 * l:5 * (l + 1)] for l in range(3))  # a plain loop over the layers
    torch.testing.assert_close(mix(x), reference)
    # the mean over real frames and a per-dimension scaler commute with the mix (the pooled path's premise)
    mean, std = torch.randn(15), torch.rand(15) + 0.5
    torch.testing.assert_close(mix(masked_mean((x - mean) / std, lengths)),
                               masked_mean(mix((x - mean) / std), lengths))
    torch.testing.assert_close(mix(x[:, :1]), mix(x)[:, :1])  # a sequence of one pooled vector: the same sum
    with pytest.raises(ValueError, match="3 layers"):
        mix(torch.randn(2, 4, 16))


@pytest.mark.parametrize("arch,pooling,adv,k", [("tcgru", "attention", 0.01, 4), ("tcgru", "mean", 0.0, 0),
                                                ("mlp", "mean", 0.0, 0)])
def test_every_head_trains_behind_the_mix_and_its_weights_move(arch, pooling, adv, k):
    cfg = TrainConfig(arch=arch, pooling=pooling, layer_mix="learned", layer=0, epochs=3, batch_size=16,
                      conv_channels=16, gru_hidden=16, embed_dim=8, mlp_hidden=0 if arch == "mlp" else 8,
                      adv_weight=adv, n_clusters=k, lr=1e-2, checkpoint_every_s=0)
    f = synthetic_fold(cfg, n_train=48, n_val=14, dim=12, frames=(4, 9), n_speakers=4, separation=0.5, n_layers=3)
    assert f.plan.read_layers == [0, 1, 2] and f.plan.model_cfg["n_layers"] == 3
    model = build_fold_model(f.plan)
    assert model.net.mix.n_layers == 3  # behind the global scaler: each layer standardised, then mixed
    state = fit_fold(cfg, f.plan, f.train, f.val, lambda m, s: None)
    weights = mix_weights(state["best_model"])
    assert len(weights) == 3 and sum(weights) == pytest.approx(1.0) and weights != pytest.approx([1 / 3] * 3)
    if adv:
        assert any(r["metric"] == "loss_domain" for r in state["history"])
    if k:
        assert any(r["metric"] == "loss_cluster" for r in state["history"])


def test_the_checkpoint_saves_and_loads_the_mix(tmp_path):
    from ray_ser.train.checkpoints import layer_weights, load_fold_model, write_best

    cfg = TrainConfig(arch="tcgru", layer_mix="learned", layer=0, epochs=2, batch_size=16, conv_channels=8,
                      gru_hidden=8, embed_dim=8, lr=1e-2)
    f = synthetic_fold(cfg, n_train=32, n_val=8, dim=8, frames=(3, 6), n_speakers=4, separation=0.5, n_layers=2)
    state = fit_fold(cfg, f.plan, f.train, f.val, lambda m, s: None)
    path = write_best(tmp_path, cfg, f.plan, state)
    info = json.loads((path / "config.json").read_text())
    assert info["layer_weights"] == layer_weights(f.plan, state["best_model"])
    assert [w["layer"] for w in info["layer_weights"]] == [0, 1]
    fm = load_fold_model(path)
    assert fm.plan.model_cfg["layer_mix"] == "learned"
    expected = build_fold_model(f.plan)
    expected.load_state_dict(state["best_model"])
    x, lengths = torch.randn(3, 5, 8), torch.tensor([5, 4, 2])
    with torch.no_grad():
        torch.testing.assert_close(fm.module(x, lengths)["logits"], expected.eval()(x, lengths)["logits"])
    np.testing.assert_allclose(mix_weights(fm.module.state_dict()), [w["weight"] for w in info["layer_weights"]])


def test_layer_mix_none_leaves_the_model_as_it_was():
    cfg = TrainConfig()
    assert cfg.layer_mix == "none" and cfg.layers == []
    old = {"input_dim": 12, "arch": "tcgru", "pooling": "attention", "conv_channels": 8, "gru_hidden": 8,
           "embed_dim": 4, "mlp_hidden": 5, "dropout": 0.0, "n_classes": 3, "n_dims": 3, "n_domains": 2,
           "adv_weight": 0.01, "n_clusters": 4}  # a checkpoint's model config from before the mix
    for arch in ("tcgru", "mlp"):
        before = {**old, "arch": arch, "n_clusters": 4 if arch == "tcgru" else 0}
        torch.manual_seed(3)
        a = build_model(before)
        torch.manual_seed(3)
        b = build_model(ModelConfig(**before, layer_mix="none", n_layers=3))
        assert list(a.state_dict()) == list(b.state_dict()) and not any("mix" in k for k in a.state_dict())
        for k, v in a.state_dict().items():
            torch.testing.assert_close(v, b.state_dict()[k])
    with pytest.raises(ValueError, match="keep_ratio"):
        TrainConfig(layer_mix="learned", keep_ratio=0.5)
    assert TrainConfig(layer_mix="learned").layers == "all" and TrainConfig(layer_mix="learned", layer=2).layers == []


@pytest.mark.usefixtures("local_ray")
def test_a_fold_with_every_layer_and_a_learned_mix_writes_its_weights(synth_store, tmp_path):
    from ray_ser.analysis.saliency_store import layers_of
    from ray_ser.evaluate.predict import predict_fold
    from ray_ser.train.checkpoints import fold_checkpoints, load_fold_model
    from ray_ser.train.driver import run
    from ray_ser.train.plan import planned_fold, resolve_assignment, stored_layers

    out = tmp_path / "run"
    cfg = TrainConfig(store=synth_store, model="tiny", layers="all", layer_mix="learned", arch="mlp", mlp_hidden=0,
                      epochs=3, batch_size=8, cpus_per_worker=0.5, lr=1e-2, scaler="per-corpus")
    stored = layers_of(synth_store, "tiny")
    assert stored_layers(Store(synth_store), "tiny") == stored and len(stored) > 2
    plan = planned_fold(cfg, Store(cfg.store), resolve_assignment(cfg, Store(cfg.store)), 0)[0]
    assert plan.read_layers == stored and plan.model_cfg["n_layers"] == len(stored)
    summaries = run(cfg, Store(cfg.store), "0", out)
    weights = pl.read_parquet(out / "layer_weights.parquet")
    assert weights.columns == ["fold", "layer", "weight"]
    assert weights["fold"].to_list() == [0] * len(stored) and weights["layer"].to_list() == stored
    assert weights["weight"].sum() == pytest.approx(1.0) and (weights["weight"] > 0).all()
    recorded = json.loads((out / "run.json").read_text())["summaries"][0]["layer_weights"]
    assert recorded == summaries[0]["layer_weights"] == weights.select("layer", "weight").to_dicts()
    fm = load_fold_model(fold_checkpoints(out)[0])
    np.testing.assert_allclose(mix_weights(fm.module.state_dict()), weights["weight"].to_numpy(), rtol=1e-6)
    pred = predict_fold(Store(synth_store), fold_checkpoints(out)[0])
    assert set(pred["utt_id"].to_list()) == set(fm.plan.test)
    assert run(cfg, Store(cfg.store), "0", out)[0]["layer_weights"] == recorded  # a finished fold keeps its weights
    # the report's layer section: the weights beside the store's rankings of the same fold
    from ray_ser.analysis.saliency_store import read_layer_ranking
    from ray_ser.evaluate.layer_weights import layer_info, layer_section

    info = layer_info(out)
    assert info["weights"].equals(weights)
    stored_ranks = read_layer_ranking(synth_store, "tiny").filter(
        (pl.col("fold") == 0) & (pl.col("fold_id") == resolve_assignment(cfg, Store(cfg.store)).id))
    assert not info["ranking"].is_empty()
    for criterion, layer, rank in info["ranking"].select("criterion", "layer", "layer_rank").iter_rows():
        one = stored_ranks.filter((pl.col("criterion") == criterion) & (pl.col("layer") == layer))
        assert one["layer_rank"].to_list() == [rank]  # one fold: its mean score ranks as the stored rank
    page = layer_section(info, tmp_path, "plots/layer_weights.png")
    assert (tmp_path / "plots" / "layer_weights.png").stat().st_size > 0 and "Learned layer mix" in page


@pytest.mark.usefixtures("local_ray")
def test_the_cluster_head_behind_the_mix_predicts_one_layers_ids(synth_store):
    from ray_ser.analysis.layer_selection import ranked_layers
    from ray_ser.train.plan import fold_datasets, planned_fold, resolve_assignment
    from ray_ser.train.reader import frames_dataset

    from ray_ser.analysis.saliency_store import layers_of

    read = layers_of(synth_store, "tiny")[-2:]
    cfg = TrainConfig(store=synth_store, model="tiny", layers=read, layer_mix="learned", n_clusters=4)
    a = resolve_assignment(cfg, Store(cfg.store))
    plan, labels, centroids = planned_fold(cfg, Store(cfg.store), a, 1)
    order = ranked_layers(synth_store, "tiny", a, [1], len(layers_of(synth_store, "tiny")))[0][1]
    assert plan.layer == next(k for k in order if k in read) and plan.read_layers == read
    utts = plan.val[:4]
    mixed = {r["utt_id"]: r for r in frames_dataset(Store(synth_store), "tiny", read, utts, labels, centroids=centroids,
                                                    cluster_layer=plan.layer).take_all()}
    alone = frames_dataset(Store(synth_store), "tiny", plan.layer, utts, labels, centroids=centroids).take_all()
    assert len(alone) == len(mixed) == 4
    for r in alone:  # the same ids as the cluster layer read alone
        np.testing.assert_array_equal(mixed[r["utt_id"]]["frame_ids"], r["frame_ids"])
    assert "frame_ids" in fold_datasets(cfg, Store(cfg.store), plan, labels, centroids)["val"].take(1)[0]
    with pytest.raises(ValueError, match="one layer's k-means"):
        planned_fold(cfg.model_copy(update={"layer_mix": "none"}), Store(cfg.store), a, 1)


def test_the_report_draws_the_weights(tmp_path):
    from ray_ser.evaluate.layer_weights import layer_info, layer_section
    from ray_ser.evaluate.report import write_report

    assert layer_info(tmp_path) is None  # no mix learned: no section
    w = pl.DataFrame({"fold": [0, 0, 0, 1, 1, 1], "layer": [0, 1, 2, 0, 1, 2],
                      "weight": [0.2, 0.5, 0.3, 0.1, 0.6, 0.3]}, schema={"fold": pl.Int32, "layer": pl.Int32,
                                                                        "weight": pl.Float64})
    w.write_parquet(tmp_path / "layer_weights.parquet")
    info = layer_info(tmp_path)
    page = layer_section(info, tmp_path, "plots/lw.png")
    assert "0.550" in page and (tmp_path / "plots" / "lw.png").exists()  # layer 1: mean of 0.5 and 0.6
    metrics = pl.DataFrame({"run": ["r"], "condition": ["clean"], "group_by": ["all"], "group": ["all"],
                            "metric": ["uar"], "k": [1], "value": [0.5], "ci_low": [0.4], "ci_high": [0.6],
                            "n": [10], "n_speakers": [2]})
    html = write_report(tmp_path / "eval", None, metrics, None, layers=info).read_text()
    assert "Learned layer mix" in html and (tmp_path / "eval" / "plots" / "layer_weights.png").exists()


def test_the_train_tune_and_pipeline_jobs_take_the_layer_mix_flags():
    from ray_ser.config import from_args
    from ray_ser.jobs import pipeline
    from ray_ser.jobs import train as job
    from ray_ser.jobs import tune as tune_job

    parse = lambda *a: job.build_config(["--out", "x", *a])[0].train  # noqa: E731
    assert (parse("--layers", "all", "--layer-mix", "learned").layers, parse("--layer-mix", "learned").layers) == \
        ("all", "all")
    assert (parse("--layers", "all").layer_mix, parse("--layers", "2,3").layers) == ("none", [2, 3])
    assert parse("--layer-mix", "learned", "--layer", "2").layers == []  # a mix of the named layer alone
    assert from_args(tune_job.parser(), ["--layer-mix", "search"], tune_job.BINDS)[0].tune.layer_mix == "search"
    assert from_args(pipeline.parser(), ["--layer-mix", "learned"], pipeline.BINDS)[0].train.layer_mix == "learned"


def test_a_run_without_the_mix_keeps_the_identity_it_had_before_the_field():
    from ray_ser.train.driver import config_hash, defining

    cfg = TrainConfig(store="s", layer=2)
    before = {k: v for k, v in cfg.model_dump().items() if k != "layer_mix"}  # a run.json written before the mix
    assert defining(before) == defining(cfg.model_dump())
    mixed = cfg.model_copy(update={"layer_mix": "learned"})
    assert defining(mixed.model_dump()) != defining(before) and config_hash(mixed) != config_hash(cfg)
