"""The serving stages' typed options: what ``ray-ser export`` writes and what ``ray-ser predict`` scores, built by the
jobs' argparse layer and taken by their ``run(cfg, store)``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ExportConfig(BaseModel):
    """``ray-ser export``: a trained run folder written as a bundle with its model card."""

    model_config = ConfigDict(extra="forbid")

    run: str
    """Training run folder (jobs/train.py --out)."""
    out: str
    """Bundle folder to write."""
    model: Literal["auto", "final", "fold-ensemble"] = "auto"
    """The run's final model, or every outer fold's model averaged (auto: final when it exists)."""
    eval: str | None = None
    """Evaluation folder the model card reads (None: RUN/eval)."""


class PredictConfig(BaseModel):
    """``ray-ser predict``: new audio scored by a bundle, a run folder or a checkpoint folder."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str
    """Bundle folder, run folder or checkpoint folder."""
    input: list[str] = Field(min_length=1)
    """Audio files, folders (recursive), CSVs with a path column, manifests, object-store URIs."""
    out: str
    """Predictions Parquet file (errors.parquet is written beside it)."""
    # the values below are checked where they are used (the windowing, the predictor), as they were from the flags
    window: float | None = None
    hop: float | None = None
    scaler: Literal["train", "input"] = "train"
    which: Literal["auto", "final", "fold-ensemble"] = "auto"
    foundation_model: str | None = None
    max_seconds: float | None = None
    batch_size: int = 8
    threads: int | None = None
    engine: Literal["local", "ray"] = "local"
    actors: int | None = None
    cpus_per_actor: float | None = None
