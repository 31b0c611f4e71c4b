"""Run folders of untrained (seeded) fold checkpoints on the synthetic store: what evaluation reads, without training."""

from __future__ import annotations

from pathlib import Path


def write_untrained_run(out: Path, store: str, seed: int, folds=None, temperature: float | None = None,
                        **train) -> Path:
    """One best checkpoint per outer fold (``folds``: those only, given as a callable of the fold assignment or a
    list) of a tiny-model TrainConfig (``train``: its overrides, layer 1 by default), each fold's weights drawn with
    seed ``seed + fold``; ``temperature``: the checkpoints' fitted temperature."""
    import torch

    from ray_ser.train.checkpoints import write_best
    from ray_ser.train.config import TrainConfig
    from ray_ser.store import Store
    from ray_ser.train.loop import build_fold_model
    from ray_ser.train.plan import planned_fold, resolve_assignment

    cfg = TrainConfig(store=store, model="tiny", **{"layer": 1, **train})
    a = resolve_assignment(cfg, Store(cfg.store))
    for fold in (folds(a) if callable(folds) else folds) if folds is not None else a.fold_ids:
        plan = planned_fold(cfg, Store(cfg.store), a, fold)[0]
        torch.manual_seed(seed + fold)
        state = {"best_model": build_fold_model(plan).state_dict(), "best_epoch": 0, "best_score": 0.5, "epoch": 1,
                 **({} if temperature is None else {"best_temperature": temperature})}
        write_best(out, cfg, plan, state)
    return out
