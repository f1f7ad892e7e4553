"""batch_norm and layer_norm beyond the shared table (handgrad.verify.cases.normalization): a bias without a
weight (where torch's own double backward raises), torch's wrong Hessians under torch.func, empty inputs,
the running statistics under torch.func, batched weights under vmap, legacy batched gradients, and the
error messages."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch
import torch.nn.functional as torch_F
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vmap

import handgrad.functional as F
import handgrad.nn as hnn
from handgrad.verify import compare
from handgrad.verify.cases.normalization import (
    BIAS_WITHOUT_WEIGHT,
    CASES,
    batch_norm_decomposed,
    layer_norm_decomposed,
)
from handgrad.verify.transforms import CHECKS, positional, scalarised, weights_like

ROWS = {case.name: case for case in CASES + BIAS_WITHOUT_WEIGHT}
F64 = torch.float64


def decomposed(case):
    return batch_norm_decomposed if case.op == "batch_norm" else layer_norm_decomposed


# --------------------------------------------------------------------------- a bias without a weight


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", BIAS_WITHOUT_WEIGHT, ids=lambda c: c.name)
def test_bias_without_weight_matches_torch(case, dtype):
    compare(case.hand, case.reference, case.inputs(dtype), case.kwargs).assert_close()


@pytest.mark.parametrize("check", ["gradgradcheck", "vmap_grad", "jvp", "jacrev", "jacfwd", "hessian"])
@pytest.mark.parametrize("case", BIAS_WITHOUT_WEIGHT, ids=lambda c: c.name)
def test_bias_without_weight_under_every_transform(case, check):
    CHECKS[check](case)  # against torch, and the Hessian against the decomposition (reference_second)


@pytest.mark.parametrize("case", BIAS_WITHOUT_WEIGHT, ids=lambda c: c.name)
def test_bias_without_weight_gradient_penalty_against_the_decomposition(case):
    """torch's own create_graph double backward raises here ("Expected a proper Tensor but got None"); the
    penalty's gradient is checked against the decomposition's instead (zeros where neither has a graph)."""
    def penalty_grads(fn):
        f, primals = positional(fn, case.inputs(F64), case.kwargs)
        xs = [p.requires_grad_() for p in primals]
        output = f(*xs)
        grads = torch.autograd.grad((output * weights_like(output)).sum(), xs, create_graph=True)
        value = sum((g * g).sum() for g in grads)
        if not value.requires_grad:
            return [torch.zeros_like(x) for x in xs]
        return torch.autograd.grad(value, xs, allow_unused=True, materialize_grads=True)
    torch.testing.assert_close(penalty_grads(case.hand), penalty_grads(decomposed(case)))
    with pytest.raises(RuntimeError, match="Expected a proper Tensor but got None"):
        penalty_grads(case.reference)  # if torch's starts to work, move these rows into the table


@pytest.mark.parametrize("case", BIAS_WITHOUT_WEIGHT[1:], ids=lambda c: c.name)
def test_bias_without_weight_under_bf16_autocast(case):
    """Against the decomposition, in float32 with the input cast as autocast casts it: torch's layer_norm backward
    raises for a bfloat16 input with a float32 bias ("expected scalar type BFloat16 but found Float")."""
    inputs = case.inputs(torch.float32)
    inputs["input"] = inputs["input"].detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        comparison = compare(case.hand, lambda input, **kw: decomposed(case)(input.float(), **kw).bfloat16(), inputs,
                             case.kwargs)
    comparison.assert_close(rtol=1.6e-2, atol=1e-2)
    assert comparison.grads["input"].dtype == torch.bfloat16 and comparison.grads["bias"].dtype == torch.float32


# --------------------------------------------------------------------------- torch's second derivatives


@pytest.mark.parametrize("name", ["batch_norm(train, N C)", "layer_norm(last dim)"])
def test_torch_func_hessian_of_torchs_own_op_is_wrong_hence_reference_second(name):
    """torch 2.14's batch_norm (training) and layer_norm under jacfwd(jacrev) give a d(grad_weight)/d(input)
    block that is not the transpose of the d(grad_input)/d(weight) one; the decomposition, torch's own
    create_graph double backward and handgrad agree. If torch's becomes right, reference_second can go."""
    case = ROWS[name]

    def blocks(fn):
        f, primals = positional(fn, case.inputs(F64), case.kwargs)
        w = weights_like(f(*primals))
        h = jacfwd(jacrev(scalarised(f, w), (0, 1)), (0, 1))(*primals)
        return h[1][0], h[0][1]  # d2/dweight dinput, d2/dinput dweight

    def by_create_graph(fn):
        f, primals = positional(fn, case.inputs(F64), case.kwargs)
        x, weight = (p.requires_grad_() for p in primals[:2])
        w = weights_like(f(x, weight, *primals[2:]))
        grad_weight = torch.autograd.grad((f(x, weight, *primals[2:]) * w).sum(), weight, create_graph=True)[0]
        return torch.stack([torch.autograd.grad(g, x, retain_graph=True)[0] for g in grad_weight])

    mixed, mixed_transposed = blocks(decomposed(case))
    torch.testing.assert_close(blocks(case.hand), (mixed, mixed_transposed))
    torch.testing.assert_close(by_create_graph(case.hand), mixed)
    torch.testing.assert_close(by_create_graph(case.reference), mixed)
    torch_mixed, torch_mixed_transposed = blocks(case.reference)
    torch.testing.assert_close(torch_mixed_transposed, mixed_transposed)
    assert not torch.allclose(torch_mixed, mixed)


