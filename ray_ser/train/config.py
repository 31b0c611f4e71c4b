"""What defines a training run: :class:`TrainConfig`, the ``train`` section of the experiment config and the
``best_config.json`` a Tune search writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ray_ser.fm.registry import DEFAULT_MODEL


class TrainConfig(BaseModel):
    """Everything that defines a training run; ``best_config.json`` of a Tune search is one of these."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    store: str = "store"
    """LanceDB store to read (in an experiment config: store.uri unless set here)."""
    model: str = DEFAULT_MODEL
    """Model key of the embeddings (in an experiment config: the extract section's key unless set here)."""
    corpora: list[str] = []
    """Corpora to train on (empty: every labelled utterance of the store; in an experiment config: data.corpora)."""
    label_set: list[str] | None = None
    """Categories to train and score on: four (angry, happy, neutral, sad), five (adds fear) or a list of shared
    names; every corpus's labels go through the harmonisation table into it, and utterances outside it are left
    out and counted (null: the corpora's own category list, which they must share)."""
    scaler: Literal["global", "per-corpus"] = "global"
    """Input standardisation: one scaler fitted on the training utterances, or each corpus standardised by its own
    training speakers' statistics (a corpus scored zero-shot: by its own unlabelled statistics)."""
    balance: Literal["none", "corpus"] = "none"
    """corpus: each epoch draws every training corpus's utterances with probability (smallest corpus / its size),
    afresh each epoch, so the corpora weigh the same; none: every utterance every epoch."""
    final: bool = False
    """Also train one model on all speakers of the training corpora (DIR/final/best), its epoch count chosen by inner
    cross-validation over them (final_inner_folds), then refit on all: the model zero-shot scoring uses."""
    final_inner_folds: int = Field(3, ge=1)
    """The final model's epoch count comes from the mean validation curve of this many speaker-disjoint inner folds
    of all its training speakers (stratified by corpus), then it is refit on all of them; 1, or training copies other
    than clean: early stopping on one inner validation split, then the refit."""
    final_selection: Literal["speakers", "corpora"] = "speakers"
    """How the final model's epoch count is chosen: inner folds of speakers (final_inner_folds, stratified by
    corpus), or corpora: each training corpus in turn scores a model trained on the others, which selects for
    transfer to unseen corpora (with clean training copies; a single training corpus falls back to speakers)."""
    outer_folds: str = "all"
    """Outer folds to train: all, none (with final: the final model only) or a comma-separated list."""
    layer: int | None = None
    """Layer to read; null: chosen per outer fold on its training speakers (ray_ser.analysis.layer_selection)."""
    layers: list[int] | Literal["all"] = []
    """Several layers, each frame their vectors concatenated in this order (overrides ``layer``; the mask, when
    keep_ratio < 1, is each layer's own fold mask); all: every layer stored with frames, in layer order."""
    auto_layers: int = Field(1, ge=1)
    """Without ``layer``/``layers``: concatenate each outer fold's this many best layers by the layer criterion on
    its training speakers (ray_ser.analysis.layer_selection.ranked_layers), in layer order."""
    layer_mix: Literal["none", "learned"] = "none"
    """learned: a softmax-weighted sum of the input layers, the weights learned with the head (s3prl's featurizer),
    in front of any head; each layer standardised first by the run's scaler; with neither ``layer`` nor ``layers``
    it mixes every stored layer (layers: all). Each fold's weights go to run.json and layer_weights.parquet. none:
    the layers concatenated."""
    conditions: list[str] = ["clean"]
    """Training copies: more than one = multi-condition training (one copy per utterance and epoch)."""
    keep_ratio: float = Field(1.0, gt=0, le=1)
    """Fraction of each layer's dimensions kept by the fold's saliency mask (1.0: all)."""
    n_clusters: int = Field(0, ge=0)
    """Frame-cluster head's k (0 = off); ids from fold f's k-means centroids of the same layer."""
    cluster_weight: float = Field(0.1, ge=0)
    """Loss weight of the frame-cluster head."""
    adv_weight: float = Field(0.0, ge=0)
    """Gradient-reversal weight of the domain head (0 = head off; seed 002 uses 0.01)."""
    domain: Literal["speaker", "corpus"] | None = None
    """What the domain head predicts (null: corpus when training on several corpora, else speaker)."""
    target: Literal["pdf", "onehot"] = "pdf"
    """Categorical target: the graders' vote distribution (pdf, soft) or the consensus label (onehot)."""
    dimensional: bool = True
    """A/V/D head with the CCC loss when the corpus has those scores."""
    arch: Literal["tcgru", "mlp"] = "tcgru"
    """Model: the TC-GRU multi-task network, or an MLP on pooled frames."""
    pooling: Literal["attention", "mean", "last"] = "attention"
    """How frames become one vector per utterance."""
    conv_channels: int = Field(256, ge=1)
    """TC-GRU: channels of the temporal convolution."""
    gru_hidden: int = Field(256, ge=1)
    """TC-GRU: hidden size of the GRU."""
    embed_dim: int = Field(128, ge=1)
    """TC-GRU: size of the utterance embedding the heads read."""
    mlp_hidden: int = Field(256, ge=0)
    """MLP hidden width (0: a linear model on the pooled input)."""
    dropout: float = Field(0.2, ge=0, lt=1)
    """Dropout rate."""
    spec_augment: bool = True
    """Time and feature masking of the training frames."""
    lr: float = Field(5e-4, gt=0)
    """Learning rate (AdamW)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW decoupled weight decay."""
    batch_size: int = Field(64, ge=1)
    """Utterances per batch."""
    epochs: int = Field(30, ge=1)
    """Most epochs per fold."""
    patience: int = Field(8, ge=1)
    """Epochs without a better validation score before early stopping."""
    refit: bool = False
    """After early stopping on the inner validation speakers, train a fresh model on all of the fold's training
    speakers (inner + validation) for the selected number of epochs; that model is the fold's checkpoint."""
    seed: int = 0
    """Seed of initialisation, shuffling and augmentation."""
    folds: str = "auto"
    """Fold rule when the store has no saliency folds (auto: LOSO up to 12 speakers, else 5 folds)."""
    fold_seed: int = 0
    """Seed of a K-fold rule."""
    inner_share: float = Field(0.15, gt=0, lt=1)
    """Share of a fold's training speakers held out as inner validation speakers."""
    inner_folds: int = Field(1, ge=1)
    """1: the selection phase early-stops on one inner split (``inner_share`` of the training speakers). k > 1: the
    epoch count is chosen on the mean validation curve of k speaker-disjoint inner folds of all training speakers
    (each fold trains every epoch), then the model is refit on all of them (implies ``refit``): on a small corpus
    one validation speaker makes a noisy choice."""
    num_workers: int = Field(1, ge=1)
    """Ray Train workers per fold (DDP)."""
    cpus_per_worker: float = Field(1.0, gt=0)
    """CPUs each Ray Train worker holds."""
    checkpoint_every_s: float = Field(30.0, ge=0)
    """A worker reports to Ray Train (the epoch's metrics and a checkpoint of the fold's state) at most this often
    and after the last epoch (0: every epoch). Train V2 takes one report per controller poll (2 s), more than a
    small model's epoch; a killed run redoes at most this much. Every epoch is in the history and TensorBoard."""
    pooled: bool = True
    """A model that sees only each utterance's mean frame (arch mlp without spec_augment) trains on mean frames read
    once per run, each fold in memory as a Ray task, several folds at once (cpus_per_worker each); false: the frame
    path (a Ray Train run per fold, num_workers workers reading the frames). The same models either way."""
    fold_slots: int = Field(0, ge=0)
    """Frame path: at most this many folds' Ray Train runs at once (0: as many as the cluster's CPUs hold, one CPU
    left for the reads; 1: one after another). The same models either way."""
    cache_mb: int = Field(2048, ge=0)
    """A worker's training (and validation) shard up to this size stays in memory after the first epoch's read
    (0: stream from Ray Data every epoch)."""
    device: Literal["auto", "gpu", "cpu"] = "auto"
    """Where the Ray Train workers train: gpu asks Ray for one GPU per worker even when no GPU node is up yet (the
    cluster's autoscaler adds GPU nodes for them); cpu never asks for one; auto is gpu when a node has GPUs or the
    autoscaler has a node type with GPUs, else cpu. A request no node and no node type could meet is refused."""
    use_gpu: bool | None = None
    """Deprecated, use device: true is device gpu, false device cpu (null: device decides)."""

    @field_validator("label_set", mode="before")
    @classmethod
    def _label_set(cls, value: Any) -> list[str] | None:
        from ray_ser.corpora.label_sets import resolve

        return resolve(value)

    @model_validator(mode="after")
    def _use_gpu_is_device(self) -> "TrainConfig":
        """The deprecated ``use_gpu`` becomes ``device`` (one truth for the driver and the run's hash)."""
        if self.use_gpu is not None:
            wanted = "gpu" if self.use_gpu else "cpu"
            if "device" in self.model_fields_set and self.device not in ("auto", wanted):
                raise ValueError(f"use_gpu {self.use_gpu} contradicts device {self.device!r}: set device only")
            self.__dict__.update(device=wanted, use_gpu=None)
        return self

    @model_validator(mode="after")
    def _layer_mix(self) -> "TrainConfig":
        """A learned mix with no layer named mixes every stored layer; it sums whole layers, so no saliency mask."""
        if self.layer_mix == "learned":
            if self.keep_ratio < 1.0:
                raise ValueError(f"layer_mix learned sums whole layers: keep_ratio {self.keep_ratio} masks each layer "
                                 "differently, set keep_ratio 1.0 (or layer_mix none)")
            if self.layer is None and not self.layers:
                self.__dict__["layers"] = "all"
        return self

    @model_validator(mode="after")
    def _cv_refits(self) -> "TrainConfig":
        if self.inner_folds > 1:
            if self.conditions != ["clean"]:
                raise ValueError(f"inner_folds > 1 trains and validates on the clean copies: multi-condition "
                                 f"training ({self.conditions}) needs inner_folds=1")
            self.refit = True  # cross-validation picks an epoch count: only a refit can use it
        if self.outer_folds.strip().lower() == "none" and not self.final:
            raise ValueError("outer_folds none trains nothing without final: set final (--final) as well")
        return self

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides: Any) -> "TrainConfig":
        data = json.loads(Path(path).read_text())
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def plan_spec(self):
        """The fields its fold plans depend on (:class:`ray_ser.analysis.fold_plans.PlanSpec`): the analysis stage
        builds a plan from these, training reads the plan back by their hash."""
        from ray_ser.analysis.fold_plans import PlanSpec

        return PlanSpec(store=self.store, model=self.model, corpora=self.corpora, label_set=self.label_set,
                        conditions=self.conditions, seed=self.seed, inner_share=self.inner_share,
                        inner_folds=self.inner_folds, final_selection=self.final_selection, domain=self.domain,
                        adversarial=self.adv_weight > 0, layer=self.layer, layers=self.layers,
                        auto_layers=self.auto_layers, keep_ratio=self.keep_ratio, layer_mix=self.layer_mix,
                        n_clusters=self.n_clusters, dimensional=self.dimensional, scaler=self.scaler)
