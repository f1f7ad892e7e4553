"""The whole MLP and its cost as one op (handgrad.functional.mlp_loss) beyond the shared table:
random depths and widths, mlp_loss_and_grads (no autograd) against autograd's gradients and
mlp_loss's backward, extreme logits, what it saves, and errors that name the shapes.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_functional_fused import mlp_inputs, saved_bytes  # tests/ is on sys.path

from handgrad.functional.fused import ACTIVATIONS, mlp
from handgrad.functional.mlp_loss import mlp_loss, mlp_loss_and_grads
from handgrad.verify import compare, gradcheck, mlp_loss_by_name, mlp_loss_reference

activations = st.sampled_from(ACTIVATIONS)


@settings(max_examples=40, deadline=None)
@given(widths=st.lists(st.integers(1, 8), min_size=2, max_size=4), batch=st.integers(1, 6),
       activation=activations, loss=st.sampled_from(["mse", "cross_entropy"]),
       reduction=st.sampled_from(["mean", "sum"]), data=st.data(), seed=st.integers(0, 2**16))
def test_mlp_loss_random_depths_and_widths(widths, batch, activation, loss, reduction, data, seed):
    output_activation = None if loss == "cross_entropy" else data.draw(activations)
    inputs = mlp_inputs(widths, [True] * (len(widths) - 1), (batch,), seed,
                        target="values" if loss == "mse" else "classes")
    kwargs = dict(activation=activation, output_activation=output_activation, loss=loss, reduction=reduction,
                  negative_slope=0.1)
    compare(mlp_loss_by_name, mlp_loss_reference, inputs, kwargs).assert_close()


@pytest.mark.parametrize("loss, output_activation", [("mse", "sigmoid"), ("cross_entropy", None)])
def test_mlp_loss_returns_the_detached_output_of_mlp(loss, output_activation):
    inputs = mlp_inputs([5, 4, 3], [True, True], target="values" if loss == "mse" else "classes")
    x, target, w0, b0, w1, b1 = (inputs[k] for k in ("input", "target", "weight0", "bias0", "weight1", "bias1"))
    value, output = mlp_loss(x, target, [w0, w1], [b0, b1], "relu", output_activation, loss)
    assert not output.requires_grad and value.requires_grad
    torch.testing.assert_close(output, mlp(x, [w0, w1], [b0, b1], "relu", output_activation), rtol=0, atol=0)


def test_mlp_loss_batch_of_one_gradcheck():
    for loss in ("mse", "cross_entropy"):
        inputs = mlp_inputs([5, 4, 3], [True, True], (1,), target="values" if loss == "mse" else "classes")
        kwargs = dict(activation="tanh", loss=loss)
        compare(mlp_loss_by_name, mlp_loss_reference, inputs, kwargs).assert_close()
        assert gradcheck(mlp_loss_by_name, inputs, kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cross_entropy_of_huge_logits_stays_finite(dtype):
    inputs = mlp_inputs([5, 4, 3], [True, True], dtype=dtype, target="classes")
    inputs["bias1"] = (inputs["bias1"].detach() * 1e4).requires_grad_()  # logits ~ 1e4: softmax saturates
    comparison = compare(mlp_loss_by_name, mlp_loss_reference, inputs, dict(activation="tanh"))
    assert torch.isfinite(comparison.output).all()
    assert all(torch.isfinite(g).all() for g in comparison.grads.values())
    comparison.assert_close()


@pytest.mark.parametrize("loss, activation, output_activation",
                         [("mse", "sigmoid", "sigmoid"), ("cross_entropy", "relu", None)])
def test_mlp_loss_saves_no_more_than_autograd(loss, activation, output_activation):
    inputs = mlp_inputs([784, 30, 10], [True, True], (10,), dtype=torch.float32,
                        target="values" if loss == "mse" else "classes")
    inputs["input"].requires_grad_(False)  # a batch of data
    if loss == "mse":
        inputs["target"].requires_grad_(False)
    kwargs = dict(activation=activation, output_activation=output_activation, loss=loss)
    hand = saved_bytes(lambda: mlp_loss_by_name(**inputs, **kwargs))
    autograd = saved_bytes(lambda: mlp_loss_reference(**inputs, **kwargs))
    assert 0 < hand <= autograd


# --------------------------------------------------------------------------- without autograd


@settings(max_examples=30, deadline=None)
@given(widths=st.lists(st.integers(1, 8), min_size=2, max_size=4), batch=st.integers(1, 6),
       activation=activations, loss=st.sampled_from(["mse", "cross_entropy"]),
       reduction=st.sampled_from(["mean", "sum"]), data=st.data(), seed=st.integers(0, 2**16))
def test_mlp_loss_and_grads_equal_autograds_gradients(widths, batch, activation, loss, reduction, data, seed):
    output_activation = None if loss == "cross_entropy" else data.draw(activations)
    has_bias = data.draw(st.lists(st.booleans(), min_size=len(widths) - 1, max_size=len(widths) - 1))
    inputs = mlp_inputs(widths, has_bias, (batch,), seed, target="values" if loss == "mse" else "classes")
    kwargs = dict(activation=activation, output_activation=output_activation, loss=loss, reduction=reduction,
                  negative_slope=0.1)
    params = [inputs[f"{kind}{i}"] for i in range(len(widths) - 1) for kind in ("weight", "bias")]

    expected = mlp_loss_reference(**inputs, **kwargs)
    expected.backward()
    value, output, grads = mlp_loss_and_grads(inputs["input"], inputs["target"], params[0::2], params[1::2],
                                              **kwargs)
    torch.testing.assert_close(value, expected.detach())
    for param, grad in zip(params, grads, strict=True):
        if param is None:
            assert grad is None
        else:
            torch.testing.assert_close(grad, param.grad)
    assert not any(t.requires_grad for t in [value, output, *grads] if t is not None)  # no graph was recorded


def test_mlp_loss_and_grads_is_mlp_loss_backward_bit_for_bit():
    inputs = mlp_inputs([784, 30, 10], [True, True], (10,), dtype=torch.float32, target="values")
    x, t, w0, b0, w1, b1 = (inputs[k] for k in ("input", "target", "weight0", "bias0", "weight1", "bias1"))
    t.requires_grad_(False)
    value, _ = mlp_loss(x, t, [w0, w1], [b0, b1], "sigmoid", "sigmoid", "mse")
    value.backward()
    value_direct, _, grads = mlp_loss_and_grads(x, t, [w0, w1], [b0, b1], "sigmoid", "sigmoid", "mse")
    assert torch.equal(value_direct, value.detach())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, [w0, b0, w1, b1], strict=True))


# --------------------------------------------------------------------------- errors name the shapes


def mlp_loss_args(n=4, d_in=5, d_out=3):
    return torch.randn(n, d_in), [torch.randn(d_out, d_in)], [None]


def test_mlp_loss_target_shape():
    x, weights, biases = mlp_loss_args()
    with pytest.raises(ValueError, match=r"loss='mse', an input of shape \(4, 5\) and an output of 3 features need a "
                                         r"target of shape \(4, 3\), got \(4,\)"):
        mlp_loss(x, torch.randn(4), weights, biases, loss="mse")
    with pytest.raises(ValueError, match=r"need a target of shape \(4,\), got \(4, 3\)"):
        mlp_loss(x, torch.zeros(4, 3, dtype=torch.long), weights, biases, loss="cross_entropy")


def test_mlp_loss_cross_entropy_needs_logits_and_class_indices():
    x, weights, biases = mlp_loss_args()
    with pytest.raises(ValueError, match=r"cross_entropy takes logits, but output_activation='softmax'"):
        mlp_loss(x, torch.tensor([0, 1, 2, 0]), weights, biases, output_activation="softmax")
    with pytest.raises(TypeError, match=r"integer class indices \(torch.long\), got dtype torch.float32"):
        mlp_loss(x, torch.rand(4), weights, biases)
    with pytest.raises(RuntimeError, match=r"index 3 is out of bounds for dimension 1 with size 3"):
        mlp_loss(x, torch.tensor([0, 1, 3, 0]), weights, biases)  # left to gather: no host sync a step


def test_mlp_loss_unknown_loss_reduction_and_unflattened_input():
    x, weights, biases = mlp_loss_args()
    with pytest.raises(ValueError, match=r"loss='nll' is not one of 'mse', 'cross_entropy'"):
        mlp_loss(x, torch.tensor([0, 1, 2, 0]), weights, biases, loss="nll")
    with pytest.raises(ValueError, match=r"reduction='none' is not one of 'mean', 'sum'.*use mlp and cross_entropy"):
        mlp_loss(x, torch.tensor([0, 1, 2, 0]), weights, biases, reduction="none")
    with pytest.raises(ValueError, match=r"expected an input of shape \(N, 5\), got \(2, 2, 5\).*flatten"):
        mlp_loss(x.reshape(2, 2, 5), torch.tensor([0, 1]), weights, biases)
