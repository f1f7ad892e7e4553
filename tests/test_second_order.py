"""handgrad.second_order: Hessian-vector products and the sharpness against torch's exact Hessian, per-sample
gradient norms against a per-example loop of the torch twin, the edge-of-stability threshold against SGD on a
quadratic, the callback inside real training runs (its TensorBoard tags, training untouched), and refusals."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import REPO
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from handgrad import cli
from handgrad.data import DataModule
from handgrad.errors import ConfigError
from handgrad.lit_module import Classifier
from handgrad.models import MLP, LeNet5
from handgrad.optim import SGD
from handgrad.second_order import (
    SecondOrder,
    hessian_vector_product,
    largest_eigenvalue,
    per_sample_gradient_norms,
    stability_threshold,
)
from handgrad.steps import loss_function, targets_for

EOS = str(REPO / "configs" / "edge_of_stability.yaml")
TAGS = {"second_order/sharpness", "second_order/stability_threshold", "second_order/hessian_vector_products",
        "second_order/sharpness_seconds", "second_order/per_sample_grad_norm_median", "second_order/per_sample_seconds"}


def problem(activation: str, loss: str, n: int = 12):
    """A small float64 hand-written MLP, its torch.nn twin, inputs and targets."""
    torch.manual_seed(0)
    net = MLP([4, 5, 3], activation=activation).double()
    x = torch.randn(n, 4, dtype=torch.float64)
    target = targets_for(loss, torch.arange(n) % 3, 3, torch.float64)
    return net, net.twin(), x, target


def exact_hessian(twin: torch.nn.Module, loss: str, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """torch's Hessian of the twin's loss in its flattened parameters, (P, P)."""
    names = [name for name, _ in twin.named_parameters()]
    shapes = [p.shape for p in twin.parameters()]
    flat = torch.cat([p.detach().flatten() for p in twin.parameters()])
    cost = loss_function(loss, "autograd")

    def loss_of(w: torch.Tensor) -> torch.Tensor:
        weights = dict(zip(names, (part.view(shape) for part, shape in zip(w.split([s.numel() for s in shapes]),
                                                                             shapes, strict=True)), strict=True))
        return cost(torch.func.functional_call(twin, weights, (x,)), target)
    return torch.autograd.functional.hessian(loss_of, flat)


@pytest.mark.parametrize("activation, loss", [("tanh", "cross_entropy"), ("sigmoid", "mse"), ("relu", "cross_entropy"),
                                              ("leaky_relu", "mse")])
def test_hessian_vector_products_and_sharpness_equal_torchs_exact_hessian(activation, loss):
    net, twin, x, target = problem(activation, loss)
    params = list(net.parameters())
    hessian = exact_hessian(twin, loss, x, target)
    hvp = hessian_vector_product(loss_function(loss)(net(x), target), params)
    for seed in range(3):  # H v for a few directions, every parameter's block compared
        v = [torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(seed)) for p in params]
        expected = hessian @ torch.cat([u.flatten() for u in v])
        torch.testing.assert_close(torch.cat([h.flatten() for h in hvp(v)]), expected, rtol=1e-10, atol=1e-12)

    eigenvalues = torch.linalg.eigvalsh(hessian)
    top = eigenvalues[eigenvalues.abs().argmax()]
    start = [torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(7)) for p in params]
    value, v, used = largest_eigenvalue(hvp, start, iterations=2000, tolerance=1e-12)
    assert used < 2000 and value == pytest.approx(float(top), rel=1e-8)
    v_flat = torch.cat([u.flatten() for u in v])
    torch.testing.assert_close(hessian @ v_flat, top * v_flat, rtol=0, atol=1e-4 * abs(float(top)))  # an eigenvector


def test_the_second_derivative_is_handgrads_backward_differentiated():
    """The gradient's graph (what H v differentiates) is made of handgrad's Functions: their backwards ran
    as recorded Functions, so the second derivative is the hand-written one."""
    net, _, x, target = problem("tanh", "cross_entropy")
    grads = torch.autograd.grad(loss_function("cross_entropy")(net(x), target), list(net.parameters()),
                                create_graph=True)
    seen, stack = set(), [g.grad_fn for g in grads]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack += [next_node for next_node, _ in node.next_functions]
    handgrads = {node._forward_cls.__name__ for node in seen
                 if getattr(node, "_forward_cls", type(node)).__module__.startswith("handgrad.")}
    assert {"Linear", "Tanh", "CrossEntropy"} <= handgrads


def test_power_iteration_stops_on_a_null_space_and_counts_its_products():
    zero = largest_eigenvalue(lambda v: [torch.zeros_like(u) for u in v], [torch.ones(3)])
    assert zero[0] == 0.0 and zero[2] == 1
    diagonal = torch.tensor([3.0, -1.0, 0.5])
    value, _, used = largest_eigenvalue(lambda v: [diagonal * v[0]], [torch.ones(3)], iterations=5, tolerance=1e-9)
    assert used == 5 and 2.9 < value < 3.0  # stopped by ``iterations``, short of the converged 3


@pytest.mark.parametrize("make, loss", [
    (lambda: MLP([784, 16, 10], activation="tanh"), "cross_entropy"),
    (lambda: MLP([784, 16, 10], activation="relu"), "mse"),
    (lambda: LeNet5(), "cross_entropy"),
])
def test_per_sample_gradient_norms_equal_a_loop_over_examples_of_the_torch_twin(make, loss):
    torch.manual_seed(0)
    net = make().eval()
    x = torch.rand(7, 1, 28, 28)
    target = targets_for(loss, torch.arange(7) % 10, 10, x.dtype)
    norms = per_sample_gradient_norms(net, loss_function(loss), x, target, chunk_size=3)  # chunks of 3, 3, 1

    twin, expected = net.twin(), []
    for x_i, t_i in zip(x, target, strict=True):
        twin.zero_grad()
        loss_function(loss, "autograd")(twin(x_i[None]), t_i[None]).backward()
        expected.append(torch.cat([p.grad.flatten() for p in twin.parameters()]).norm())
    torch.testing.assert_close(norms, torch.stack(expected), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("momentum, dampening, nesterov, weight_decay", [
    (0.0, 0.0, False, 0.0), (0.9, 0.0, False, 0.0), (0.5, 0.5, False, 0.0), (0.9, 0.0, True, 0.0),
    (0.0, 0.0, False, 0.3)])
def test_the_stability_threshold_is_where_handgrads_sgd_starts_to_diverge_on_a_quadratic(
        momentum, dampening, nesterov, weight_decay):
    lr = 0.1
    threshold = stability_threshold(lr, momentum, dampening, nesterov, weight_decay)
    if momentum == dampening == weight_decay == 0:
        assert threshold == pytest.approx(2 / lr)

    def final_distance(curvature: float) -> float:  # loss curvature * w^2 / 2, from w = 1, 1000 steps
        w = torch.ones(1, dtype=torch.float64, requires_grad=True)
        optimizer = SGD([w], lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                        weight_decay=weight_decay)
        for _ in range(1000):
            w.grad = curvature * w.detach()
            optimizer.step()
        return float(w.detach().abs())

    assert final_distance(0.98 * threshold) < 1e-3 and final_distance(1.02 * threshold) > 1e3


# --------------------------------------------------------------------------- the callback in training


def events(run_dir) -> EventAccumulator:
    return EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0}).Reload()


def test_the_config_runs_the_callback_and_writes_its_tensorboard_tags(mnist_root, tmp_path, monkeypatch, one_thread):
    """configs/edge_of_stability.yaml on the 200-image IDX files (torchvision's reader): the fused step trains,
    the callback logs every tag at the optimiser steps it acts on."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--config", EOS, "--data.root", mnist_root, "--data.download", "false", "--data.val_size", "50",
                     "--data.train_size", "100", "--trainer.max_epochs", "7", "--trainer.check_val_every_n_epoch", "7",
                     "--trainer.callbacks.init_args.every_n_steps", "3",
                     "--trainer.callbacks.init_args.per_sample_examples", "20"]) == 0
    log = events(tmp_path / "logs" / "edge_of_stability" / "version_0")
    assert TAGS <= set(log.Tags()["scalars"])
    assert "second_order/per_sample_grad_norm" in log.Tags()["histograms"]
    steps = [e.step for e in log.Scalars("second_order/sharpness")]
    assert steps == [1, 3, 6]  # the first chunk, then each multiple of 3 crossed (full batch: a step a chunk)
    threshold = log.Scalars("second_order/stability_threshold")[0].value
    assert threshold == pytest.approx(2 / yaml.safe_load(Path(EOS).read_text())["model"]["lr"])
    assert all(e.value > 0 for e in log.Scalars("second_order/sharpness"))
    histogram = log.Histograms("second_order/per_sample_grad_norm")[0].histogram_value
    assert histogram.num == 20 and histogram.min > 0
    documented = set(re.findall(r"^\| `([^`]+)` \|", (REPO / "docs" / "tensorboard.md").read_text(), re.MULTILINE))
    written = {tag for tag in log.Tags()["scalars"] + log.Tags()["histograms"] if tag.startswith("second_order/")}
    assert written <= documented, written - documented