# --------------------------------------------------------------------------- empty inputs


def test_batch_norm_of_an_empty_batch_in_training_is_empty_and_leaves_the_running_statistics():
    results = {}
    for name, op in (("hand", F.batch_norm), ("torch", torch_F.batch_norm)):
        x = torch.randn(0, 5, 9, dtype=F64, requires_grad=True)
        weight, bias = (torch.randn(5, dtype=F64, generator=torch.Generator().manual_seed(i)).requires_grad_()
                        for i in range(2))
        mean, var = torch.randn(5, dtype=F64), torch.rand(5, dtype=F64)
        before = mean.clone(), var.clone()
        output = op(x, mean, var, weight, bias, training=True)
        output.sum().backward()
        torch.testing.assert_close((mean, var), before)
        results[name] = output, x.grad, weight.grad, bias.grad
    torch.testing.assert_close(results["hand"], results["torch"])
    assert results["hand"][0].shape == (0, 5, 9) and torch.equal(results["hand"][2], torch.zeros(5, dtype=F64))


def test_batch_norm_of_an_empty_batch_is_twice_differentiable_with_zeros():
    def empty_batch(dtype, g):
        weight, bias = (torch.randn(3, dtype=dtype).requires_grad_() for _ in range(2))
        return dict(input=torch.randn(0, 3, 2, 2, dtype=dtype).requires_grad_(), running_mean=None, running_var=None,
                    weight=weight, bias=bias)
    case = dataclasses.replace(ROWS["batch_norm(train, N C H W)"], make_inputs=empty_batch)
    f, primals = positional(case.hand, case.inputs(F64), case.kwargs)
    assert torch.autograd.gradgradcheck(f, [p.requires_grad_() for p in primals])
    second = hessian(lambda *p: f(*p).sum(), (1, 2))(*primals)
    assert all(torch.equal(block, torch.zeros_like(block)) for row in second for block in row)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_of_an_empty_1d_input_as_torch(training):
    for vectors in ((None, None), (torch.zeros(0), torch.ones(0)), (torch.zeros(3), torch.ones(3))):
        if training or vectors[0] is not None:
            x = torch.randn(0, requires_grad=True)
            output = F.batch_norm(x, *vectors, training=training)
            expected = torch_F.batch_norm(x, *vectors, training=training)
            assert output.shape == expected.shape == (0,)
            output.sum().backward()
            assert x.grad.shape == (0,)


def test_batch_norm_without_channels_as_torch():
    x = torch.randn(4, 0, 3, requires_grad=True)
    output = F.batch_norm(x, None, None, training=True)
    assert output.shape == (4, 0, 3) and output.requires_grad
    torch.testing.assert_close(output, torch_F.batch_norm(x, None, None, training=True))


@pytest.mark.parametrize("shape, normalized_shape", [((0, 4), (4,)), ((3, 0), (0,)), ((2, 0, 3), (0, 3))])
def test_layer_norm_of_empty_inputs_as_torch(shape, normalized_shape):
    x = torch.randn(shape, dtype=F64, requires_grad=True)
    weight, bias = torch.randn(normalized_shape, dtype=F64), torch.randn(normalized_shape, dtype=F64)
    compare(F.layer_norm, torch_F.layer_norm,
            dict(input=x, weight=weight.requires_grad_(), bias=bias.requires_grad_()),
            dict(normalized_shape=normalized_shape)).assert_close()


