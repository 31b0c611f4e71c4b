"""A training run folder on the synthetic store, made without training: seeded heads written as best checkpoints
(two outer folds and the final model), the per-corpus scaler, two layers, a saliency mask and a sharp temperature,
so predictions from audio can be compared with evaluation's from the stored frames."""

from __future__ import annotations

from pathlib import Path

TEMPERATURE = 0.2
"""Below 1, so the (random) heads' near-uniform probabilities spread out and the top label means something."""


def write_run(out: Path, store: str, scaler: str = "per-corpus", final: bool = True) -> Path:
    from ray_ser.train.checkpoints import FINAL
    from untrained_runs import write_untrained_run

    return write_untrained_run(out, store, 7, lambda a: [*a.fold_ids[:2], *([FINAL] if final else [])], TEMPERATURE,
                               layer=None, layers=[1, 2], conv_channels=16, gru_hidden=16, embed_dim=8,
                               keep_ratio=0.6, scaler=scaler)
