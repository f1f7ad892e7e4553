"""Edge cases PyTorch's own samples found (tests/test_torch_samples.py runs all of them): a NaN into relu,
softmax over an empty dimension, softmax's ``dtype=`` argument, linear with no input features. Each is
handgrad against torch: the output and every gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as torch_F

import handgrad.functional as F
from handgrad.verify import compare

NAN, INF = float("nan"), float("inf")


def test_relu_passes_the_gradient_at_nan_as_torch_does():
    """torch's derivative is threshold_backward(grad, y, 0): grad where not (y <= 0), so a NaN input keeps it."""
    x = torch.tensor([NAN, -INF, INF, -1.0, 0.0, 2.0], dtype=torch.float64, requires_grad=True)
    comparison = compare(F.relu, torch_F.relu, dict(input=x))
    comparison.assert_close(equal_nan=True)
    assert comparison.grads["input"][0] != 0  # the NaN's gradient passes


@pytest.mark.parametrize("op, reference", [(F.softmax, torch_F.softmax), (F.log_softmax, torch_F.log_softmax)])
@pytest.mark.parametrize("shape, dim", [((5, 0, 0), -1), ((0, 3), 1), ((4, 0), 0), ((), 0)])
def test_softmax_over_an_empty_dim_or_a_scalar(op, reference, shape, dim):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    compare(op, reference, dict(input=x), dict(dim=dim)).assert_close()


@pytest.mark.parametrize("op, reference", [(F.softmax, torch_F.softmax), (F.log_softmax, torch_F.log_softmax)])
@pytest.mark.parametrize("input_dtype, dtype", [(torch.float32, torch.float64), (torch.float64, torch.float32),
                                                (torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16),
                                                (torch.int64, torch.float64)])
@pytest.mark.parametrize("autocast", [False, True], ids=["", "bf16 autocast"])
def test_softmax_dtype_casts_the_input_first_as_torch_does(op, reference, input_dtype, dtype, autocast):
    """``dtype=``: the input is cast to it before the op, which then runs in it; the gradient comes back in
    the input's dtype. Under autocast the explicit dtype wins (CUDA autocast's float32 is only its default)."""
    x = (torch.randn(4, 6, dtype=torch.float64) * 3).to(input_dtype).requires_grad_(input_dtype.is_floating_point)

    def run(fn):
        def call(input):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                return fn(input, dim=1, dtype=dtype)
        return call

    comparison = compare(run(op), run(reference), dict(input=x))
    assert comparison.output.dtype == comparison.expected_output.dtype == dtype
    # the op runs in ``dtype``: its tolerances, also for a gradient cast back to float64
    lowest = torch.bfloat16 if torch.bfloat16 in (input_dtype, dtype) else dtype
    tolerances = {torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2), torch.float32: dict(rtol=1.3e-6, atol=1e-5)}
    comparison.assert_close(**tolerances.get(lowest, {}))


def test_softmax_refuses_a_dtype_or_input_it_cannot_compute_in():
    with pytest.raises(TypeError, match=r"softmax: dtype=torch.int64 is not a floating dtype; pass e.g."):
        F.softmax(torch.randn(3), dim=0, dtype=torch.int64)
    with pytest.raises(TypeError, match=r"log_softmax: input of dtype torch.int64 is not floating point; pass dtype="):
        F.log_softmax(torch.arange(3), dim=0)


@pytest.mark.parametrize("shape", [(3, 4, 0), (2, 0), (0,)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_with_no_input_features_gives_the_bias(shape, bias):
    g = torch.Generator().manual_seed(0)
    inputs = dict(input=torch.randn(shape, dtype=torch.float64, generator=g).requires_grad_(),
                  weight=torch.randn(5, 0, dtype=torch.float64, generator=g).requires_grad_(),
                  bias=torch.randn(5, dtype=torch.float64, generator=g).requires_grad_() if bias else None)
    compare(F.linear, torch_F.linear, inputs).assert_close()


def test_linear_with_no_output_features():
    g = torch.Generator().manual_seed(0)
    inputs = dict(input=torch.randn(3, 4, dtype=torch.float64, generator=g).requires_grad_(),
                  weight=torch.randn(0, 4, dtype=torch.float64, generator=g).requires_grad_(),
                  bias=torch.randn(0, dtype=torch.float64, generator=g).requires_grad_())
    compare(F.linear, torch_F.linear, inputs).assert_close()
