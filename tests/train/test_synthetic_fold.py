"""The synthetic in-memory fold that the device benchmark and the CUDA checks train on, here on the CPU."""

from __future__ import annotations

import numpy as np

from ray_ser.train.config import TrainConfig
from ray_ser.train.loop import fit_fold
from ray_ser.train.synthetic_fold import synthetic_fold


def test_a_synthetic_fold_trains_through_fit_fold_with_every_head():
    cfg = TrainConfig(arch="tcgru", epochs=3, batch_size=16, conv_channels=16, gru_hidden=16, embed_dim=8,
                      adv_weight=0.01, n_clusters=4, lr=3e-3, checkpoint_every_s=0)
    f = synthetic_fold(cfg, n_train=48, n_val=14, dim=12, frames=(5, 15), n_speakers=4, separation=0.5)
    assert f.plan.input_dim == 12 and f.plan.n_domains == 4 and f.plan.has_dims and len(f.plan.categories) == 7
    assert not set(f.plan.inner) & set(f.plan.val) and len(f.train) == 48 and len(f.val) == 14
    lengths = f.train.rows["n_frames"]
    assert lengths.min() >= 5 and lengths.max() <= 15 and len(set(lengths)) > 1
    assert [len(a) for a in f.train.rows["frame_ids"]] == [len(a) for a in f.train.rows["x"]] == list(lengths)
    frames = np.concatenate(list(f.train.rows["x"])).astype(np.float64)
    np.testing.assert_allclose(f.plan.norm_mean, frames.mean(0), atol=1e-6)
    state = fit_fold(cfg, f.plan, f.train, f.val, lambda m, s: None)
    loss = [r["value"] for r in state["history"] if r["split"] == "train" and r["metric"] == "loss"]
    metrics = {r["metric"] for r in state["history"] if r["split"] == "train"}
    assert loss[-1] < loss[0] and {"loss_domain", "loss_cluster", "loss_dimensional"} <= metrics


def test_the_trainer_runs_where_ray_lance_and_polars_are_not_installed():
    """What a bare GPU box has: the CUDA checks and the device benchmark need none of them."""
    import subprocess
    import sys

    code = """
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "lancedb", "lance", "polars", "tensorboardX"):
            raise ImportError("not installed here: " + name)
sys.meta_path.insert(0, Blocked())
from ray_ser.train.synthetic_fold import synthetic_fold
from ray_ser.train.config import TrainConfig
from ray_ser.train.loop import fit_fold
cfg = TrainConfig(arch="mlp", mlp_hidden=0, epochs=2, batch_size=8, spec_augment=False)
f = synthetic_fold(cfg, n_train=16, n_val=8, dim=4, frames=(2, 5), n_speakers=2)
print(fit_fold(cfg, f.plan, f.train, f.val, lambda m, s: None)["epoch"])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"
