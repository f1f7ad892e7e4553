"""handgrad.steps: the paths a chunk's mini-batches train by, and the foreach SGD update."""

from __future__ import annotations

import threading

import pytest
import torch

from handgrad.models import MLP
from handgrad.optim import SGD
from handgrad.steps import autograd_steps, fused_step_blocker, fused_steps, loss_function, sgd_update, sharded_steps

pytestmark = pytest.mark.usefixtures("one_thread")


def net(seed: int = 0, **kwargs) -> MLP:
    torch.manual_seed(seed)
    return MLP(**{"sizes": [2, 16, 3], **kwargs})


@pytest.mark.parametrize("loss, kwargs", [("cross_entropy", {}), ("mse", dict(output_activation="sigmoid"))])
def test_fused_steps_take_the_autograd_steps(loss, kwargs):
    """Over a chunk of 5 mini-batches (the last one short): the same losses, outputs, weights and
    last .grad as the per-layer Functions with autograd's engine, with momentum and weight decay."""
    x, y = torch.randn(37, 2, generator=torch.Generator().manual_seed(1)), torch.arange(37) % 3
    targets = torch.nn.functional.one_hot(y, 3).float() if loss == "mse" else y
    fused, general = net(**kwargs), net(**kwargs)
    runs = {}
    for name, model in [("fused", fused), ("general", general)]:
        optimizer = SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
        if name == "fused":
            runs[name] = fused_steps(model, loss, optimizer, x, targets, 8)
        else:
            runs[name] = autograd_steps(model, loss_function(loss), optimizer, x, targets, 8)
    for got, expected in zip(runs["fused"], runs["general"], strict=True):
        assert len(got) == len(expected) == 5
        torch.testing.assert_close(torch.cat([t.reshape(-1) for t in got]),
                                   torch.cat([t.reshape(-1) for t in expected]))
    for (name, p), q in zip(fused.named_parameters(), general.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=lambda m, n=name: f"{n}: {m}")
        torch.testing.assert_close(p.grad, q.grad, msg=lambda m, n=name: f"{n}.grad: {m}")


NOT_FUSABLE = [  # (a network, why fused_step_blocker turns it away); test_lit_module.py uses them too
    (lambda: net(backend="autograd"), "its backend is 'autograd'"),
    (lambda: net(dropout=0.5), "it uses dropout=0.5"),
    (lambda: net(batch_norm=True), "it uses batch_norm=True"),
    (lambda: torch.nn.Sequential(torch.nn.Linear(2, 3)), "Sequential is not a handgrad.models.MLP"),
]


@pytest.mark.parametrize("network, reason", NOT_FUSABLE)
def test_the_fused_step_applies_to_plain_hand_written_mlps_only(network, reason):
    for activation in ("sigmoid", "tanh", "relu", "leaky_relu", "softmax"):
        assert fused_step_blocker(net(activation=activation)) is None
    assert fused_step_blocker(net(dropout=0.0, batch_norm=False)) is None  # options that are off
    assert fused_step_blocker(network()) == reason


@pytest.mark.parametrize("settings", [
    dict(), dict(momentum=0.9), dict(momentum=0.9, dampening=0.3), dict(momentum=0.9, nesterov=True),
    dict(weight_decay=0.01), dict(momentum=0.8, weight_decay=0.01, nesterov=True),
], ids=str)
@pytest.mark.parametrize("groups", ["one", "two, reversed"])
def test_the_foreach_update_is_sgd_step_bit_for_bit(settings, groups):
    torch.manual_seed(0)
    weights = [torch.randn(4, 3), torch.randn(4), torch.randn(2, 4), torch.randn(2)]
    by_step = [torch.nn.Parameter(w.clone()) for w in weights]
    foreach = [torch.nn.Parameter(w.clone()) for w in weights]

    def optimizer(params):
        if groups == "one":
            return SGD(params, lr=0.1, **settings)
        return SGD([{"params": params[2:][::-1], "lr": 0.05}, {"params": params[:2]}], lr=0.1, **settings)

    reference, ours = optimizer(by_step), optimizer(foreach)
    update = sgd_update(ours, foreach)
    for _ in range(5):
        grads = [torch.randn_like(w) for w in weights]
        for p, g in zip(by_step, grads, strict=True):
            p.grad = g
        reference.step()
        with torch.no_grad():
            update(grads)
    for p, q in zip(by_step, foreach, strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=0)
    assert reference.state_dict()["state"].keys() == ours.state_dict()["state"].keys()


