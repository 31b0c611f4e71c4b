"""The weighted sum of the head losses, from a model's output dict and a collated batch dict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping

from torch import Tensor

from ray_ser.train.nn.losses import (
    DEFAULT_CCC_WEIGHTS,
    ccc_loss,
    frame_cluster_loss,
    kl_divergence,
    masked_cross_entropy,
    soft_cross_entropy,
)

TARGETS = ("pdf", "kl", "onehot")
HEAD_OUTPUT = {"categorical": "logits", "dimensional": "dims", "domain": "domain_logits", "cluster": "frame_logits"}
"""The model output each head's loss reads."""


@dataclass
class LossWeights:
    """Weight of each head's loss in the total; ``ccc`` holds a, b, 1-a-b of the CCC loss per dimension."""

    categorical: float = 1.0
    dimensional: float = 1.0
    domain: float = 1.0
    cluster: float = 0.1
    ccc: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CCC_WEIGHTS))

    def to_dict(self) -> dict:
        return asdict(self)


def multitask_loss(
    outputs: Mapping[str, Tensor],
    batch: Mapping[str, Tensor],
    target: str = "pdf",
    weights: LossWeights | None = None,
    connect_all: bool = True,
) -> tuple[Tensor, dict[str, float]]:
    """Total loss and the unweighted loss of each head used ({"categorical", "dimensional", "domain", "cluster"}).

    ``target``: "pdf" = soft cross-entropy on batch["pdf"], "kl" = KL to it, "onehot" = cross-entropy on
    batch["label_index"] (-100 ignored). A head is skipped when the model lacks it or the batch lacks its target.
    Every output enters the total times 0 (so DDP needs no find_unused_parameters, and a skipped head's weights get
    zero gradients) unless ``connect_all`` is False and every head has its loss: a model outside DDP then saves
    those ops, with the same total and gradients.
    """
    if target not in TARGETS:
        raise ValueError(f"multitask_loss: unknown target {target!r}; expected one of {TARGETS}")
    w = weights or LossWeights()
    ref = outputs["embedding"]
    dev = ref.device
    losses: dict[str, Tensor] = {}
    if "logits" in outputs:
        logits = outputs["logits"]
        if target == "onehot" and "label_index" in batch:
            losses["categorical"] = masked_cross_entropy(logits, batch["label_index"].to(dev))
        elif target != "onehot" and "pdf" in batch:
            fn = soft_cross_entropy if target == "pdf" else kl_divergence
            losses["categorical"] = fn(logits, batch["pdf"].to(dev, logits.dtype))
    if "dims" in outputs and "dims" in batch:
        mask = batch["dims_mask"].to(dev) if "dims_mask" in batch else None
        losses["dimensional"] = ccc_loss(outputs["dims"], batch["dims"].to(dev, ref.dtype), mask, w.ccc)
    if "domain_logits" in outputs and "domain" in batch:
        losses["domain"] = masked_cross_entropy(outputs["domain_logits"], batch["domain"].to(dev))
    if "frame_logits" in outputs and "frame_ids" in batch:
        losses["cluster"] = frame_cluster_loss(outputs["frame_logits"], batch["frame_ids"].to(dev))
    total = None
    idle = set(outputs) - {"embedding"} - {HEAD_OUTPUT[name] for name in losses}
    if connect_all or idle or not losses:  # every output in the graph: DDP sees all parameters used, and a head
        total = sum(o.sum() for o in outputs.values()) * 0.0  # without a target gets zero gradients (weight decay)
    for name, loss in losses.items():
        total = getattr(w, name) * loss if total is None else total + getattr(w, name) * loss
    parts = {name: float(loss.detach()) for name, loss in losses.items()}
    parts["total"] = float(total.detach())
    return total, parts
