"""The evaluation stage's configs: out-of-fold scoring and its tables, and the cross-corpus matrix (the experiment
config's ``evaluate`` and ``crosscorpus`` sections)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ray_ser.section import Section


class EvaluateConfig(Section):
    """Out-of-fold batch predictions and the per-speaker, per-gender, per-SNR tables."""

    runs: list[str] = []
    """Training run folders to score (several: an ensemble); empty: this experiment's run folder."""
    by: list[str] = []
    """Extra grouping columns (a manifest column, an extra key, or <key>_bin)."""
    conditions: list[str] | None = None
    """Conditions to score (null: every stored evaluation condition)."""
    n_boot: int = Field(500, ge=1)
    """Speaker-level bootstrap resamples of each interval."""
    seed: int = 0
    """Seed of the bootstrap."""
    batch_size: int = Field(32, ge=1)
    """Utterances per prediction batch."""
    zero_shot: list[str] = []
    """Corpora to score zero-shot with the run's final model (train.final), corpora it never trained on; empty:
    the out-of-fold scores of the run's own corpora."""
    race: bool = True
    """Race the model against the probe baseline on analysis.probe_layers (refitted on the run's own outer folds, or
    on its training corpora for zero-shot scores): metrics rows uar_minus_probe with a paired speaker interval."""


class CrossCorpusConfig(Section):
    """The leave-one-corpus-out matrix over the experiment's corpora (ray-ser crosscorpus)."""

    enabled: bool = False
    """ray-ser run ends with the matrix (needs two or more corpora and, when their category lists differ, a label set)."""
    rows: Literal["all", "loco"] = "all"
    """all: every corpus alone (out-of-fold and zero-shot cells) and every leave-one-corpus-out set; loco: the
    leave-one-corpus-out models only (one final model each, the cheap way to compare training options)."""
