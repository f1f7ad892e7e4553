"""Every hand-written op against torch autograd: forward values and every input's gradient,
in float32 and float64, plus float64 gradcheck. One helper, one row per op (handgrad.verify)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as torch_F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import handgrad.functional as F
from handgrad.verify import OP_CASES, compare, fresh_copies, gradcheck

CASES = {case.name: case for case in OP_CASES}


def with_requires_grad(inputs, keep):
    """Copies of ``inputs`` where only the tensors named in ``keep`` require grad."""
    copies = fresh_copies(inputs)
    for name, value in copies.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            value.requires_grad_(name in keep)
    return copies


def non_contiguous(x: torch.Tensor) -> torch.Tensor:
    """The same values laid out transposed in memory: x.t().contiguous().t() (or a strided view for 1-D)."""
    if x.dim() < 2:
        return torch.stack([x, x], -1)[..., 0].detach().requires_grad_(x.requires_grad)
    y = x.detach().mT.contiguous().mT
    assert not y.is_contiguous()
    return y.requires_grad_(x.requires_grad)


# --------------------------------------------------------------------------- the table, three ways


@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.name)
def test_float64_matches_autograd(case):
    compare(case.hand, case.reference, case.inputs(torch.float64), case.kwargs).assert_close()


@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.name)
def test_float32_matches_autograd(case):
    # torch.testing.assert_close's float32 defaults (rtol 1.3e-6, atol 1e-5): no loosening.
    compare(case.hand, case.reference, case.inputs(torch.float32), case.kwargs).assert_close()


@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.name)
def test_float64_gradcheck(case):
    assert gradcheck(case.hand, case.inputs(torch.float64), case.kwargs)


@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.name)
def test_non_contiguous_inputs(case):
    inputs = {n: non_contiguous(v) if isinstance(v, torch.Tensor) else v for n, v in case.inputs(torch.float64).items()}
    compare(case.hand, case.reference, inputs, case.kwargs).assert_close()


@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.name)
def test_only_some_inputs_require_grad(case):
    inputs = case.inputs(torch.float64)
    differentiable = [n for n, v in inputs.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    for keep in differentiable:  # each input alone, the others frozen
        comparison = compare(case.hand, case.reference, with_requires_grad(inputs, {keep}), case.kwargs)
        comparison.assert_close()
        assert set(comparison.grads) == {keep}


# --------------------------------------------------------------------------- batch of one, odd sizes, leading dims


@pytest.mark.parametrize("n, d_in, d_out", [(1, 1, 1), (1, 7, 3), (13, 1, 5), (5, 11, 1), (3, 17, 13)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_sizes(n, d_in, d_out, bias):
    g = torch.Generator().manual_seed(n * 100 + d_in)
    inputs = dict(input=torch.randn(n, d_in, dtype=torch.float64, generator=g).requires_grad_(),
                  weight=torch.randn(d_out, d_in, dtype=torch.float64, generator=g).requires_grad_(),
                  bias=torch.randn(d_out, dtype=torch.float64, generator=g).requires_grad_() if bias else None)
    compare(F.linear, torch_F.linear, inputs).assert_close()
    assert gradcheck(F.linear, inputs)


def test_linear_leading_dims():
    g = torch.Generator().manual_seed(0)
    inputs = dict(input=torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=g).requires_grad_(),
                  weight=torch.randn(6, 5, dtype=torch.float64, generator=g).requires_grad_(),
                  bias=torch.randn(6, dtype=torch.float64, generator=g).requires_grad_())
    compare(F.linear, torch_F.linear, inputs).assert_close()
    assert gradcheck(F.linear, inputs)


# --------------------------------------------------------------------------- extreme magnitudes


@pytest.mark.parametrize("scale", [1e3, 1e4])
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "softmax(dim=1)", "log_softmax(dim=1)", "cross_entropy(mean)"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_magnitudes_stay_finite_and_equal(name, scale, dtype):
    case = CASES[name]
    inputs = case.inputs(dtype)
    inputs["input"] = (inputs["input"].detach() * scale).requires_grad_()
    comparison = compare(case.hand, case.reference, inputs, case.kwargs)
    assert torch.isfinite(comparison.output).all()
    assert all(torch.isfinite(g).all() for g in comparison.grads.values())
    comparison.assert_close()


class ExponentRecorder(TorchDispatchMode):
    """Records the largest number any e^(.) (aten.exp / exp_) is taken of while active, and the smallest
    input of torch's sigmoid kernel, which takes e^-x inside (out of this recorder's direct sight)."""

    def __init__(self):
        super().__init__()
        self.largest_exp, self.smallest_sigmoid_input = float("-inf"), float("inf")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.exp.default, torch.ops.aten.exp_.default):
            self.largest_exp = max(self.largest_exp, args[0].max().item())
        if func in (torch.ops.aten.sigmoid.default, torch.ops.aten.sigmoid_.default):
            self.smallest_sigmoid_input = min(self.smallest_sigmoid_input, args[0].min().item())
        return func(*args, **(kwargs or {}))


def test_sigmoid_never_overflows():
    """Over -1e4 .. 1e4, forward and backward: the per-op Sigmoid exponentiates no positive number and
    calls no torch sigmoid; the fused ops' torch kernel sees no z below -86.3 (e^-z <= e^86.3, finite in
    float32). The textbook 1 / (1 + e^-x) and torch's sigmoid itself are the controls."""
    x = torch.linspace(-1e4, 1e4, 201).reshape(67, 3).requires_grad_()
    w = torch.eye(3).requires_grad_()
    with ExponentRecorder() as per_op:
        F.sigmoid(x).sum().backward()
    assert per_op.largest_exp <= 0 and per_op.smallest_sigmoid_input == float("inf")
    with ExponentRecorder() as fused:
        F.mlp(x, [w, w], [None, None], "sigmoid", "sigmoid").sum().backward()
    assert fused.largest_exp == float("-inf") and fused.smallest_sigmoid_input >= -86.34
    assert torch.isfinite(torch.exp(torch.tensor(86.34)))
    with ExponentRecorder() as control:
        1 / (1 + torch.exp(-x))
        torch.sigmoid(x)
    assert control.largest_exp == 1e4 and control.smallest_sigmoid_input == -1e4


