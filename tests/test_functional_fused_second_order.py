"""The fused ops (handgrad.functional.fused, mlp_loss) beyond first derivatives, past what the table's
transform checks (tests/test_transforms.py) cover: the extra outputs' own gradients, Hessian-vector
products, ensembles (vmap over the weights), forward AD with some tangents missing, NaN inputs,
and second derivatives under autocast.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as torch_F
from test_functional_fused import mlp_inputs  # tests/ is on sys.path
from torch.func import grad, jvp, vmap
from torch.testing import assert_close

from handgrad.functional.backprop import Activations
from handgrad.functional.fused import MLP, linear_activation, mlp
from handgrad.functional.mlp_loss import MLPLoss, mlp_loss, mlp_loss_and_grads
from handgrad.verify import TORCH_ACTIVATIONS, linear_activation_reference, mlp_loss_reference, mlp_reference

NETWORKS = {  # widths, activation, output_activation, loss
    "sigmoid, mse": ([6, 5, 4], "sigmoid", "sigmoid", "mse"),
    "relu, cross_entropy": ([6, 5, 4, 3], "relu", None, "cross_entropy"),
    "tanh, softmax out, mse": ([6, 5, 4, 3], "tanh", "softmax", "mse"),
    "leaky_relu, cross_entropy, sum": ([6, 5, 4, 3], "leaky_relu", None, "cross_entropy"),
}


def network(name, dtype=torch.float64, batch=(7,), seed=0):
    widths, activation, output_activation, loss = NETWORKS[name]
    inputs = mlp_inputs(widths, [True] * (len(widths) - 1), batch, seed, dtype,
                        target="values" if loss == "mse" else "classes")
    if loss == "mse":
        inputs["target"].requires_grad_(False)
    weights = [inputs[f"weight{i}"] for i in range(len(widths) - 1)]
    biases = [inputs[f"bias{i}"] for i in range(len(widths) - 1)]
    kwargs = dict(activation=activation, output_activation=output_activation, loss=loss,
                  reduction="sum" if name.endswith("sum") else "mean")
    return inputs, weights, biases, kwargs


def named(params) -> dict:
    """W_1, b_1, W_2, ... as the keyword arguments of the references: weight0, bias0, weight1, ..."""
    return {f"{'bias' if i % 2 else 'weight'}{i // 2}": p for i, p in enumerate(params)}


def torch_hidden(x, weights, biases, activation, output_activation):
    """[a_1, .., a_L] of the plain-torch network, as MLP returns them."""
    outputs, a = [], x
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        f = output_activation if i == len(weights) - 1 else activation
        a = TORCH_ACTIVATIONS[f](torch_F.linear(a, w, b), 0.01)
        outputs.append(a)
    return outputs


# --------------------------------------------------------------------------- every output has a gradient


@pytest.mark.parametrize("name", list(NETWORKS))
def test_every_output_of_mlp_loss_takes_its_own_gradient_twice(name):
    """L, y, the residual r and the hidden a_l all enter a loss: gradients and a gradient penalty equal
    torch's composition (r = y - t, or softmax(y) - onehot(t))."""
    inputs, weights, biases, kwargs = network(name)
    x, target = inputs["input"], inputs["target"]
    params = [p for pair in zip(weights, biases, strict=True) for p in pair]
    activations = Activations(kwargs["activation"], kwargs["output_activation"])

    def hand(x, *params):
        value, y, r, *hidden = MLPLoss.call(x, target, kwargs["loss"], kwargs["reduction"], activations, *params)
        return value, y, r, *hidden

    def reference(x, *params):
        *hidden, y = torch_hidden(x, params[0::2], params[1::2], kwargs["activation"], kwargs["output_activation"])
        value = mlp_loss_reference(x, target, **kwargs, **named(params))
        r = y - target if kwargs["loss"] == "mse" else torch.softmax(y, 1) - torch_F.one_hot(target, y.shape[1])
        return value, y, r, *hidden

    def combined(fn):
        def f(x, *params):
            value, y, r, *hidden = fn(x, *params)
            g = torch.Generator().manual_seed(5)
            return value + (y.square() * torch.rand(y.shape, generator=g, dtype=y.dtype)).sum() \
                + (r * torch.rand(r.shape, generator=g, dtype=r.dtype)).sum() + sum(a.tanh().sum() for a in hidden)
        return f

    results = []
    for fn in (combined(hand), combined(reference)):
        leaves = [t.detach().requires_grad_() for t in (x, *params)]
        grads = torch.autograd.grad(fn(*leaves), leaves, create_graph=True)
        penalty = sum(g.square().sum() for g in grads)
        results.append((grads, torch.autograd.grad(penalty, leaves)))
    assert_close(results[0], results[1])
    assert torch.autograd.gradgradcheck(combined(hand), [t.detach().requires_grad_() for t in (x, *params)])


