"""Each handgrad.optim optimiser walks exactly the path of its torch.optim twin (torch's default, for-loop
implementation on the CPU): 25 steps of every combination of its options, float32 and float64, two param
groups, parameters that sit steps out; and its state_dict moves between the two mid-training."""

from __future__ import annotations

import copy
import inspect
import itertools

import pytest
import torch

import handgrad.nn as hnn
import handgrad.optim

NAMES = ("SGD", "Adam", "AdamW", "RMSprop", "Adadelta", "Adagrad")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def grid(**options: list) -> list[dict]:
    """Every combination of the options' values."""
    return [dict(zip(options, values, strict=True)) for values in itertools.product(*options.values())]


BOOL = [False, True]
COMBINATIONS = {  # a tensor lr as torch allows it; group 0 overrides a few more values (GROUP0)
    "SGD": [c for c in grid(lr=[0.05, torch.tensor(0.05)], momentum=[0.0, 0.9], dampening=[0.0, 0.3], nesterov=BOOL,
                            maximize=BOOL, weight_decay=[0.0, 0.1])
            if not c["nesterov"] or (c["momentum"] > 0 and c["dampening"] == 0)],
    "Adam": grid(lr=[1e-2, torch.tensor(1e-2)], amsgrad=BOOL, maximize=BOOL, weight_decay=[0.0, 0.1],
                 decoupled_weight_decay=BOOL),
    "AdamW": grid(lr=[1e-2, torch.tensor(1e-2)], amsgrad=BOOL, maximize=BOOL, weight_decay=[0.0, 1e-2]),
    "RMSprop": grid(lr=[1e-2, torch.tensor(1e-2)], centered=BOOL, momentum=[0.0, 0.9], maximize=BOOL,
                    weight_decay=[0.0, 0.1]),
    "Adadelta": grid(lr=[1.0, torch.tensor(0.5)], rho=[0.9, 0.5], maximize=BOOL, weight_decay=[0.0, 0.1]),
    "Adagrad": grid(lr=[0.1, torch.tensor(0.1)], lr_decay=[0.0, 0.01], initial_accumulator_value=[0.0, 0.1],
                    maximize=BOOL, weight_decay=[0.0, 0.1]),
}
GROUP0 = {
    "SGD": dict(lr=0.02),
    "Adam": dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6),
    "AdamW": dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6),
    "RMSprop": dict(lr=3e-3, alpha=0.9, eps=1e-6),
    "Adadelta": dict(lr=0.3, eps=1e-5),
    "Adagrad": dict(lr=0.05, eps=1e-8),
}
ROWS = [(name, kwargs) for name in NAMES for kwargs in COMBINATIONS[name]]


def row_id(row) -> str:
    name, kwargs = row
    return "-".join([name] + [f"{k}={'tensor' if torch.is_tensor(v) else v}" for k, v in kwargs.items()])


def network(dtype=torch.float32) -> torch.nn.Sequential:
    torch.manual_seed(0)
    net = torch.nn.Sequential(hnn.Linear(12, 16), hnn.Tanh(), hnn.Linear(16, 4)).to(dtype)
    net.register_parameter("unused", torch.nn.Parameter(torch.randn(3, dtype=dtype)))  # never gets a gradient
    return net


def twins(name: str, kwargs: dict, dtype=torch.float32, group0: dict | None = None, **torch_kwargs):
    """(net, handgrad optimiser), (its copy, torch optimiser): two param groups, group 0 with GROUP0's values."""
    group0 = GROUP0[name] if group0 is None else group0
    pairs = []
    for optimizer in (getattr(handgrad.optim, name), getattr(torch.optim, name)):
        net = network(dtype)
        groups = [{"params": list(net[0].parameters()), **group0}, {"params": [*net[2].parameters(), net.unused]}]
        extra = torch_kwargs if optimizer.__module__.startswith("torch") else {}
        pairs.append((net, optimizer(groups, **copy.deepcopy(kwargs), **extra)))
    return pairs


def train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, g: torch.Generator) -> None:
    """One step on a fresh batch; the last bias sits out step 0 (it joins late), the first weight every 4th."""
    dtype = net[0].weight.dtype
    x, y = torch.randn(8, 12, generator=g, dtype=dtype), torch.randn(8, 4, generator=g, dtype=dtype)
    optimizer.zero_grad()
    hnn.MSELoss()(net(x), y).backward()
    if step == 0:
        net[2].bias.grad = None
    if step % 4 == 2:
        net[0].weight.grad = None
    optimizer.step()


def assert_same_state(ours: torch.optim.Optimizer, theirs: torch.optim.Optimizer) -> None:
    """The same state_dict: param groups (every key and value) and each parameter's state, dtypes included."""
    a, b = ours.state_dict(), theirs.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i, state in a["state"].items():
        assert state.keys() == b["state"][i].keys(), f"parameter {i}"
        for key, value in state.items():
            torch.testing.assert_close(value, b["state"][i][key], rtol=0, atol=0, msg=lambda m, k=key: f"{k}: {m}")


