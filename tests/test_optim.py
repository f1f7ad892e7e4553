"""handgrad.optim.SGD walks exactly the path of torch.optim.SGD."""

from __future__ import annotations

import copy

import pytest
import torch

import handgrad.nn as hnn
from handgrad.optim import SGD

SETTINGS = {
    "plain": dict(lr=0.1),
    "momentum": dict(lr=0.05, momentum=0.9),
    "dampening": dict(lr=0.05, momentum=0.9, dampening=0.3),
    "nesterov": dict(lr=0.05, momentum=0.9, nesterov=True),
    "weight_decay": dict(lr=0.1, weight_decay=1e-2),
    "all": dict(lr=0.05, momentum=0.8, weight_decay=1e-3, nesterov=True),
}


def network():
    torch.manual_seed(0)
    return torch.nn.Sequential(hnn.Linear(12, 16), hnn.Tanh(), hnn.Linear(16, 4))


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
def test_25_steps_equal_torch_sgd(setting):
    ours = network()
    theirs = copy.deepcopy(ours)
    opt_ours = SGD(ours.parameters(), **SETTINGS[setting])
    opt_theirs = torch.optim.SGD(theirs.parameters(), **SETTINGS[setting])
    g = torch.Generator().manual_seed(1)
    for step in range(25):
        x, y = torch.randn(8, 12, generator=g), torch.randn(8, 4, generator=g)
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            hnn.MSELoss()(model(x), y).backward()
            opt.step()
        for (name, p), q in zip(ours.named_parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=0, msg=lambda m, n=name, s=step: f"step {s}, {n}: {m}")
    # it really moved
    assert any((p != q).any() for p, q in zip(ours.parameters(), network().parameters(), strict=True))


def test_step_runs_the_closure_and_returns_its_loss():
    model = network()
    opt = SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(5, 12), torch.randn(5, 4)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = hnn.MSELoss()(model(x), y)
        loss.backward()
        return loss

    before = hnn.MSELoss()(model(x), y).item()
    loss = opt.step(closure)
    assert calls == [1] and loss.item() == pytest.approx(before)
    assert hnn.MSELoss()(model(x), y).item() < before


def test_param_groups_and_state_dict_round_trip():
    model = network()
    opt = SGD([{"params": model[0].parameters(), "lr": 0.5}, {"params": model[2].parameters()}], lr=0.1, momentum=0.9)
    hnn.MSELoss()(model(torch.randn(3, 12)), torch.randn(3, 4)).backward()
    opt.step()
    restored = SGD([{"params": model[0].parameters(), "lr": 0.5}, {"params": model[2].parameters()}], lr=0.1,
                   momentum=0.9)
    restored.load_state_dict(opt.state_dict())
    assert [g["lr"] for g in restored.param_groups] == [0.5, 0.1]
    for p in model.parameters():
        torch.testing.assert_close(restored.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-0.1), r"lr=-0.1 is negative"),
    (dict(lr=0.1, momentum=-0.5), r"momentum=-0.5 is negative"),
    (dict(lr=0.1, weight_decay=-1.0), r"weight_decay=-1.0 is negative"),
    (dict(lr=0.1, nesterov=True), r"nesterov=True needs momentum > 0.*momentum=0"),
    (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), r"nesterov=True needs.*dampening=0.1"),
])
def test_bad_values_raise_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SGD(network().parameters(), **kwargs)


def test_a_parameter_that_joins_late_gets_its_own_first_momentum_step():
    """One parameter has no gradient on the first step (no buffer yet), then joins: its buffer
    starts as its gradient while the others' buffers keep accumulating, as in torch.optim.SGD."""
    ours, theirs = network(), network()
    opt_ours = SGD(ours.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(2)
    for step in range(4):
        x, y = torch.randn(8, 12, generator=g), torch.randn(8, 4, generator=g)
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            hnn.MSELoss()(model(x), y).backward()
            if step == 0:
                model[2].bias.grad = None  # the last bias sits out the first step
            opt.step()
        for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=0)
