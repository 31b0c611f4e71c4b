"""A training run folder on the synthetic store, made without training: seeded heads written as best checkpoints
(two outer folds and the final model), the per-corpus scaler, two layers, a saliency mask and a sharp temperature,
so predictions from audio can be compared with evaluation's from the stored frames."""

from __future__ import annotations

from pathlib import Path

TEMPERATURE = 0.2
"""Below 1, so the (random) heads' near-uniform probabilities spread out and the top label means something."""


def write_run(out: Path, store: str, scaler: str = "per-corpus", final: bool = True) -> Path:
    import torch

    from ray_ser.train.checkpoints import FINAL, write_best
    from ray_ser.train.config import TrainConfig
    from ray_ser.train.loop import build_fold_model
    from ray_ser.train.plan import plan_fold, resolve_assignment

    cfg = TrainConfig(store=store, model="tiny", layers=[1, 2], conv_channels=16, gru_hidden=16, embed_dim=8,
                      keep_ratio=0.6, scaler=scaler)
    a = resolve_assignment(cfg)
    for fold in [*a.fold_ids[:2], *([FINAL] if final else [])]:
        plan = plan_fold(cfg, a, fold)[0]
        torch.manual_seed(7 + fold)
        state = {"best_model": build_fold_model(plan).state_dict(), "best_epoch": 0, "best_score": 0.5, "epoch": 1,
                 "best_temperature": TEMPERATURE}
        write_best(out, cfg, plan, state)
    return out
