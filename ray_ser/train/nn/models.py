"""Emotion models over a layer's frames: the TC-GRU of the papers and an EmoBox-style MLP baseline.

Both take (x (B, T, D), lengths (B,)) and return a dict with "embedding" and the outputs of the heads that are
on: "logits" (categorical), "dims" (A/V/D), "domain_logits" (behind gradient reversal), "frame_logits" (TC-GRU).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ray_ser.train.nn.grl import GradientReversal
from ray_ser.train.nn.mix import LAYER_MIXES, LayerMix
from ray_ser.train.nn.pooling import (
    POOLINGS,
    lengths_to_mask,
    make_pooling,
    masked_mean,
)

ARCHS = ("tcgru", "mlp")


@dataclass
class ModelConfig:
    """Architecture and heads of a model; a head is off when its size is 0 (or None)."""

    input_dim: int
    arch: str = "tcgru"
    conv_channels: int = 256
    kernel: int = 3
    gru_hidden: int = 256
    gru_layers: int = 2
    embed_dim: int = 128
    pooling: str = "attention"
    n_classes: int = 0
    n_dims: int = 0
    n_domains: int = 0
    adv_weight: float = 0.01
    n_clusters: int = 0
    dropout: float = 0.2
    mlp_hidden: int = 256
    """MLP hidden width; 0 makes the MLP a linear model: the pooled (standardised) input is the embedding."""
    layer_mix: str = "none"
    """learned: a :class:`~ray_ser.train.nn.mix.LayerMix` front sums the ``n_layers`` layers concatenated in the
    input by learned softmax weights, so the network reads one layer's width; none: the concatenation as it is."""
    n_layers: int = 1
    """Layers concatenated in each input frame (``input_dim`` is n_layers times a layer's kept width)."""

    @property
    def width(self) -> int:
        """The width the network reads: one layer's after a learned mix, else the whole input."""
        return self.input_dim // self.n_layers if self.layer_mix == "learned" else self.input_dim

    def __post_init__(self) -> None:
        for name in ("n_classes", "n_dims", "n_domains", "n_clusters"):  # None (e.g. Tune's "none") = head off
            if getattr(self, name) is None:
                setattr(self, name, 0)
        if self.arch not in ARCHS:
            raise ValueError(f"ModelConfig: unknown arch {self.arch!r}; expected one of {ARCHS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"ModelConfig: unknown pooling {self.pooling!r}; expected one of {POOLINGS}")
        if self.n_dims not in (0, 3):
            raise ValueError(f"ModelConfig: n_dims must be 0 or 3 (arousal, valence, dominance), got {self.n_dims}")
        if self.mlp_hidden < 0:
            raise ValueError(f"ModelConfig: mlp_hidden must be >= 0 (0 = linear), got {self.mlp_hidden}")
        for name in ("input_dim", "conv_channels", "kernel", "gru_hidden", "gru_layers", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_classes", "n_domains", "n_clusters"):
            if getattr(self, name) < 0:
                raise ValueError(f"ModelConfig: {name} must be >= 0 (0 = head off), got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"ModelConfig: dropout must be in [0, 1), got {self.dropout}")
        if self.layer_mix not in LAYER_MIXES:
            raise ValueError(f"ModelConfig: unknown layer_mix {self.layer_mix!r}; expected one of {LAYER_MIXES}")
        if self.n_layers < 1 or (self.layer_mix == "learned" and self.input_dim % self.n_layers):
            raise ValueError(f"ModelConfig: input_dim {self.input_dim} is not n_layers={self.n_layers} layers of "
                             "equal width")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (for config.json next to a checkpoint)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error (a typo must not silently become a default)."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"ModelConfig.from_dict: unknown keys {sorted(unknown)}")
        return cls(**d)


class Heads(nn.Module):
    """The utterance-level heads on the embedding: categorical, A/V/D, and the domain classifier behind a GRL."""

    def __init__(self, cfg: ModelConfig, width: int | None = None):
        super().__init__()
        E = width or cfg.embed_dim
        self.categorical = nn.Linear(E, cfg.n_classes) if cfg.n_classes else None
        self.dimensional = nn.Linear(E, cfg.n_dims) if cfg.n_dims else None
        self.domain = nn.Sequential(
            GradientReversal(cfg.adv_weight), nn.Linear(E, E), nn.ReLU(), nn.Dropout(cfg.dropout),
            nn.Linear(E, cfg.n_domains),
        ) if cfg.n_domains else None
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, embedding: Tensor) -> dict[str, Tensor]:
        out = {"embedding": embedding}
        h = self.dropout(embedding)
        if self.categorical is not None:
            out["logits"] = self.categorical(h)
        if self.dimensional is not None:
            out["dims"] = self.dimensional(h)
        if self.domain is not None:
            out["domain_logits"] = self.domain(h)
        return out


def _check_input(x: Tensor, lengths: Tensor, input_dim: int) -> Tensor:
    """Validate (x, lengths); return the lengths on the CPU (pack_padded_sequence wants them there)."""
    if x.dim() != 3 or x.shape[-1] != input_dim:
        raise ValueError(f"model input must be (B, T, {input_dim}), got {tuple(x.shape)}")
    lengths_cpu = lengths.detach().cpu().long()
    if lengths_cpu.shape != (x.shape[0],):
        raise ValueError(f"lengths must be ({x.shape[0]},), got {tuple(lengths.shape)}")
    if len(lengths_cpu) and (lengths_cpu.min() < 1 or lengths_cpu.max() > x.shape[1]):
        raise ValueError(f"lengths must be in [1, T={x.shape[1]}], got {lengths_cpu.min()}..{lengths_cpu.max()}")
    return lengths_cpu


class TCGRU(nn.Module):
    """Temporal Conv1d (ReLU, dropout) -> packed multi-layer GRU -> pooling -> embedding -> heads.

    Padding frames are zeroed before the convolution and never enter the recurrence, so an utterance gets the
    same output alone or in a padded batch. With n_clusters > 0 a frame head predicts each frame's k-means id.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.mix = LayerMix(cfg.n_layers) if cfg.layer_mix == "learned" else None
        self.conv = nn.Conv1d(cfg.width, cfg.conv_channels, cfg.kernel, padding="same")
        self.gru = nn.GRU(cfg.conv_channels, cfg.gru_hidden, num_layers=cfg.gru_layers, batch_first=True,
                          dropout=cfg.dropout if cfg.gru_layers > 1 else 0.0)
        self.pool = make_pooling(cfg.pooling, cfg.gru_hidden)
        self.embed = nn.Sequential(nn.Linear(cfg.gru_hidden, cfg.embed_dim), nn.ReLU())
        self.heads = Heads(cfg)
        self.frame_head = nn.Linear(cfg.gru_hidden, cfg.n_clusters) if cfg.n_clusters else None
        self.dropout = nn.Dropout(cfg.dropout)

    def frames(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Per-frame GRU outputs (B, T, gru_hidden); zeros on padding."""
        lengths_cpu = _check_input(x, lengths, self.cfg.input_dim)
        if self.mix is not None:
            x = self.mix(x)
        T = x.shape[1]
        real = lengths_to_mask(lengths_cpu.to(x.device), T).unsqueeze(-1)
        h = self.conv(x.masked_fill(~real, 0.0).transpose(1, 2)).transpose(1, 2)
        h = self.dropout(torch.relu(h))
        packed = pack_padded_sequence(h, lengths_cpu, batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        return pad_packed_sequence(out, batch_first=True, total_length=T)[0]

    def forward(self, x: Tensor, lengths: Tensor) -> dict[str, Tensor]:
        frames = self.frames(x, lengths)
        out = self.heads(self.embed(self.pool(frames, lengths.to(frames.device))))
        if self.frame_head is not None:
            out["frame_logits"] = self.frame_head(self.dropout(frames))
        return out


class MLPHead(nn.Module):
    """EmoBox-style baseline: masked mean of the frames -> Linear-ReLU-Dropout-Linear(-ReLU) embedding -> heads;
    with ``mlp_hidden=0`` the mean itself is the embedding (dropout, then linear heads: a multinomial probe)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.n_clusters:
            raise ValueError(f"MLPHead pools the frames first, so it has no frame-cluster head: set n_clusters=0 "
                             f"(got {cfg.n_clusters}) or use arch='tcgru'")
        self.cfg = cfg
        self.mix = LayerMix(cfg.n_layers) if cfg.layer_mix == "learned" else None
        if cfg.mlp_hidden == 0:
            self.embed = nn.Identity()
            self.heads = Heads(cfg, width=cfg.width)
        else:
            self.embed = nn.Sequential(
                nn.Linear(cfg.width, cfg.mlp_hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
                nn.Linear(cfg.mlp_hidden, cfg.embed_dim), nn.ReLU(),
            )
            self.heads = Heads(cfg)

    def forward(self, x: Tensor, lengths: Tensor) -> dict[str, Tensor]:
        return self.from_pooled(self.pool(x, lengths))

    def pool(self, x: Tensor, lengths: Tensor) -> Tensor:
        """The mean of each utterance's real frames (B, input_dim)."""
        _check_input(x, lengths, self.cfg.input_dim)
        return masked_mean(x, lengths.to(x.device))

    def from_pooled(self, pooled: Tensor) -> dict[str, Tensor]:
        """The heads' outputs from the mean frames: a per-dimension affine map of the frames (a scaler) can be
        applied here instead, to B vectors rather than every frame; the layer mix commutes with both."""
        if self.mix is not None:
            pooled = self.mix(pooled)
        return self.heads(self.embed(pooled))


def build_model(cfg: ModelConfig | Mapping[str, Any]) -> nn.Module:
    """The model ``cfg.arch`` names ("tcgru" or "mlp"); accepts a ModelConfig or its dict."""
    if not isinstance(cfg, ModelConfig):
        cfg = ModelConfig.from_dict(cfg)
    return TCGRU(cfg) if cfg.arch == "tcgru" else MLPHead(cfg)