def test_hidden_outputs_of_mlp_take_their_own_gradients():
    inputs, weights, biases, _ = network("relu, cross_entropy")
    params = [p for pair in zip(weights, biases, strict=True) for p in pair]

    def loss(outputs):
        y, *hidden = outputs
        return (y * y).sum() + sum((a * (i + 2)).sum() for i, a in enumerate(hidden))

    hand = loss(MLP.call(inputs["input"], Activations("relu", None), *params))
    *hidden, y = torch_hidden(inputs["input"], weights, biases, "relu", None)
    reference = loss((y, *hidden))
    assert_close(torch.autograd.grad(hand, params), torch.autograd.grad(reference, params))


# --------------------------------------------------------------------------- Hessian-vector products


def hvp(loss_fn, params, vectors):
    """H v by reverse over reverse: g = dL/dp with create_graph=True, then d(g . v)/dp."""
    grads = torch.autograd.grad(loss_fn(params), params, create_graph=True)
    return torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vectors, strict=True)), params)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_hessian_vector_product_through_mlp_loss_equals_torchs(name):
    inputs, weights, biases, kwargs = network(name)
    x, target = inputs["input"].detach(), inputs["target"]
    params = [p for pair in zip(weights, biases, strict=True) for p in pair]
    vectors = [torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(i))
               for i, p in enumerate(params)]

    def hand(params):
        return mlp_loss(x, target, params[0::2], params[1::2], **kwargs)[0]

    def reference(params):
        return mlp_loss_reference(x, target, **kwargs, **named(params))

    expected = hvp(reference, params, vectors)
    assert_close(hvp(hand, params, vectors), expected)
    # the same product forward over reverse, as torch.func computes it
    def of_tensors(*params):
        return hand(list(params))
    _, forward_over_reverse = jvp(grad(of_tensors, argnums=tuple(range(len(params)))), tuple(params), tuple(vectors))
    assert_close(list(forward_over_reverse), list(expected))


# --------------------------------------------------------------------------- ensembles: vmap over the weights


@pytest.mark.parametrize("name", list(NETWORKS))
def test_vmap_over_weights_equals_torch(name):
    """An ensemble of networks on one batch: the weights batched, the data not (under torch.func the
    forward's activations take their out-of-place path). Loss, per-member gradients, the outputs."""
    members = [network(name, seed=seed) for seed in range(3)]
    inputs, _, _, kwargs = members[0]
    x, target = inputs["input"].detach(), inputs["target"]
    depth = len(members[0][1])
    stacked = [torch.stack([m[1][i].detach() if kind == 0 else m[2][i].detach() for m in members])
               for i in range(depth) for kind in (0, 1)]

    def loss_of(fn):
        return lambda *params: fn(list(params))

    def hand(params):
        return mlp_loss(x, target, params[0::2], params[1::2], **kwargs)[0]

    def reference(params):
        return mlp_loss_reference(x, target, **kwargs, **named(params))

    argnums = tuple(range(len(stacked)))
    assert_close(vmap(loss_of(hand))(*stacked), vmap(loss_of(reference))(*stacked))
    assert_close(vmap(grad(loss_of(hand), argnums))(*stacked), vmap(grad(loss_of(reference), argnums))(*stacked))
    activation, output_activation = kwargs["activation"], kwargs["output_activation"]
    assert_close(vmap(lambda *ps: mlp(x, ps[0::2], ps[1::2], activation, output_activation))(*stacked),
                 vmap(lambda *ps: mlp_reference(x, activation, output_activation, **named(ps)))(*stacked))
    assert_close(vmap(lambda w, b: linear_activation(x, w, b, activation))(stacked[0], stacked[1]),
                 vmap(lambda w, b: linear_activation_reference(x, w, b, activation))(stacked[0], stacked[1]))


def test_vmap_over_targets_alone():
    """One batch, several targets: the residual's scatter acts on an unbatched temporary, out of place."""
    inputs, weights, biases, kwargs = network("relu, cross_entropy")
    targets = torch.stack([inputs["target"], inputs["target"].flip(0)])
    x = inputs["input"].detach()
    hand = vmap(lambda t: mlp_loss(x, t, weights, biases, **kwargs)[0])(targets)
    params = [p for pair in zip(weights, biases, strict=True) for p in pair]
    assert_close(hand, torch.stack([torch_F.cross_entropy(mlp_reference(x, "relu", **named(params)), t)
                                    for t in targets]))
    by_vmap = vmap(lambda t: mlp_loss_and_grads(x, t, weights, biases, **kwargs)[2])(targets)
    for i, t in enumerate(targets):
        assert_close([g[i] for g in by_vmap], mlp_loss_and_grads(x, t, weights, biases, **kwargs)[2])


# --------------------------------------------------------------------------- forward AD, some tangents missing


