"""CausalSelfAttention: both backends are the same function of the same, identically initialised parameters
(nanoGPT's names), the hand-written one's gradients equal autograd's, and no token sees a later one."""

from __future__ import annotations

import pytest
import torch

from handgrad.models_blocks import CausalSelfAttention


def blocks(**kwargs) -> tuple[CausalSelfAttention, CausalSelfAttention]:
    torch.manual_seed(0)
    hand = CausalSelfAttention(**kwargs)
    torch.manual_seed(0)
    return hand, CausalSelfAttention(**kwargs, backend="autograd")


@pytest.mark.parametrize("bias", [True, False])
def test_backends_build_the_same_parameters_from_the_same_stream(bias):
    hand, twin = blocks(n_embd=24, n_head=3, bias=bias)
    names = ["c_attn.weight", "c_proj.weight"] + (["c_attn.bias", "c_proj.bias"] if bias else [])
    assert sorted(hand.state_dict()) == sorted(twin.state_dict()) == sorted(names)
    for name, value in hand.state_dict().items():
        torch.testing.assert_close(value, twin.state_dict()[name], rtol=0, atol=0)
    assert hand.c_attn.weight.shape == (72, 24)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_and_every_gradient_match_the_autograd_twin(dtype):
    hand = CausalSelfAttention(n_embd=32, n_head=4, dropout=0.1).to(dtype).eval()
    twin = hand.twin()
    x = torch.randn(3, 11, 32, dtype=dtype, requires_grad=True)
    upstream = torch.randn(3, 11, 32, dtype=dtype)
    results = []
    for block in (hand, twin):
        output = block(x)
        results.append([output, *torch.autograd.grad(output, [x, *block.parameters()], upstream)])
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs)
    assert twin.backend == "autograd" and not twin.training


def test_a_token_never_depends_on_a_later_one():
    block = CausalSelfAttention(n_embd=16, n_head=2).double()
    x = torch.randn(1, 9, 16, dtype=torch.float64, requires_grad=True)
    jacobian = torch.autograd.functional.jacobian(block, x)  # (1, 9, 16, 1, 9, 16)
    reaches = jacobian.abs().sum(dim=(0, 2, 3, 5)) > 0  # output token t -> input token s
    assert torch.equal(reaches, torch.ones(9, 9, dtype=torch.bool).tril())


def test_dropout_is_on_in_training_only():
    block = CausalSelfAttention(n_embd=16, n_head=2, dropout=0.5)
    x = torch.randn(2, 5, 16)
    torch.manual_seed(0)
    first = block(x)
    assert not torch.equal(first, block(x))
    block.eval()
    assert torch.equal(block(x), block(x))


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_embd=30, n_head=4), "n_embd=30 must be a positive multiple of n_head=4"),
    (dict(n_embd=32, n_head=4, dropout=1.0), r"dropout=1.0 must be in \[0, 1\)"),
    (dict(n_embd=32, n_head=4, backend="torch"), "unknown backend 'torch'; choose one of 'hand', 'autograd'"),
])
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CausalSelfAttention(**kwargs)


def test_a_wrong_width_names_the_expected_shape():
    with pytest.raises(ValueError, match=r"expected input \(batch, tokens, 32\), got \(2, 5, 16\)"):
        CausalSelfAttention(n_embd=32, n_head=4)(torch.randn(2, 5, 16))
