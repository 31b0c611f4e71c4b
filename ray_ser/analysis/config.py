"""The analysis stage's config: saliency, layer criteria, probes, frame clusters and pruned frames (the experiment
config's ``analysis`` section, with its ``clusters`` and ``prune`` sub-sections)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ray_ser.analysis.probe import DEFAULT_CS
from ray_ser.analysis.saliency import DEFAULT_BINS
from ray_ser.section import Section


class ClusterConfig(Section):
    """Frame k-means per outer fold (pseudo-emotion labels for the cluster head)."""

    layer: str = "auto"
    """Layer whose frames are clustered: an index, or auto (the layer criterion's pick per fold)."""
    k: list[int] = [50, 100, 150]
    """Cluster counts; one k-means per count and fold."""
    fold: str = "all"
    """all | F[,F...] outer folds (-1 = all speakers, never for evaluation)."""
    conditions: list[str] | None = None
    """Conditions to assign cluster ids to (null: every stored one)."""
    assign: Literal["test", "all"] = "test"
    """test: ids only for each fold's test speakers (out of fold); all: every utterance."""
    sample_frames: int = Field(20000, ge=1)
    """Training frames drawn for k-means."""
    seed: int = 0
    """Seed of the frame sample and of k-means."""


class PruneConfig(Section):
    """Saliency-pruned copies of one layer's frames."""

    layer: int | None = None
    """The layer whose frames are pruned (required by `ray-ser prune`)."""
    keep_ratio: float = Field(0.6, gt=0, le=1)
    """Fraction of dimensions each fold's mask keeps."""
    conditions: list[str] | None = None
    """Conditions to copy (null: every condition with frames)."""
    saliency_condition: str = "clean"
    """The condition whose saliency ranks the dimensions."""
    score: Literal["ccs", "mis"] = "ccs"
    """Saliency score that ranks the dimensions."""


class AnalysisConfig(Section):
    """Saliency, layer criteria, probes and clusters; each fitted per outer fold on its training speakers."""

    condition: str = "clean"
    """Condition the saliency, probes and clusters are fitted on."""
    folds: str = "auto"
    """Outer folds when the store has none yet: auto (LOSO up to 12 speakers, else 5) | loso | manifest | K."""
    seed: int = 0
    """Seed of a K-fold split."""
    mis: bool = True
    """Mutual-information saliency besides CCS."""
    n_bins: int = Field(DEFAULT_BINS, ge=2)
    """Quantile bins of the mutual-information estimator."""
    layer_criterion: str | None = None
    """Criterion that picks each fold's layers (null: the default, lda_inner; none: skip the choice)."""
    probe: bool = False
    """Fit a linear probe per layer and compare it with the saliency ranking."""
    probe_layers: str | None = None
    """A multi-layer probe baseline: layers such as 2,3,4, or auto:K (each fold's K best layers)."""
    probe_c: list[float] = list(DEFAULT_CS)
    """Inverse regularisation strengths the probes choose from by inner cross-validation."""
    probe_readout: str = "none"
    """Per-utterance read-outs of the probe baseline, comma-separated: none, l2, ssqrt."""
    clusters: ClusterConfig = ClusterConfig()
    """Frame clusters."""
    prune: PruneConfig = PruneConfig()
    """Pruned frames."""

    @field_validator("layer_criterion")
    @classmethod
    def _criterion(cls, value: str | None) -> str | None:
        return value if value not in (None, "") else None
