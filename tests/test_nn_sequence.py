"""handgrad.nn.Embedding and GELU are drop-in twins of torch.nn's: same parameters, init, state_dict and repr,
the same outputs and gradients, every constructor option passed through (from_pretrained included)."""

from __future__ import annotations

import pytest
import torch

import handgrad.nn as hnn


@pytest.mark.parametrize("kwargs", [{}, dict(padding_idx=1), dict(max_norm=1.0, norm_type=1.0),
                                    dict(scale_grad_by_freq=True), dict(sparse=True)], ids=str)
def test_embedding_module_is_torchs_twin(kwargs):
    torch.manual_seed(0)
    hand = hnn.Embedding(9, 4, **kwargs)
    torch.manual_seed(0)
    twin = torch.nn.Embedding(9, 4, **kwargs)
    assert repr(hand) == repr(twin) and list(hand.state_dict()) == list(twin.state_dict()) == ["weight"]
    torch.testing.assert_close(hand.weight, twin.weight, rtol=0, atol=0)  # padding row zeroed in both
    tokens = torch.tensor([[1, 4, 4, 8], [0, 1, 2, 4]])
    upstream = torch.randn(2, 4, 4)
    for module in (hand, twin):
        module(tokens).backward(upstream)
    torch.testing.assert_close(hand.weight, twin.weight)  # max_norm renormalised both alike
    grads = [m.weight.grad.to_dense() if m.weight.grad.is_sparse else m.weight.grad for m in (hand, twin)]
    torch.testing.assert_close(*grads)


@pytest.mark.parametrize("freeze", [True, False])
def test_embedding_from_pretrained_builds_the_handgrad_class(freeze):
    table = torch.randn(5, 3)
    hand = hnn.Embedding.from_pretrained(table, freeze=freeze, padding_idx=0)
    twin = torch.nn.Embedding.from_pretrained(table, freeze=freeze, padding_idx=0)
    assert type(hand) is hnn.Embedding and hand.weight.requires_grad is (not freeze)
    torch.testing.assert_close(hand(torch.tensor([0, 3])), twin(torch.tensor([0, 3])))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_module_passes_its_approximation(approximate):
    x = torch.randn(3, 5, requires_grad=True)
    assert repr(hnn.GELU(approximate)) == repr(torch.nn.GELU(approximate))
    torch.testing.assert_close(hnn.GELU(approximate)(x), torch.nn.GELU(approximate)(x))