def fit(net: torch.nn.Module, root: str, callbacks: list, steps: int = 6) -> list[torch.Tensor]:
    L.seed_everything(0)
    data = DataModule("mnist", root=root, download=False, batch_size=30, val_size=50, train_size=120, chunk_size=60)
    model = Classifier(net, lr=0.1, momentum=0.9)
    trainer = L.Trainer(max_steps=steps, callbacks=callbacks, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, data)
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("dropout", [0.0, 0.3], ids=["fused step", "autograd step, dropout"])
def test_training_is_untouched_by_the_callback(dropout, mnist_root, one_thread):
    """Weights after a few steps are the same with and without the callback (dropout: the same masks, so
    training's random stream is untouched), on both training paths; the callback restores train mode."""
    def make() -> MLP:
        torch.manual_seed(0)
        return MLP([784, 16, 10], activation="tanh", dropout=dropout)
    callback = SecondOrder(every_n_steps=2, examples=40, per_sample_examples=8)
    net = make()
    with_callback = fit(net, mnist_root, [callback])
    assert net.training and callback.last["second_order/stability_threshold"] == pytest.approx(2 * 1.9 / 0.1)
    without = fit(make(), mnist_root, [])
    for a, b in zip(with_callback, without, strict=True):
        assert torch.equal(a, b)


