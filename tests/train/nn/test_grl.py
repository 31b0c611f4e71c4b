"""Gradient reversal: identity forward; backward gradient is exactly -w_d times the incoming gradient."""

from __future__ import annotations

import pytest
import torch

from ray_ser.train.nn.grl import GradientReversal
from ray_ser.train.nn.models import TCGRU, ModelConfig


@pytest.mark.parametrize("w", [1.0, 0.01, 0.0])
def test_grl_identity_forward_and_reversed_scaled_gradient(w):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=g, requires_grad=True)
    c = torch.randn(4, 3, generator=g)
    y = GradientReversal(w)(x)
    assert torch.equal(y, x)
    (y * c).sum().backward()
    torch.testing.assert_close(x.grad, -w * c)


def test_domain_gradient_into_encoder_is_minus_w_times_unreversed():
    """Through the model: encoder gradients of the domain loss equal -w_d x those without reversal."""
    cfg = ModelConfig(input_dim=6, conv_channels=8, gru_hidden=8, embed_dim=4, n_domains=3, adv_weight=0.01,
                      dropout=0.0)
    torch.manual_seed(0)
    model = TCGRU(cfg)
    x, lengths = torch.randn(3, 5, 6), torch.tensor([5, 3, 4])
    y = torch.tensor([0, 2, 1])

    def conv_grad(weight):
        model.zero_grad()
        model.heads.domain[0].weight = weight
        torch.nn.functional.cross_entropy(model(x, lengths)["domain_logits"], y).backward()
        return model.conv.weight.grad.clone(), model.heads.domain[1].weight.grad.clone()

    enc_rev, head_rev = conv_grad(0.01)
    enc_id, head_id = conv_grad(-1.0)  # weight -1 = plain identity backward
    assert enc_id.abs().sum() > 0
    torch.testing.assert_close(enc_rev, -0.01 * enc_id)
    torch.testing.assert_close(head_rev, head_id)  # the domain classifier itself is trained normally
