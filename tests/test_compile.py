"""torch.compile runs the hand-written networks, forward and hand-written backward, and matches eager.

Most tests compile with backend="aot_eager": dynamo captures the whole step in one graph
(fullgraph=True fails on any graph break) and AOTAutograd traces each Function's forward and
its hand-written backward into graphs that eager kernels run; a compile takes 1-3 s. One test
compiles the MLP with the default backend, inductor, whose first compile takes 20-40 s on a
2-core CPU: the slowest test of the suite.

The one limitation, pinned below and noted in the README: ``cross_entropy`` checks that the
class indices lie in 0..C-1 by reading the target's values, a data-dependent branch that would
break the graph, so compiled code skips the check and an index out of range raises from
``gather`` instead ("index 7 is out of bounds ...").
"""

from __future__ import annotations

import copy

import pytest
import torch
from functorch.compile import make_boxed_func
from test_amp import BF16  # tests/ is on sys.path under pytest
from torch._dynamo.backends.common import aot_autograd

import handgrad.functional as F
import handgrad.nn as hnn


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def mlp(nn=hnn) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(nn.Linear(20, 16), nn.Sigmoid(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5))


def convnet(nn=hnn) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                               torch.nn.Flatten(), nn.Linear(4 * 4 * 4, 5))


def data(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn((8, 20) if kind == "mlp" else (8, 1, 8, 8), generator=g)
    return x, torch.randint(5, (8,), generator=g)


def loss_and_grads(step, params, *args):
    """The loss of ``step(*args)`` and the gradient it leaves on each of ``params``; the global generator
    seeded alike, so dropout draws the same mask eager and compiled (aot_eager draws as eager does)."""
    for p in params:
        p.grad = None
    torch.manual_seed(0)
    loss = step(*args)
    loss.backward()
    return loss.detach(), [p.grad for p in params]


def assert_compiled_matches_eager(make_step, params_of, args, backend="aot_eager", **tolerances):
    """``make_step()`` builds a fresh step (its own copy of the network); compiled with fullgraph=True
    (no graph break allowed), it gives eager's loss and gradients; returns both steps' states."""
    eager_step, compiled_step = make_step(), make_step()
    expected, expected_grads = loss_and_grads(eager_step, params_of(eager_step), *args)
    compiled = torch.compile(compiled_step, backend=backend, fullgraph=True)
    loss, grads = loss_and_grads(compiled, params_of(compiled_step), *args)
    torch.testing.assert_close(loss, expected, **tolerances)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, **tolerances)
    return eager_step, compiled_step


class NetStep:
    """A network and its loss as one callable, so each compiled test gets its own copy of the network."""

    def __init__(self, net: torch.nn.Module, loss_fn=F.cross_entropy):
        self.net, self.loss_fn = net, loss_fn

    def __call__(self, x, target):
        return self.loss_fn(self.net(x), target)


def parameters(step: NetStep) -> list[torch.Tensor]:
    return list(step.net.parameters())


# --------------------------------------------------------------------------- networks


def test_mlp_compiles_in_one_graph_and_matches_eager():
    net = mlp()
    assert_compiled_matches_eager(lambda: NetStep(copy.deepcopy(net)), parameters, data("mlp"))


def test_mlp_with_mse_loss_compiles_in_one_graph_and_matches_eager():
    net = mlp()
    x, target = data("mlp")
    onehot = torch.nn.functional.one_hot(target, 5).float()
    assert_compiled_matches_eager(lambda: NetStep(copy.deepcopy(net), F.mse_loss), parameters, (x, onehot))


def test_convnet_compiles_in_one_graph_and_matches_eager():
    net = convnet()
    eager, compiled = assert_compiled_matches_eager(lambda: NetStep(copy.deepcopy(net)), parameters, data("convnet"))
    for (name, buffer), expected in zip(compiled.net.named_buffers(), eager.net.buffers(), strict=True):
        torch.testing.assert_close(buffer, expected, msg=lambda m, name=name: f"{name}: {m}")  # running statistics
    assert compiled.net[1].num_batches_tracked == 1