def test_an_adaptive_optimiser_gets_the_sharpness_without_a_threshold(mnist_root, one_thread):
    torch.manual_seed(0)
    callback = SecondOrder(every_n_steps=2, examples=40, per_sample_examples=0)
    data = DataModule("mnist", root=mnist_root, download=False, batch_size=30, val_size=50, train_size=120)
    trainer = L.Trainer(max_steps=4, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    with pytest.warns(UserWarning, match=r"^SecondOrder: no stability_threshold for Adam: 2 \(1 \+ momentum\) / lr "
                                         r"is SGD's; an adaptive optimiser's step is preconditioned"):
        trainer.fit(Classifier(MLP([784, 16, 10]), optimizer="adam", lr=1e-3), data)
    assert set(callback.last) == {"second_order/sharpness", "second_order/hessian_vector_products",
                                  "second_order/sharpness_seconds"}


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("kwargs, message", [
    (dict(every_n_steps=0), r"^SecondOrder: every_n_steps=0 must be >= 1$"),
    (dict(examples=0), r"^SecondOrder: examples=0 must be >= 1; use e\.g\. 1000, or null for the whole training"),
    (dict(iterations=0), r"^SecondOrder: iterations=0 must be >= 1; use e\.g\. 20$"),
    (dict(per_sample_examples=-1), r"^SecondOrder: per_sample_examples=-1 must be >= 0; use e\.g\. 256, or 0 \(off\)$"),
    (dict(per_sample_chunk=0), r"^SecondOrder: per_sample_chunk=0 must be >= 1; use e\.g\. 64$"),
    (dict(tolerance=0.0), r"^SecondOrder: tolerance=0\.0 must be in \(0, 1\); use e\.g\. 1e-3$"),
    (dict(tolerance=1.5), r"^SecondOrder: tolerance=1\.5 must be in \(0, 1\)"),
])
def test_bad_arguments_are_refused_with_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SecondOrder(**kwargs)


def test_a_torch_twin_network_is_refused_before_the_first_step(mnist_root, one_thread):
    callback = SecondOrder(every_n_steps=1)
    with pytest.raises(ConfigError, match=r"^SecondOrder differentiates handgrad's hand-written backward, but "
                                          r"model\.net has backend='autograd' \(torch's derivatives\); use backend "
                                          r"'hand'$"):
        fit(MLP([784, 16, 10], backend="autograd"), mnist_root, [callback])


def test_data_without_a_training_split_is_refused(one_thread):
    x, y = torch.rand(20, 784), torch.arange(20) % 10
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=10)
    trainer = L.Trainer(max_steps=1, callbacks=[SecondOrder()], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ConfigError, match=r"^SecondOrder reads its examples from a handgrad\.data\.DataModule's "
                                          r"training split; trainer\.datamodule is NoneType: train with one$"):
        trainer.fit(Classifier(MLP([784, 16, 10])), loader)



def test_a_hessian_with_zero_blocks_gives_zeros_there():
    """A loss linear in b (d loss/db constant) and independent of c: H = [[2, 0, 0], [0, 0, 0], [0, 0, 0]]."""
    a, b, c = (torch.tensor([1.0], requires_grad=True) for _ in range(3))
    hvp = hessian_vector_product((a**2).sum() + 3 * b.sum() + 0 * c.detach().sum(), [a, b, c])
    assert [float(h) for h in hvp([torch.ones(1)] * 3)] == [2.0, 0.0, 0.0]
