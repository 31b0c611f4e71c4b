"""The Tune search's config (the experiment config's ``tune`` section); :mod:`ray_ser.train.tune` runs the search."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ray_ser.section import Section


class TuneConfig(Section):
    """Ray Tune search; trials never read the held-out folds' speakers."""

    num_samples: int = Field(16, ge=1)
    """Trials."""
    max_epochs: int = Field(12, ge=1)
    """Epochs per trial (ASHA's max_t)."""
    grace_period: int = Field(2, ge=1)
    """Epochs before ASHA may stop a trial."""
    time_budget_s: float | None = Field(None, gt=0)
    """Seconds for the whole search (null: no limit)."""
    seed: int = 0
    """Seed of the search algorithm."""
    held_out_folds: list[int] | None = None
    """Outer folds whose speakers no trial reads (null: the first three); report on these."""
    search_folds: int = Field(2, ge=1)
    """Folds of the remaining speakers each trial trains and validates on."""
    layers: list[int] | None = None
    """Layers to search (null: the top_layers best by the layer prior)."""
    top_layers: int = Field(3, ge=0)
    """With layers null: search the this-many layers the prior ranks first (0: every layer)."""
    layer_mix: Literal["none", "learned", "search"] = "none"
    """none: each trial reads the searched layer; learned: each trial mixes every stored layer by learned weights;
    search: the learned mix is a choice beside the searched layer."""
    arch: Literal["tcgru", "mlp"] = "tcgru"
    """Model the trials train."""
    batch_size: int = Field(64, ge=1)
    """Batch size of every trial."""
    cpus_per_trial: float = Field(0.5, gt=0)
    """CPUs each trial holds (fractions share cores)."""
    max_concurrent: int = Field(2, ge=1)
    """Trials at once."""
    name: str = "search"
    """Tune experiment name under the output folder."""