@pytest.mark.parametrize("name, shape", [("BatchNorm1d", (0, 5)), ("BatchNorm1d", (0, 5, 4)),
                                         ("BatchNorm2d", (0, 5, 2, 2)), ("BatchNorm3d", (0, 5, 2, 2, 2))])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_module_counts_an_empty_batch_and_keeps_its_statistics(name, shape, momentum):
    modules = {}
    for backend in (hnn, torch.nn):
        torch.manual_seed(0)
        module = getattr(backend, name)(5, momentum=momentum).double()
        module(torch.randn(4, *shape[1:], dtype=F64))  # a real batch first
        state = {k: v.clone() for k, v in module.state_dict().items()}
        x = torch.randn(shape, dtype=F64, requires_grad=True)
        output = module(x)
        output.sum().backward()
        assert output.shape == shape and module.num_batches_tracked == 2
        torch.testing.assert_close(module.running_mean, state["running_mean"])
        torch.testing.assert_close(module.running_var, state["running_var"])
        module(torch.randn(3, *shape[1:], dtype=F64))  # momentum=None: the average of 2 real batches, 3 counted
        modules[backend] = module, module.weight.grad
    torch.testing.assert_close(modules[hnn][0].state_dict(), modules[torch.nn][0].state_dict())
    torch.testing.assert_close(modules[hnn][1], modules[torch.nn][1])


# --------------------------------------------------------------------------- running statistics under torch.func


TRANSFORMS = {
    "grad": lambda f, x: grad(lambda x: f(x).sum())(x),
    "jvp": lambda f, x: jvp(f, (x,), (torch.ones_like(x),)),
    "jacrev": lambda f, x: jacrev(f)(x),
    "jacfwd": lambda f, x: jacfwd(f)(x),
    "hessian": lambda f, x: hessian(lambda x: (f(x) ** 2).sum())(x),
}


@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_running_statistics_update_under_torch_func_as_torch(transform):
    """The buffers are captured by the transformed function, not its inputs: torch's kernel updates them with
    the primal statistics, below the transform's levels, and so does handgrad."""
    x = torch.randn(6, 3, 2, dtype=F64)
    results = {}
    for name, op in (("hand", F.batch_norm), ("torch", torch_F.batch_norm)):
        mean, var = torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)
        value = TRANSFORMS[transform](lambda x, op=op, mean=mean, var=var: op(x, mean, var, training=True,
                                                                                momentum=0.3), x)
        results[name] = value, mean, var
    torch.testing.assert_close(results["hand"], results["torch"])
    assert not torch.equal(results["hand"][1], torch.zeros(3, dtype=F64))


def test_per_sample_running_statistics_under_vmap_as_torch():
    x = torch.randn(4, 6, 3, dtype=F64)
    results = {}
    for name, op in (("hand", F.batch_norm), ("torch", torch_F.batch_norm)):
        mean, var = torch.zeros(4, 3, dtype=F64), torch.ones(4, 3, dtype=F64)
        output = vmap(lambda x, m, v, op=op: op(x, m, v, training=True))(x, mean, var)
        results[name] = output, mean, var
    torch.testing.assert_close(results["hand"], results["torch"])


# --------------------------------------------------------------------------- batched weights, batched gradients


@pytest.mark.parametrize("name", ["batch_norm(train, N C H W)", "batch_norm(eval, N C H W)", "layer_norm(last 2 dims)"])
def test_vmap_over_the_weight_and_bias_alone(name):
    """An ensemble: the weight and bias batched, the input not (the forward's in-place arithmetic is off)."""
    case = ROWS[name]
    inputs = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in case.inputs(F64).items()}
    weights = torch.stack([inputs["weight"], 2 * inputs["weight"], -inputs["weight"]])
    biases = torch.stack([inputs["bias"], inputs["bias"] + 1, inputs["bias"] - 1])

    def run(op):
        def f(weight, bias):
            return op(**{**inputs, "weight": weight, "bias": bias}, **case.kwargs)
        output = vmap(f)(weights, biases)
        grads = vmap(grad(lambda w, b: (f(w, b) ** 2).sum(), (0, 1)))(weights, biases)
        return output, grads
    torch.testing.assert_close(run(case.hand), run(case.reference))


