"""The trainer on a CUDA device: what a GPU worker of ``jobs/train.py`` does, through the same fit_fold, on a
synthetic fold held in memory (so it runs on a GPU machine without Ray or LanceDB). Skipped where torch has no
CUDA, as in CI; run it on a GPU machine: ``pytest tests/test_train_cuda.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_ser.train.config import TrainConfig
from ray_ser.train.loop import (
    build_fold_model,
    epoch_batches,
    fit_fold,
    load_state,
    save_state,
)
from ray_ser.train.synthetic_fold import synthetic_fold

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda") if torch.cuda.is_available() else None


class Killed(Exception):
    pass


def small_cfg(**kw) -> TrainConfig:
    base = dict(epochs=4, patience=10, batch_size=16, conv_channels=32, gru_hidden=32, embed_dim=16,
                checkpoint_every_s=0, lr=3e-3)
    return TrainConfig(**{**base, **kw})


def fold_of(cfg: TrainConfig):
    return synthetic_fold(cfg, n_train=96, n_val=24, dim=48, frames=(20, 60), n_speakers=6, separation=0.3)


def train_losses(state: dict) -> list[float]:
    return [r["value"] for r in state["history"] if r["split"] == "train" and r["metric"] == "loss"]


def test_every_head_trains_on_cuda_and_the_checkpoint_predicts_the_same_on_cpu(tmp_path):
    cfg = small_cfg(arch="tcgru", pooling="attention", adv_weight=0.01, n_clusters=8)
    f = fold_of(cfg)
    state = fit_fold(cfg, f.plan, f.train, f.val, lambda m, s: None, device=CUDA)
    losses = train_losses(state)
    assert losses[-1] < losses[0]
    assert all(v.device.type == "cpu" for v in state["best_model"].values())  # checkpoints load anywhere
    save_state(state, tmp_path)
    weights = load_state(tmp_path)["best_model"]
    on_cpu, on_gpu = build_fold_model(f.plan).eval(), build_fold_model(f.plan).to(CUDA).eval()
    on_cpu.load_state_dict(weights)
    on_gpu.load_state_dict(weights)
    batch = next(epoch_batches(f.val, cfg, 0, False))
    with torch.no_grad():
        a = on_cpu(batch["x"], batch["lengths"])
        b = on_gpu(batch["x"].to(CUDA), batch["lengths"].to(CUDA))
    assert set(a) == set(b) >= {"logits", "dims", "domain_logits", "frame_logits"}
    for k in a:
        np.testing.assert_allclose(b[k].cpu().numpy(), a[k].numpy(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("arch", ["tcgru", "mlp"])
def test_a_run_resumed_from_its_saved_state_on_cuda_is_the_uninterrupted_run(arch, tmp_path):
    """Dropout (in the GRU stack too) and SpecAugment draw on the device's generator; the saved state carries it."""
    cfg = small_cfg(arch=arch, dropout=0.3, spec_augment=True)
    f = fold_of(cfg)
    whole = fit_fold(cfg, f.plan, f.train, f.val, lambda m, s: None, device=CUDA)
    states: list[dict] = []

    def report_then_die(metrics, state):
        states.append(state)
        if state["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        fit_fold(cfg, f.plan, f.train, f.val, report_then_die, device=CUDA)
    save_state(states[-1], tmp_path)  # what a checkpoint holds, read back as a new worker does (map to CPU)
    resumed = fit_fold(cfg, f.plan, f.train, f.val, lambda m, s: None, device=CUDA, state=load_state(tmp_path))
    assert [(r["epoch"], r["split"], r["metric"]) for r in resumed["history"]] == \
        [(r["epoch"], r["split"], r["metric"]) for r in whole["history"]]
    np.testing.assert_allclose([r["value"] for r in resumed["history"]], [r["value"] for r in whole["history"]],
                               rtol=1e-4, atol=1e-5)
    for k, v in whole["model"].items():
        np.testing.assert_allclose(resumed["model"][k].numpy(), v.numpy(), rtol=1e-4, atol=1e-5)


def test_cpu_and_cuda_fit_the_same_model_without_random_draws():
    """Same seed, no dropout or augmentation: the device changes the arithmetic's rounding, not the run."""
    cfg = small_cfg(arch="mlp", mlp_hidden=0, dropout=0.0, spec_augment=False, epochs=3)
    f = fold_of(cfg)
    cpu = fit_fold(cfg, f.plan, f.train, f.val, lambda m, s: None)
    gpu = fit_fold(cfg, f.plan, f.train, f.val, lambda m, s: None, device=CUDA)
    np.testing.assert_allclose(train_losses(gpu), train_losses(cpu), rtol=1e-3)
    for k, v in cpu["model"].items():
        np.testing.assert_allclose(gpu["model"][k].numpy(), v.numpy(), rtol=1e-2, atol=1e-3)
