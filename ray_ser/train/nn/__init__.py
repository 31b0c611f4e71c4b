"""Pure-PyTorch emotion models, pooling, losses and augmentation (no Ray, no I/O); ray_ser.train.loop fits them."""

from ray_ser.train.nn.augment import SpecAugment
from ray_ser.train.nn.grl import GradientReversal, grad_reverse
from ray_ser.train.nn.losses import (
    ccc,
    ccc_loss,
    frame_cluster_loss,
    kl_divergence,
    masked_cross_entropy,
    soft_cross_entropy,
)
from ray_ser.train.nn.mix import LayerMix, mix_weights
from ray_ser.train.nn.models import TCGRU, MLPHead, ModelConfig, build_model
from ray_ser.train.nn.multitask import LossWeights, multitask_loss
from ray_ser.train.nn.pooling import (
    AttentionPooling,
    last_state,
    lengths_to_mask,
    make_pooling,
    masked_mean,
)

__all__ = [
    "AttentionPooling", "GradientReversal", "LayerMix", "LossWeights", "MLPHead", "ModelConfig", "SpecAugment", "TCGRU",
    "build_model", "ccc", "ccc_loss", "frame_cluster_loss", "grad_reverse", "kl_divergence", "last_state",
    "lengths_to_mask", "make_pooling", "masked_cross_entropy", "masked_mean", "mix_weights", "multitask_loss",
    "soft_cross_entropy",
]
