"""TC-GRU and MLP: output shapes for every head combination, padding invariance, learning a toy problem."""

from __future__ import annotations

import itertools

import pytest
import torch

from ray_ser.train.nn.models import TCGRU, MLPHead, ModelConfig, build_model
from ray_ser.train.nn.multitask import multitask_loss

SMALL = dict(input_dim=6, conv_channels=8, gru_hidden=10, embed_dim=4, mlp_hidden=8)


def inputs(B=3, T=7, D=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, D, generator=g), torch.tensor([7, 3, 5])[:B]


COMBOS = list(itertools.product(["tcgru", "mlp"], ["attention", "mean", "last"], [0, 4], [0, 3], [0, 2], [0, 5]))


@pytest.mark.parametrize("arch,pooling,n_classes,n_dims,n_domains,n_clusters", COMBOS)
def test_output_shapes(arch, pooling, n_classes, n_dims, n_domains, n_clusters):
    cfg = ModelConfig(**SMALL, arch=arch, pooling=pooling, n_classes=n_classes, n_dims=n_dims,
                      n_domains=n_domains, n_clusters=n_clusters)
    if arch == "mlp" and n_clusters:
        with pytest.raises(ValueError, match="n_clusters=0"):
            build_model(cfg)
        return
    x, lengths = inputs()
    out = build_model(cfg)(x, lengths)
    expected = {"embedding": (3, 4)}
    if n_classes:
        expected["logits"] = (3, n_classes)
    if n_dims:
        expected["dims"] = (3, n_dims)
    if n_domains:
        expected["domain_logits"] = (3, n_domains)
    if n_clusters:
        expected["frame_logits"] = (3, 7, n_clusters)
    assert {k: tuple(v.shape) for k, v in out.items()} == expected


@pytest.mark.parametrize("arch,pooling", [("tcgru", "attention"), ("tcgru", "mean"), ("tcgru", "last"),
                                          ("mlp", "mean")])
def test_same_output_alone_and_in_padded_batch(arch, pooling):
    torch.manual_seed(0)
    cfg = ModelConfig(**SMALL, arch=arch, pooling=pooling, n_classes=4, n_dims=3, n_domains=2,
                      n_clusters=5 if arch == "tcgru" else 0)
    model = build_model(cfg).eval()
    x, lengths = inputs()
    g = torch.Generator().manual_seed(9)
    x_pad = torch.cat([x, torch.randn(3, 6, 6, generator=g) * 10], 1)  # 6 more frames of garbage
    for i, n in enumerate(lengths.tolist()):
        x_pad[i, n:] = torch.randn(13 - n, 6, generator=g) * 10
    batched = model(x_pad, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = model(x[i : i + 1, :n], torch.tensor([n]))
        for key, value in alone.items():
            got = batched[key][i : i + 1, :n] if key == "frame_logits" else batched[key][i : i + 1]
            torch.testing.assert_close(got, value)


def test_config_round_trip_and_validation():
    cfg = ModelConfig(**SMALL, n_classes=4, pooling="mean")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig(**SMALL, n_clusters=None).n_clusters == 0  # Tune's "none" = head off
    assert isinstance(build_model(cfg.to_dict()), TCGRU)
    assert isinstance(build_model(ModelConfig(**SMALL, arch="mlp")), MLPHead)
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_dict({**cfg.to_dict(), "poolng": "mean"})
    for bad in (dict(arch="lstm"), dict(pooling="max"), dict(n_dims=2), dict(n_classes=-1), dict(dropout=1.0)):
        with pytest.raises(ValueError, match="ModelConfig"):
            ModelConfig(**{**SMALL, **bad})


def test_mlp_without_hidden_layer_is_linear_in_the_mean_frame():
    cfg = ModelConfig(**{**SMALL, "mlp_hidden": 0}, arch="mlp", n_classes=4, n_dims=3)
    model = build_model(cfg).eval()
    x, lengths = inputs()
    out = model(x, lengths)
    assert out["embedding"].shape == (3, 6) and out["logits"].shape == (3, 4) and out["dims"].shape == (3, 3)
    mean = torch.stack([x[i, :n].mean(0) for i, n in enumerate(lengths.tolist())])
    head = model.heads.categorical
    torch.testing.assert_close(out["logits"], mean @ head.weight.T + head.bias)
    with pytest.raises(ValueError, match="mlp_hidden"):
        ModelConfig(**{**SMALL, "mlp_hidden": -1})


def test_rejects_bad_inputs():
    model = build_model(ModelConfig(**SMALL, n_classes=2))
    x, lengths = inputs()
    with pytest.raises(ValueError, match=r"\(B, T, 6\)"):
        model(x[..., :5], lengths)
    with pytest.raises(ValueError, match="lengths must be in"):
        model(x, torch.tensor([8, 3, 5]))
    with pytest.raises(ValueError, match="lengths must be in"):
        model(x, torch.tensor([0, 3, 5]))


@pytest.mark.parametrize("arch", ["tcgru", "mlp"])
def test_training_lowers_loss_on_separable_toy_problem(arch):
    """Class = sign of the mean of feature 0; A/V/D = linear in the class; a few Adam steps lower the loss."""
    torch.manual_seed(0)
    B, T, D = 32, 9, 6
    y = torch.arange(B) % 2
    lengths = torch.randint(3, T + 1, (B,))
    x = torch.randn(B, T, D) * 0.5
    x[:, :, 0] += (2 * y - 1)[:, None].float()
    dims = torch.stack([y.float(), 1 - y.float(), 0.5 * y.float()], 1) + 0.1 * torch.randn(B, 3)
    batch = {"x": x, "lengths": lengths, "label_index": y, "pdf": torch.nn.functional.one_hot(y, 2).float(),
             "dims": dims, "dims_mask": torch.ones(B, 3, dtype=torch.bool), "domain": torch.arange(B) % 3,
             "frame_ids": torch.where(torch.arange(T)[None] < lengths[:, None], y[:, None].expand(B, T), -100)}
    cfg = ModelConfig(input_dim=D, conv_channels=16, gru_hidden=16, embed_dim=16, mlp_hidden=32, arch=arch,
                      n_classes=2, n_dims=3, n_domains=3, n_clusters=2 if arch == "tcgru" else 0, dropout=0.0)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        total, parts = multitask_loss(model(x, lengths), batch, target="pdf")
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(parts)
    assert losses[-1]["total"] < losses[0]["total"] - 0.8
    assert losses[-1]["categorical"] < 0.5 * losses[0]["categorical"]
    assert losses[-1]["dimensional"] < losses[0]["dimensional"] - 0.5
    if arch == "tcgru":
        assert losses[-1]["cluster"] < 0.5 * losses[0]["cluster"]
    model.eval()
    assert (model(x, lengths)["logits"].argmax(1) == y).float().mean() >= 0.9
