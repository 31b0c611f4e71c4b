"""multitask_loss: each part equals its loss function, weights apply, absent heads/targets are skipped."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ray_ser.train.nn.losses import ccc_loss, frame_cluster_loss, soft_cross_entropy
from ray_ser.train.nn.multitask import LossWeights, multitask_loss


def make(seed=0):
    g = torch.Generator().manual_seed(seed)
    B, T, C = 6, 5, 4
    outputs = {"embedding": torch.randn(B, 3, generator=g, requires_grad=True),
               "logits": torch.randn(B, C, generator=g, requires_grad=True),
               "dims": torch.randn(B, 3, generator=g, requires_grad=True),
               "domain_logits": torch.randn(B, 2, generator=g, requires_grad=True),
               "frame_logits": torch.randn(B, T, 7, generator=g, requires_grad=True)}
    label = torch.tensor([0, 1, 2, 3, -100, 1])
    batch = {"label_index": label, "pdf": torch.softmax(torch.randn(B, C, generator=g), 1),
             "dims": torch.randn(B, 3, generator=g), "dims_mask": torch.rand(B, 3, generator=g) > 0.2,
             "domain": torch.tensor([0, 1, 0, 1, 1, -100]),
             "frame_ids": torch.randint(0, 7, (B, T), generator=g)}
    batch["frame_ids"][:, 3:] = -100
    return outputs, batch


def test_parts_and_weighted_total():
    outputs, batch = make()
    w = LossWeights(categorical=1.0, dimensional=0.5, domain=2.0, cluster=0.1)
    total, parts = multitask_loss(outputs, batch, target="onehot", weights=w)
    keep = batch["label_index"] != -100
    expected = {
        "categorical": F.cross_entropy(outputs["logits"][keep], batch["label_index"][keep]).item(),
        "dimensional": ccc_loss(outputs["dims"], batch["dims"], batch["dims_mask"]).item(),
        "domain": F.cross_entropy(outputs["domain_logits"][:5], batch["domain"][:5]).item(),
        "cluster": frame_cluster_loss(outputs["frame_logits"], batch["frame_ids"]).item(),
    }
    for k, v in expected.items():
        assert parts[k] == pytest.approx(v, rel=1e-5)
    weighted = expected["categorical"] + 0.5 * expected["dimensional"] + 2 * expected["domain"] + \
        0.1 * expected["cluster"]
    assert total.item() == pytest.approx(weighted, rel=1e-5)
    assert parts["total"] == pytest.approx(weighted, rel=1e-5)


def test_pdf_target_and_skipped_heads():
    outputs, batch = make(1)
    _, parts = multitask_loss(outputs, {"pdf": batch["pdf"]}, target="pdf")
    assert set(parts) == {"categorical", "total"}
    assert parts["categorical"] == pytest.approx(soft_cross_entropy(outputs["logits"], batch["pdf"]).item())
    _, parts = multitask_loss({"embedding": outputs["embedding"], "dims": outputs["dims"]}, batch)
    assert set(parts) == {"dimensional", "total"}
    total, parts = multitask_loss({"embedding": outputs["embedding"]}, batch)
    assert parts == {"total": 0.0}
    total.backward()  # still connected to the graph
    with pytest.raises(ValueError, match="unknown target"):
        multitask_loss(outputs, batch, target="soft")


def test_every_parameter_gets_a_gradient_when_targets_are_missing():
    """Skipped heads still enter the graph (times 0), so DDP without find_unused_parameters does not fail."""
    from ray_ser.train.nn.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(input_dim=4, conv_channels=8, gru_hidden=8, embed_dim=4, n_classes=3,
                                    n_dims=3, n_domains=2, n_clusters=5))
    out = model(torch.randn(2, 6, 4), torch.tensor([6, 2]))
    total, parts = multitask_loss(out, {"pdf": torch.tensor([[1.0, 0, 0], [0, 0.5, 0.5]])})
    total.backward()
    assert set(parts) == {"categorical", "total"}
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("target", ["onehot", "pdf"])
def test_outside_ddp_the_total_and_gradients_are_the_same(target):
    """connect_all=False (a model outside DDP) leaves out the zero term: the same total and gradients, bit for bit;
    a head without its target still enters the graph (its weights get zero gradients, as with connect_all)."""
    outputs, batch = make(2)
    runs = []
    for connect in (True, False):
        outs = {k: v.detach().clone().requires_grad_() for k, v in outputs.items()}
        total, parts = multitask_loss(outs, batch, target=target, connect_all=connect)
        total.backward()
        runs.append((total.detach(), parts, {k: v.grad for k, v in outs.items()}))
    (t1, p1, g1), (t2, p2, g2) = runs
    assert torch.equal(t1, t2) and p1 == p2 and set(p1) == {"categorical", "dimensional", "domain", "cluster", "total"}
    assert g1["embedding"] is not None and g2["embedding"] is None  # the zero term is what left out
    assert all(torch.equal(g1[k], g2[k]) for k in g1 if k != "embedding")
    outs = {k: v.detach().clone().requires_grad_() for k, v in outputs.items()}
    total, _ = multitask_loss(outs, {"pdf": batch["pdf"]}, connect_all=False)
    total.backward()
    assert all(v.grad is not None for v in outs.values()) and not outs["dims"].grad.any()