def test_remaining_ops_compile_in_one_graph_and_match_eager():
    """tanh, leaky_relu, avg_pool2d, batch_norm (eval), dropout, layer_norm, softmax, log_softmax and mse_loss."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 6, generator=g, requires_grad=True)
    weight, bias = torch.randn(3, generator=g, requires_grad=True), torch.randn(3, generator=g, requires_grad=True)
    target = torch.randn(2, 27, generator=g)
    running_mean, running_var = torch.randn(3, generator=g), torch.rand(3, generator=g) + 0.5

    def step(x, weight, bias):
        h = F.avg_pool2d(F.leaky_relu(F.tanh(x), 0.1), 2)  # (2, 3, 3, 3)
        h = F.batch_norm(h, running_mean, running_var, training=False)
        h = F.layer_norm(F.dropout(h, 0.3), (3,), weight, bias).flatten(1)  # (2, 27)
        return F.mse_loss(F.softmax(h, dim=1) + F.log_softmax(h, dim=0), target)

    assert_compiled_matches_eager(lambda: step, lambda _: [x, weight, bias], (x, weight, bias))


@pytest.mark.parametrize("op", ["mlp", "mlp_loss(cross_entropy)", "mlp_loss(mse)"])
def test_fused_ops_compile_in_one_graph_and_match_eager(op):
    g = torch.Generator().manual_seed(0)
    weights = [(torch.randn(16, 20, generator=g) / 20**0.5).requires_grad_(),
               (torch.randn(5, 16, generator=g) / 4).requires_grad_()]
    biases = [torch.randn(16, generator=g).requires_grad_(), torch.randn(5, generator=g).requires_grad_()]
    x, target = data("mlp")
    if op == "mlp_loss(mse)":
        target = torch.nn.functional.one_hot(target, 5).float()

    def step(x, target):
        if op == "mlp":
            return F.cross_entropy(F.mlp(x, weights, biases, "tanh"), target)
        loss, _ = F.mlp_loss(x, target, weights, biases, "relu", None, op[len("mlp_loss("):-1])
        return loss

    assert_compiled_matches_eager(lambda: step, lambda _: weights + biases, (x, target))


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
def test_compiled_step_under_bf16_autocast_matches_eager(kind):
    net = mlp() if kind == "mlp" else convnet()

    def make_step():
        inner = NetStep(copy.deepcopy(net))

        def step(x, target):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return inner(x, target)
        step.net = inner.net
        return step

    assert_compiled_matches_eager(make_step, parameters, data(kind), **BF16)


# --------------------------------------------------------------------------- what the compiled backward runs


def backward_graph_ops(net: torch.nn.Module, loss_fn, x, target) -> set[str]:
    """The aten ops of the backward graph AOTAutograd builds for ``loss_fn(net(x), target)``."""
    ops = set()

    def forward_compiler(graph_module, example_inputs):
        return make_boxed_func(graph_module.forward)

    def backward_compiler(graph_module, example_inputs):
        ops.update(str(node.target) for node in graph_module.graph.nodes if node.op == "call_function")
        return make_boxed_func(graph_module.forward)

    backend = aot_autograd(fw_compiler=forward_compiler, bw_compiler=backward_compiler)
    torch.compile(NetStep(net, loss_fn), backend=backend, fullgraph=True)(x, target).backward()
    return ops


def test_compiled_backward_is_the_hand_written_one():
    x, target = data("convnet")
    net = torch.nn.Sequential(convnet(), hnn.Sigmoid())
    ops = backward_graph_ops(net, F.cross_entropy, x, target)
    assert not [op for op in ops if "backward" in op], sorted(ops)
    assert "aten.sign.default" in ops  # ReLU's grad_y * sign(y)
    # cross_entropy's -onehot(t): dynamo hands backward a (zero) gradient for log p too, so the compiled graph
    # takes the general form, Lambda^T(grad_L) by scatter, not the two-kernel one (p - onehot(t): scatter_add)
    assert "aten.scatter.src" in ops
    # The check can fail: the torch.nn twin's compiled backward is made of aten's derivative ops.
    twin_ops = backward_graph_ops(torch.nn.Sequential(convnet(torch.nn), torch.nn.Sigmoid()),
                                  torch.nn.functional.cross_entropy, x, target)
    assert {"aten.convolution_backward.default", "aten.sigmoid_backward.default"} <= twin_ops


# --------------------------------------------------------------------------- the limitation


def test_compiled_cross_entropy_skips_the_class_index_check():
    logits, target = torch.randn(2, 5), torch.tensor([0, 7])
    with pytest.raises(IndexError, match="class index 7 is out of range"):  # eager: handgrad's own message
        F.cross_entropy(logits, target)
    with pytest.raises(RuntimeError, match="out of bounds"):  # compiled: gather's
        torch.compile(F.cross_entropy, backend="aot_eager", fullgraph=True)(logits, target)


# --------------------------------------------------------------------------- inductor


def test_mlp_under_inductor_matches_eager():
    """The default backend, inductor, generates and compiles C++ kernels for the forward and the hand-written
    backward: 20-40 s for a first compile on a 2-core CPU, the slowest test of the suite."""
    net = mlp()
    assert_compiled_matches_eager(lambda: NetStep(copy.deepcopy(net)), parameters, data("mlp"), backend="inductor")
