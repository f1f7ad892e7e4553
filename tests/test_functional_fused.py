"""The fused ops (handgrad.functional.fused) beyond the shared table: random shapes and depths,
leading dimensions, what they save for backward, and errors that name the shapes.

The table rows (handgrad.verify.FUSED_CASES) already run through every check of
tests/test_functional.py: float32 and float64 against autograd, gradcheck, non-contiguous
inputs, and each input alone requiring grad.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import handgrad.functional as F
from handgrad.functional.fused import ACTIVATIONS, linear_activation, mlp
from handgrad.verify import (
    compare,
    gradcheck,
    linear_activation_reference,
    mlp_by_name,
    mlp_loss_by_name,
    mlp_loss_reference,
    mlp_reference,
)

activations = st.sampled_from(ACTIVATIONS)


def mlp_inputs(widths, has_bias, batch_shape=(7,), seed=0, dtype=torch.float64, target=None):
    """input, weight0, bias0, ... and, for ``target`` "values" (mse) or "classes" (cross-entropy), a target."""
    g = torch.Generator().manual_seed(seed)
    inputs = dict(input=torch.randn(*batch_shape, widths[0], dtype=dtype, generator=g).requires_grad_())
    if target == "values":
        inputs["target"] = torch.randn(*batch_shape, widths[-1], dtype=dtype, generator=g).requires_grad_()
    elif target == "classes":
        inputs["target"] = torch.randint(widths[-1], batch_shape, generator=g)
    for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        inputs[f"weight{i}"] = (torch.randn(d_out, d_in, dtype=dtype, generator=g) * d_in**-0.5).requires_grad_()
        inputs[f"bias{i}"] = torch.randn(d_out, dtype=dtype, generator=g).requires_grad_() if has_bias[i] else None
    return inputs


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages that ``fn`` saves for backward (each storage counted once)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


# --------------------------------------------------------------------------- random shapes (hypothesis)


@settings(max_examples=40, deadline=None)
@given(lead=st.lists(st.integers(1, 4), min_size=1, max_size=3), d_in=st.integers(1, 8), d_out=st.integers(1, 8),
       bias=st.booleans(), activation=activations, seed=st.integers(0, 2**16))
def test_linear_activation_random_shapes(lead, d_in, d_out, bias, activation, seed):
    g = torch.Generator().manual_seed(seed)
    inputs = dict(input=torch.randn(*lead, d_in, dtype=torch.float64, generator=g).requires_grad_(),
                  weight=torch.randn(d_out, d_in, dtype=torch.float64, generator=g).requires_grad_(),
                  bias=torch.randn(d_out, dtype=torch.float64, generator=g).requires_grad_() if bias else None)
    kwargs = dict(activation=activation, negative_slope=0.1)
    compare(linear_activation, linear_activation_reference, inputs, kwargs).assert_close()


@settings(max_examples=40, deadline=None)
@given(widths=st.lists(st.integers(1, 8), min_size=2, max_size=5), batch=st.integers(1, 6), data=st.data(),
       activation=activations, output_activation=activations, seed=st.integers(0, 2**16))
def test_mlp_random_depths_and_widths(widths, batch, data, activation, output_activation, seed):
    has_bias = data.draw(st.lists(st.booleans(), min_size=len(widths) - 1, max_size=len(widths) - 1))
    inputs = mlp_inputs(widths, has_bias, (batch,), seed)
    kwargs = dict(activation=activation, output_activation=output_activation, negative_slope=0.1)
    compare(mlp_by_name, mlp_reference, inputs, kwargs).assert_close()


# --------------------------------------------------------------------------- leading dims, batch of one, reuse


@pytest.mark.parametrize("batch_shape", [(1,), (2, 3), ()])
def test_mlp_leading_dims_and_batch_of_one(batch_shape):
    inputs = mlp_inputs([5, 4, 3], [True, True], batch_shape)
    kwargs = dict(activation="tanh", output_activation="sigmoid")
    compare(mlp_by_name, mlp_reference, inputs, kwargs).assert_close()
    assert gradcheck(mlp_by_name, inputs, kwargs)


def test_linear_activation_leading_dims_gradcheck():
    g = torch.Generator().manual_seed(0)
    inputs = dict(input=torch.randn(2, 3, 5, dtype=torch.float64, generator=g).requires_grad_(),
                  weight=torch.randn(4, 5, dtype=torch.float64, generator=g).requires_grad_(),
                  bias=torch.randn(4, dtype=torch.float64, generator=g).requires_grad_())
    for activation in ACTIVATIONS:
        assert gradcheck(linear_activation, inputs, dict(activation=activation))


def test_mlp_equals_linear_activation_layer_by_layer():
    inputs = mlp_inputs([6, 5, 4, 3], [True, True, True])
    x, (w0, b0, w1, b1, w2, b2) = inputs["input"], [inputs[k] for k in list(inputs)[1:]]
    fused = mlp(x, [w0, w1, w2], [b0, b1, b2], "relu", "sigmoid")
    layered = linear_activation(linear_activation(linear_activation(x, w0, b0, "relu"), w1, b1, "relu"), w2, b2,
                                "sigmoid")
    torch.testing.assert_close(fused, layered, rtol=0, atol=0)


def test_mlp_with_a_broadcast_upstream_gradient_and_shared_weights():
    # .sum() sends back an expanded (stride 0) gradient; the same weights used twice must accumulate.
    inputs = mlp_inputs([5, 4, 3], [True, True])

    def twice(fn):
        def run(**kwargs):
            return fn(**kwargs).sum() + fn(**kwargs).square().sum()
        return run

    kwargs = dict(activation="sigmoid", output_activation="tanh")
    compare(twice(mlp_by_name), twice(mlp_reference), inputs, kwargs).assert_close()


def test_mlp_under_no_grad_returns_the_forward():
    inputs = mlp_inputs([5, 4, 3], [True, True])
    kwargs = dict(activation="relu", output_activation=None)
    with torch.no_grad():
        y = mlp_by_name(**inputs, **kwargs)
    assert not y.requires_grad
    torch.testing.assert_close(y, mlp_reference(**inputs, **kwargs).detach())


# --------------------------------------------------------------------------- extreme magnitudes


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "softmax"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_saturating_activations_stay_finite(activation, dtype):
    inputs = mlp_inputs([5, 4, 3], [True, True], dtype=dtype)
    inputs["input"] = (inputs["input"].detach() * 1e4).requires_grad_()
    kwargs = dict(activation=activation, output_activation=activation)
    comparison = compare(mlp_by_name, mlp_reference, inputs, kwargs)
    assert torch.isfinite(comparison.output).all()
    assert all(torch.isfinite(g).all() for g in comparison.grads.values())
    comparison.assert_close()


# --------------------------------------------------------------------------- what is saved for backward


@pytest.mark.parametrize("activation, output_activation", [("sigmoid", "sigmoid"), ("relu", None)])
def test_mlp_saves_no_more_than_autograd(activation, output_activation):
    inputs = mlp_inputs([784, 30, 10], [True, True], (10,), dtype=torch.float32)
    kwargs = dict(activation=activation, output_activation=output_activation)
    hand = saved_bytes(lambda: mlp_by_name(**inputs, **kwargs))
    autograd = saved_bytes(lambda: mlp_reference(**inputs, **kwargs))
    assert 0 < hand <= autograd


def test_linear_activation_saves_only_what_each_gradient_needs():
    x = torch.randn(10, 784)  # a batch of data: nobody needs its gradient
    weight, bias = torch.randn(30, 784, requires_grad=True), torch.randn(30, requires_grad=True)
    # grad_W needs x and y (for sigmoid'), not W; the identity needs no y.
    assert saved_bytes(lambda: linear_activation(x, weight, bias, "sigmoid")) == x.nbytes + 10 * 30 * 4
    assert saved_bytes(lambda: linear_activation(x, weight, bias, None)) == x.nbytes


# --------------------------------------------------------------------------- errors name the shapes


def test_unknown_activation():
    with pytest.raises(ValueError, match=r"unknown activation 'gelu'; choose one of 'sigmoid', .*None"):
        linear_activation(torch.randn(4, 5), torch.randn(3, 5), None, "gelu")
    with pytest.raises(ValueError, match=r"mlp: unknown activation 'Sigmoid'"):
        mlp(torch.randn(4, 5), [torch.randn(3, 5)], [None], output_activation="Sigmoid")


def test_negative_slope_is_refused():
    with pytest.raises(ValueError, match=r"negative_slope=-0.1 is negative.*handgrad.functional.leaky_relu"):
        mlp(torch.randn(4, 5), [torch.randn(3, 5)], [None], "leaky_relu", "leaky_relu", negative_slope=-0.1)


def test_linear_activation_wrong_feature_size():
    with pytest.raises(ValueError, match=r"weight of shape \(3, 6\) expects 6 input features, but the input of "
                                         r"shape \(4, 5\) gives 5"):
        linear_activation(torch.randn(4, 5), torch.randn(3, 6))


def test_mlp_layers_that_do_not_chain():
    with pytest.raises(ValueError, match=r"weights\[1\] of shape \(10, 31\) expects 31 input features, but "
                                         r"weights\[0\] of shape \(30, 784\) gives 30"):
        mlp(torch.randn(2, 784), [torch.randn(30, 784), torch.randn(10, 31)], [None, None])


def test_mlp_wrong_bias_shape_and_count():
    with pytest.raises(ValueError, match=r"biases\[1\] of shape \(30,\) does not match weights\[1\] of shape "
                                         r"\(10, 30\); expected \(10,\)"):
        mlp(torch.randn(2, 784), [torch.randn(30, 784), torch.randn(10, 30)], [torch.randn(30), torch.randn(30)])
    with pytest.raises(ValueError, match=r"one bias \(or None\) per weight.*got 2 weights and 1 biases"):
        mlp(torch.randn(2, 784), [torch.randn(30, 784), torch.randn(10, 30)], [torch.randn(30)])


def test_weight_must_be_2d():
    with pytest.raises(ValueError, match=r"weights\[0\] must be 2-D \(out_features, in_features\), got shape \(5,\)"):
        mlp(torch.randn(2, 5), [torch.randn(5)], [None])


def test_fused_ops_agree_with_the_unfused_hand_written_ones():
    # The fused op and handgrad's own per-op chain walk the same path (not just autograd's).
    inputs = mlp_inputs([8, 6, 4], [True, True], dtype=torch.float32)
    x, w0, b0, w1, b1 = (inputs[k] for k in ("input", "weight0", "bias0", "weight1", "bias1"))
    unfused = F.sigmoid(F.linear(F.sigmoid(F.linear(x, w0, b0)), w1, b1))
    torch.testing.assert_close(mlp(x, [w0, w1], [b0, b1], "sigmoid", "sigmoid"), unfused)


# --------------------------------------------------------------------------- autocast


def autocast_bf16(fn):
    def run(**inputs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn(**inputs).float()
    return run


@pytest.mark.parametrize("op", ["linear_activation", "mlp", "mlp_loss(mse)", "mlp_loss(cross_entropy)"])
def test_under_bf16_autocast_matches_autograd(op):
    # Under autocast the forward's matmuls run in bf16, so the backward gets bf16 gradients and
    # multiplies them with bf16 copies of the saved input and weights; parameter gradients come
    # back in the parameters' fp32.
    loss = op[len("mlp_loss("):-1] if op.startswith("mlp_loss") else None
    inputs = mlp_inputs([32, 16, 8], [True, True], (6,), dtype=torch.float32,
                        target={"mse": "values", "cross_entropy": "classes", None: None}[loss])
    if op == "linear_activation":
        inputs = dict(input=inputs["input"], weight=inputs["weight0"], bias=inputs["bias0"])
        hand, reference, kwargs = linear_activation, linear_activation_reference, dict(activation="sigmoid")
    elif op == "mlp":
        hand, reference, kwargs = mlp_by_name, mlp_reference, dict(activation="relu", output_activation="sigmoid")
    else:
        hand, reference, kwargs = mlp_loss_by_name, mlp_loss_reference, dict(activation="relu", loss=loss)
    comparison = compare(autocast_bf16(hand), autocast_bf16(reference), inputs, kwargs)
    assert all(g.dtype == torch.float32 for g in comparison.grads.values())
    comparison.assert_close(rtol=1.6e-2, atol=1e-2)  # bf16 keeps ~3 significant digits


def test_under_bf16_autocast_saves_no_more_than_autograd():
    inputs = mlp_inputs([784, 30, 10], [True, True], (10,), dtype=torch.float32)
    inputs["input"].requires_grad_(False)
    kwargs = dict(activation="sigmoid", output_activation="sigmoid")
    hand = saved_bytes(autocast_bf16(lambda: mlp_by_name(**inputs, **kwargs)))
    autograd = saved_bytes(autocast_bf16(lambda: mlp_reference(**inputs, **kwargs)))
    assert 0 < hand <= autograd