def test_forward_ad_with_a_tangent_on_one_weight_only():
    inputs, weights, biases, kwargs = network("sigmoid, mse")
    x, target = inputs["input"].detach(), inputs["target"]
    tangent = torch.randn(weights[1].shape, dtype=weights[1].dtype, generator=torch.Generator().manual_seed(1))
    fa = torch.autograd.forward_ad
    results = []
    for fn in ("hand", "reference"):
        with fa.dual_level():
            w1 = fa.make_dual(weights[1].detach(), tangent)
            ws, bs = [weights[0].detach(), w1], [b.detach() for b in biases]
            if fn == "hand":
                value = mlp_loss(x, target, ws, bs, **kwargs)[0]
                output = mlp(x, ws, bs, "sigmoid", "sigmoid")
            else:
                output = torch.sigmoid(torch_F.linear(torch.sigmoid(torch_F.linear(x, ws[0], bs[0])), w1, bs[1]))
                value = torch_F.mse_loss(output, target)
            results.append([fa.unpack_dual(t).tangent for t in (value, output)])
    assert_close(results[0], results[1])


# --------------------------------------------------------------------------- NaN inputs, as torch


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "sigmoid"])
def test_a_nan_input_gets_torchs_gradients(activation):
    """relu passes the upstream gradient at a NaN unit (torch's threshold_backward does): first order,
    through the ordinary (in place) backward and under create_graph."""
    inputs, weights, biases, _ = network("relu, cross_entropy", dtype=torch.float32)
    x = inputs["input"].detach().clone()
    x[2, 3] = float("nan")
    results = []
    for fn in (lambda x, w, b: linear_activation(x, w, b, activation),
               lambda x, w, b: linear_activation_reference(x, w, b, activation),
               lambda x, w, b: mlp(x, [w, weights[1]], [b, biases[1]], activation, activation),
               lambda x, w, b: mlp_reference(x, activation, activation, weight0=w, bias0=b, weight1=weights[1],
                                             bias1=biases[1])):
        for create_graph in (False, True):
            leaves = [t.detach().clone().requires_grad_() for t in (x, weights[0], biases[0])]
            results.append(torch.autograd.grad(fn(*leaves).sum(), leaves, create_graph=create_graph))
    assert_close(results[0:2], results[2:4], equal_nan=True)
    assert_close(results[4:6], results[6:8], equal_nan=True)


@pytest.mark.parametrize("name", ["relu, cross_entropy", "sigmoid, mse"])
def test_mlp_loss_with_a_nan_row_equals_torch(name):
    inputs, weights, biases, kwargs = network(name, dtype=torch.float32)
    x = inputs["input"].detach().clone()
    x[2, 3] = float("nan")
    params = [p for pair in zip(weights, biases, strict=True) for p in pair]
    reference = mlp_loss_reference(x, inputs["target"], **kwargs, **named(params))
    expected = torch.autograd.grad(reference, params)
    _, _, grads = mlp_loss_and_grads(x, inputs["target"], weights, biases, **kwargs)
    assert_close(grads, list(expected), equal_nan=True)
    assert_close(torch.autograd.grad(mlp_loss(x, inputs["target"], weights, biases, **kwargs)[0], params), expected,
                 equal_nan=True)


# --------------------------------------------------------------------------- second derivatives under autocast


@pytest.mark.parametrize("op", ["linear_activation", "mlp", "mlp_loss"])
def test_gradient_penalty_under_bf16_autocast_equals_torchs(op):
    """Under autocast the wrappers cast x and the W_l in front of the Function (recorded casts), so the
    copies its backward reads are inputs with a graph, and the penalty's gradient is torch's."""
    inputs, weights, biases, kwargs = network("sigmoid, mse", dtype=torch.float32)
    x, target = inputs["input"].detach(), inputs["target"]

    def run(hand):
        leaves = [t.detach().clone().requires_grad_() for t in (x, *weights, *biases)]
        x_, w0, w1, b0, b1 = leaves
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if op == "linear_activation":
                out = (linear_activation if hand else linear_activation_reference)(x_, w0, b0, "sigmoid")
                value = (out.float() * torch.linspace(-1, 1, out.shape[1])).sum()
            elif op == "mlp":
                out = mlp(x_, [w0, w1], [b0, b1], "sigmoid", "sigmoid") if hand else \
                    mlp_reference(x_, "sigmoid", "sigmoid", weight0=w0, bias0=b0, weight1=w1, bias1=b1)
                value = (out.float() * torch.linspace(-1, 1, out.shape[1])).sum()
            else:
                value = mlp_loss(x_, target, [w0, w1], [b0, b1], **kwargs)[0] if hand else \
                    mlp_loss_reference(x_, target, **kwargs, weight0=w0, bias0=b0, weight1=w1, bias1=b1)
        grads = torch.autograd.grad(value, leaves, create_graph=True, allow_unused=True)
        penalty = sum(g.float().square().sum() for g in grads if g is not None)
        return torch.autograd.grad(penalty, leaves, allow_unused=True, materialize_grads=True)

    assert_close(run(True), run(False), rtol=3e-2, atol=2e-2)