@pytest.mark.parametrize("name", ["batch_norm(train, N C H W)", "batch_norm(eval, N C H W)", "layer_norm(last dim)"])
def test_legacy_batched_gradients(name):
    """autograd.functional.jacobian(vectorize=True) runs the backward on legacy BatchedTensors, which refuse the
    in-place arithmetic: may_overwrite(grad_output) turns it off there."""
    case = ROWS[name]
    f, primals = positional(case.hand, case.inputs(F64), case.kwargs)
    reference, _ = positional(case.reference, case.inputs(F64), case.kwargs)
    jacobian = torch.autograd.functional.jacobian
    torch.testing.assert_close(jacobian(f, tuple(primals), vectorize=True),
                               jacobian(reference, tuple(primals), vectorize=True))


@pytest.mark.parametrize("name", ["batch_norm(train, N C)", "batch_norm(eval, N C)", "layer_norm(last dim)"])
def test_gradcheck_with_forward_mode_undefined_tangents_and_batched_gradients(name):
    case = ROWS[name]
    f, primals = positional(case.hand, case.inputs(F64), case.kwargs)
    assert torch.autograd.gradcheck(f, [p.requires_grad_() for p in primals], check_forward_ad=True,
                                    check_batched_grad=True, check_undefined_grad=True)


# --------------------------------------------------------------------------- errors name the value and the fix


def test_batch_norm_errors():
    x = torch.randn(4, 3)
    with pytest.raises(TypeError, match=r"batch_norm: input of dtype torch.int64 is not floating point"):
        F.batch_norm(torch.ones(4, 3, dtype=torch.long), None, None, training=True)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, C, \*\), got \(3,\); a single example"):
        F.batch_norm(torch.randn(3), torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match=r"running_mean is given but running_var is None; pass both"):
        F.batch_norm(x, torch.zeros(3), None, training=True)
    with pytest.raises(ValueError, match=r"running_var is given but running_mean is None"):
        F.batch_norm(x, None, torch.ones(3))
    with pytest.raises(ValueError, match=r"eps must be positive in training and non-negative otherwise, got 0.0"):
        F.batch_norm(x, None, None, training=True, eps=0.0)
    with pytest.raises(ValueError, match=r"eps must be positive .*, got -1.0"):
        F.batch_norm(x, torch.zeros(3), torch.ones(3), eps=-1.0)
    with pytest.raises(TypeError, match=r"momentum must be a number, got None; nn.BatchNorm's momentum=None"):
        F.batch_norm(x, torch.zeros(3), torch.ones(3), training=True, momentum=None)


@pytest.mark.parametrize("name, shape", [("BatchNorm1d", (2, 10)), ("BatchNorm2d", (2, 10, 5, 5)),
                                         ("BatchNorm3d", (2, 10, 4, 4, 4))])
@pytest.mark.parametrize("eps", [-1.0, 0.0])
def test_module_eps_errors_of_torchs_module_error_inputs(name, shape, eps):
    with pytest.raises(ValueError, match=rf"batch_norm: eps must be positive in training .*, got {eps}"):
        getattr(hnn, name)(10, eps=eps)(torch.randn(shape))


def test_layer_norm_errors():
    with pytest.raises(TypeError, match=r"layer_norm: input of dtype torch.int64 is not floating point"):
        F.layer_norm(torch.ones(2, 3, dtype=torch.long), (3,))
    with pytest.raises(ValueError, match=r"layer_norm: normalized_shape is empty; pass the trailing dimension"):
        F.layer_norm(torch.randn(2, 3), ())
    with pytest.raises(ValueError, match=r"normalized_shape \(2, 3\) must equal the last 2 dimension\(s\)"):
        F.layer_norm(torch.randn(3), (2, 3))


# --------------------------------------------------------------------------- the module split


def test_functional_batch_norm_module_and_function_names():
    """handgrad.functional.batch_norm is the function (the package re-exports it over its submodule's name);
    the module is importlib's."""
    module = importlib.import_module("handgrad.functional.batch_norm")
    assert F.batch_norm is module.batch_norm and callable(F.batch_norm)