def test_another_optimizer_gets_its_gradients_through_grad():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3))]
    adam = torch.optim.Adam(params, lr=0.1)
    before = params[0].detach().clone()
    with torch.no_grad():
        sgd_update(adam, params)([torch.ones(3)])
    assert torch.equal(params[0].grad, torch.ones(3)) and not torch.equal(params[0], before)


def test_loss_scaling_takes_the_same_steps_and_skips_an_overflow():
    """With a GradScaler ("16-mixed"), the gradients of S * loss divided by S are the gradients (S a power
    of 2: exactly), so the steps are the unscaled ones; a step whose scaled gradients overflow is skipped."""
    x, y = torch.randn(24, 2, generator=torch.Generator().manual_seed(1)), torch.arange(24) % 3
    plain, scaled, overflowing = net(), net(), net()
    before = [p.detach().clone() for p in overflowing.parameters()]
    autograd_steps(plain, loss_function("cross_entropy"), SGD(plain.parameters(), lr=0.5, momentum=0.9), x, y, 8)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    autograd_steps(scaled, loss_function("cross_entropy"), SGD(scaled.parameters(), lr=0.5, momentum=0.9), x, y, 8,
                   scaler)
    for p, q in zip(plain.parameters(), scaled.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=0)
    assert scaler.get_scale() == 2.0 ** 16  # no overflow, and 3 steps are far from the 2000 that double S

    huge = torch.amp.GradScaler("cpu", init_scale=3e38)  # S * (1000 * loss) overflows float32

    def cost(output, target):
        return 1000 * loss_function("cross_entropy")(output, target)

    losses, _ = autograd_steps(overflowing, cost, SGD(overflowing.parameters(), lr=0.5), x[:8], y[:8], 8, huge)
    assert torch.isfinite(losses[0])
    for p, b in zip(overflowing.parameters(), before, strict=True):
        assert torch.equal(p, b)  # the step was skipped
    assert huge.get_scale() == torch.tensor(3e38).item() / 2  # and S halved


@pytest.mark.parametrize("overflow", [False, True], ids=["in range", "overflowing"])
def test_sharded_steps_with_a_scaler_take_one_process_steps_on_every_rank(monkeypatch, overflow):
    """Two ranks, as threads whose all_reduce sums their buffers: mini-batches of 7 rows over a chunk of 15
    split 3 + 4 and end in one row that rank 0 has none of. With a loss scaler, both ranks take the
    steps of one process on whole mini-batches; when the scaled gradients overflow, both skip the step
    and halve their scale (they see the same sums)."""
    barrier, slots = threading.Barrier(2), [None, None]
    rank_of = {}

    def all_reduce(flat):
        slots[rank_of[threading.get_ident()]] = flat.clone()
        barrier.wait()
        total = slots[0] + slots[1]
        barrier.wait()  # both have read the sum before the next step writes its buffer
        flat.copy_(total)

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    x, y = torch.randn(15, 2, generator=torch.Generator().manual_seed(2)), torch.arange(15) % 3
    scale = 2.0 ** 127 if overflow else 2.0 ** 16

    def cost(output, target):  # with overflow, S * loss is inf
        return (1000 if overflow else 1) * loss_function("cross_entropy")(output, target)

    nets, scalers, errors = [net(), net()], [torch.amp.GradScaler("cpu", init_scale=scale) for _ in range(2)], []

    def run(rank):
        rank_of[threading.get_ident()] = rank
        try:
            sharded_steps(nets[rank], cost, SGD(nets[rank].parameters(), lr=0.5), x, y, y, 7, rank, 2, scalers[rank])
        except Exception as error:  # noqa: BLE001 -- reported below, in the test's thread
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors

    one_process = net()
    if not overflow:
        autograd_steps(one_process, cost, SGD(one_process.parameters(), lr=0.5), x, y, 7)
    for p, q, r in zip(nets[0].parameters(), nets[1].parameters(), one_process.parameters(), strict=True):
        assert torch.equal(p, q)  # the ranks agree to the bit
        torch.testing.assert_close(p, r)  # and took one process's steps (or, overflowing, none)
    assert scalers[0].get_scale() == scalers[1].get_scale() == (scale / 2 ** 3 if overflow else scale)