def test_sigmoid_saturates_without_overflow():
    x = torch.tensor([-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4])
    y = F.sigmoid(x)
    torch.testing.assert_close(y, torch.sigmoid(x))  # (ours keeps e^-100 as a subnormal; torch flushes it to 0)
    assert y[0] >= 0 and y[-1] == 1 and y[3] == 0.5 and torch.isfinite(y).all()


# --------------------------------------------------------------------------- random shapes (hypothesis)


shapes = st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple)


@settings(max_examples=40, deadline=None)
@given(lead=st.lists(st.integers(1, 4), min_size=1, max_size=3), d_in=st.integers(1, 8), d_out=st.integers(1, 8),
       bias=st.booleans(), seed=st.integers(0, 2**16))
def test_linear_random_shapes(lead, d_in, d_out, bias, seed):
    g = torch.Generator().manual_seed(seed)
    inputs = dict(input=torch.randn(*lead, d_in, dtype=torch.float64, generator=g).requires_grad_(),
                  weight=torch.randn(d_out, d_in, dtype=torch.float64, generator=g).requires_grad_(),
                  bias=torch.randn(d_out, dtype=torch.float64, generator=g).requires_grad_() if bias else None)
    compare(F.linear, torch_F.linear, inputs).assert_close()


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16), data=st.data())
def test_activations_random_shapes(shape, seed, data):
    name = data.draw(st.sampled_from(["sigmoid", "tanh", "relu", "leaky_relu", "softmax", "log_softmax"]))
    case = CASES[name] if name in CASES else CASES[f"{name}(dim=1)"]
    kwargs = dict(case.kwargs)
    if "dim" in kwargs:
        kwargs["dim"] = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).requires_grad_()
    compare(case.hand, case.reference, dict(input=x), kwargs).assert_close()


# --------------------------------------------------------------------------- errors name the shapes


def test_linear_wrong_feature_size():
    with pytest.raises(ValueError, match=r"input of shape \(4, 5\) has 5 features.*weight of shape \(3, 6\) expects 6"):
        F.linear(torch.randn(4, 5), torch.randn(3, 6))


def test_linear_wrong_bias_shape():
    with pytest.raises(ValueError, match=r"bias of shape \(4,\).*expected bias of shape \(3,\)"):
        F.linear(torch.randn(4, 6), torch.randn(3, 6), torch.randn(4))


def test_softmax_needs_dim():
    with pytest.raises(ValueError, match=r"pass dim explicitly"):
        F.softmax(torch.randn(3, 4))
    with pytest.raises(IndexError, match=r"dim=2 is out of range for an input of shape \(3, 4\)"):
        F.log_softmax(torch.randn(3, 4), dim=2)