def walk_together(pairs, steps: range) -> None:
    (ours, opt_ours), (theirs, opt_theirs) = pairs
    g = torch.Generator().manual_seed(steps.start + 1)
    for step in steps:
        state = g.get_state()
        train_step(ours, opt_ours, step, g)
        g.set_state(state)  # the same batch for both
        train_step(theirs, opt_theirs, step, g)
        for (name, p), q in zip(ours.named_parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=0, msg=lambda m, n=name, s=step: f"step {s}, {n}: {m}")


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES)
@pytest.mark.parametrize("row", ROWS, ids=[row_id(r) for r in ROWS])
def test_25_steps_equal_torch_bit_for_bit(row, dtype):
    name, kwargs = row
    pairs = twins(name, kwargs, dtype)
    walk_together(pairs, range(25))
    assert_same_state(pairs[0][1], pairs[1][1])
    (net, ours), _ = pairs
    assert (net.unused in ours.state) == (name == "Adagrad")  # no gradient, no state (Adagrad makes it up front)
    assert not torch.equal(net[0].weight, network(dtype)[0].weight)  # it really moved


@pytest.mark.parametrize("name", NAMES)
def test_foreach_true_equals_torch_foreach_true(name):
    """foreach is accepted and stored; the same update as torch's multi-tensor implementation, too."""
    kwargs = dict(COMBINATIONS[name][-1], foreach=True)
    kwargs.pop("lr")  # torch's foreach Adam refuses a tensor lr
    pairs = twins(name, kwargs)
    walk_together(pairs, range(10))
    assert_same_state(pairs[0][1], pairs[1][1])


@pytest.mark.parametrize("direction", ["torch to handgrad", "handgrad to torch"])
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_moves_mid_training_and_training_continues_identically(name, direction):
    """10 steps in one optimiser, its state_dict into the other's twin on a copy of the weights, 10 more steps:
    the same parameters, step for step, as 20 steps of torch's optimiser alone."""
    kwargs = COMBINATIONS[name][-1]  # every option on
    (_, _), (reference, opt_reference) = twins(name, kwargs)
    (ours, opt_ours), (theirs, opt_theirs) = twins(name, kwargs)
    first, second = (theirs, opt_theirs), (ours, opt_ours)
    if direction == "handgrad to torch":
        first, second = second, first
    walk_together([first, (reference, opt_reference)], range(10))
    second[0].load_state_dict(first[0].state_dict())
    second[1].load_state_dict(first[1].state_dict())
    assert_same_state(second[1], first[1])
    walk_together([second, (reference, opt_reference)], range(10, 20))
    assert_same_state(second[1], opt_reference)


@pytest.mark.parametrize("name", NAMES)
def test_constructor_defaults_and_param_group_keys_are_torchs(name):
    ours, theirs = getattr(handgrad.optim, name), getattr(torch.optim, name)
    def signature(cls):
        return [(p.name, p.default, p.kind) for p in inspect.signature(cls).parameters.values()]
    assert signature(ours) == signature(theirs)
    w = torch.nn.Parameter(torch.randn(3))
    assert ours([w]).defaults == theirs([w]).defaults
    assert ours([w]).param_groups[0].keys() == theirs([w]).param_groups[0].keys()


@pytest.mark.parametrize("name", NAMES)
def test_complex_parameters_equal_torch(name):
    """Complex parameters step as (real, imaginary) pairs of real numbers, as in torch."""
    kwargs = {k: v for k, v in COMBINATIONS[name][-1].items() if k != "lr"}
    pairs = []
    for optimizer in (getattr(handgrad.optim, name), getattr(torch.optim, name)):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.complex64))
        pairs.append((w, optimizer([w], **kwargs)))
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        grad = torch.randn(5, 3, dtype=torch.complex64, generator=g)
        for w, optimizer in pairs:
            w.grad = grad.clone()
            optimizer.step()
        torch.testing.assert_close(pairs[0][0], pairs[1][0], rtol=0, atol=0)
    assert_same_state(pairs[0][1], pairs[1][1])


def test_step_runs_the_closure_and_returns_its_loss():
    net = network()
    optimizer = handgrad.optim.Adam(net.parameters(), lr=0.01)
    x, y = torch.randn(5, 12), torch.randn(5, 4)

    def closure():
        optimizer.zero_grad()
        loss = hnn.MSELoss()(net(x), y)
        loss.backward()
        return loss

    before = hnn.MSELoss()(net(x), y).item()
    assert optimizer.step(closure).item() == pytest.approx(before)
    assert hnn.MSELoss()(net(x), y).item() < before
