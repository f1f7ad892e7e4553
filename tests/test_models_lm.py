"""The language models: the hand backend trained beside its autograd twin, the weight tying, GPT-2's
initialisation, generation and the coverage of hand-written gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as torch_F

import handgrad
import handgrad.functional as F
from handgrad.functional.residual import residual_add
from handgrad.models import GPT, CharLSTM, generate
from handgrad.optim import AdamW

VOCAB, T = 11, 12
TINY = {
    "gpt": lambda backend: GPT(VOCAB, block_size=T, n_layer=2, n_head=2, n_embd=16, backend=backend),
    "lstm": lambda backend: CharLSTM(VOCAB, n_embd=8, hidden_size=16, num_layers=2, block_size=T, backend=backend),
}


def comparable(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """The tensor without the key bias of c_attn: softmax(q (k + b)^T) does not depend on b (it adds q b to a
    whole row of scores), so its gradient is only rounding noise, which Adam scales up to steps of size lr."""
    if name.endswith("attn.c_attn.bias"):
        q, _, v = tensor.chunk(3)
        return torch.cat([q, v])
    return tensor


def built(name: str, backend: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return TINY[name](backend)


@pytest.mark.parametrize("name", TINY)
def test_backends_start_equal(name):
    hand, twin = built(name, "hand"), built(name, "autograd")
    assert list(hand.state_dict()) == list(twin.state_dict())
    for key, value in hand.state_dict().items():
        assert torch.equal(value, twin.state_dict()[key]), key


@pytest.mark.parametrize("name", TINY)
def test_twins_train_alike_with_adamw(name):
    """Five AdamW steps side by side: equal losses, every gradient and every weight to float32 rounding."""
    hand, twin = built(name, "hand"), built(name, "autograd")
    data = torch.Generator().manual_seed(1)
    opts = [AdamW(m.parameters(), lr=3e-3, weight_decay=0.1) for m in (hand, twin)]
    for step in range(5):
        idx = torch.randint(0, VOCAB, (4, T + 1), generator=data)
        x, y = idx[:, :-1], idx[:, 1:].clone()
        y[0, :3] = -100  # padding, ignored
        losses = []
        for model, cost, opt in ((hand, F.cross_entropy, opts[0]), (twin, torch_F.cross_entropy, opts[1])):
            loss = cost(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            losses.append(loss)
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
        for (key, p), q in zip(hand.named_parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(comparable(key, p.grad), comparable(key, q.grad), rtol=1e-4, atol=1e-6,
                                       msg=f"step {step}: grad of {key}")
            if key.endswith("attn.c_attn.bias"):
                assert p.grad.chunk(3)[1].abs().max() < 1e-6  # the key bias's: zero up to rounding
        for opt in opts:
            opt.step()
        for (key, p), q in zip(hand.named_parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(comparable(key, p), comparable(key, q), rtol=1e-5, atol=1e-6,
                                       msg=f"step {step}: {key}")


def test_gpt_head_is_tied_and_initialised_as_gpt2():
    gpt = GPT(VOCAB, block_size=T, n_layer=4, n_head=2, n_embd=64)
    assert gpt.lm_head.weight is gpt.transformer.wte.weight
    assert len(list(gpt.parameters())) == len(gpt.state_dict()) - 1  # the tied matrix is one parameter
    projections = torch.cat([p.flatten() for n, p in gpt.named_parameters() if n.endswith("c_proj.weight")])
    others = torch.cat([p.flatten() for n, p in gpt.named_parameters() if n.endswith("c_fc.weight")])
    assert projections.std().item() == pytest.approx(0.02 / math.sqrt(2 * 4), rel=0.05)
    assert others.std().item() == pytest.approx(0.02, rel=0.05)
    assert all(not p.any() for n, p in gpt.named_parameters() if n.endswith("attn.c_attn.bias"))


def test_residual_add_sums_the_gradient_over_broadcast_dimensions():
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    r = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(residual_add, (x, r))
    assert torch.autograd.gradgradcheck(residual_add, (x, r))
    with torch.autograd.forward_ad.dual_level():  # jvp
        dual = torch.autograd.forward_ad.make_dual(x.detach(), torch.ones_like(x))
        tangent = torch.autograd.forward_ad.unpack_dual(residual_add(dual, r.detach())).tangent
    assert torch.equal(tangent, torch.ones_like(x))


def test_tied_weight_gets_both_gradients():
    """wte's gradient is the embedding's scatter-add plus the head's grad_logits^T x: as autograd's."""
    hand, twin = built("gpt", "hand"), built("gpt", "autograd")
    idx = torch.randint(0, VOCAB, (2, T))
    for model in (hand, twin):
        model(idx).square().sum().backward()
    torch.testing.assert_close(hand.lm_head.weight.grad, twin.lm_head.weight.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", TINY)
def test_hand_backend_gradients_are_hand_written(name):
    """Every arithmetic gradient node is handgrad's (the residual additions too: ResidualAdd)."""
    model = built(name, "hand")
    idx = torch.randint(0, VOCAB, (2, T))
    with handgrad.coverage(model) as report:
        F.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
    assert report.not_hand_written() == [] and report.share == 1.0 and report.hand > 0


def test_generate_greedy_is_deterministic_and_crops_the_context():
    gpt = built("gpt", "hand").eval()
    prompt = torch.randint(0, VOCAB, (2, T))  # already a full block: generation must crop
    first, again = generate(gpt, prompt, 5, temperature=0), generate(gpt, prompt, 5, temperature=0)
    assert first.shape == (2, T + 5) and torch.equal(first, again) and torch.equal(first[:, :T], prompt)


def test_generate_lstm_with_state_matches_full_rerun():
    """The LSTM carries its state: each greedy token equals the argmax of a forward over the whole text."""
    lstm = built("lstm", "hand").eval()
    out = generate(lstm, torch.tensor([[1, 2, 3]]), 4, temperature=0)
    with torch.no_grad():
        for t in range(3, 7):
            assert lstm(out[:, :t])[0, -1].argmax() == out[0, t]


def test_top_k_one_is_greedy():
    gpt = built("gpt", "hand").eval()
    prompt = torch.tensor([[1, 2]])
    sampled = generate(gpt, prompt, 6, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sampled, generate(gpt, prompt, 6, temperature=0))


def test_bad_backend_and_context_are_refused():
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        GPT(VOCAB, backend="jax")
    with pytest.raises(ValueError, match="longer than block_size=12; crop"):
        built("gpt", "hand")(torch.zeros(1, T + 1, dtype=torch.long))
