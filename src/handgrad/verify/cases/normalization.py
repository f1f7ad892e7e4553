"""Rows of batch_norm and layer_norm, and their torch samples."""

from __future__ import annotations

import torch
import torch.nn.functional as torch_F

import handgrad.functional as F
from handgrad.verify.compare import OpCase
from handgrad.verify.inputs import randn
from handgrad.verify.known import KnownFailure


def _norm_inputs(*shape: int, affine: bool = True, normalized_ndim: int | None = None, weight: bool = True,
                 bias: bool = True):
    """Input of ``shape``; with ``normalized_ndim`` (layer norm) weight and bias over the last dims, else
    (batch norm) per channel, with running statistics (not differentiated). ``affine=False``: neither."""
    def make(dtype, g):
        params = shape[-normalized_ndim:] if normalized_ndim else shape[1:2]
        # Uniform on [-1, 3), not randn: compare() draws grad_output with randn from the same seed, and a grad_output
        # affine in the input lies in the null space of the normalisation's backward (grad_input would be ~0).
        inputs = dict(input=(4 * torch.rand(shape, dtype=dtype, generator=g) - 1).requires_grad_(),
                      weight=randn(*params, dtype=dtype, generator=g) if affine and weight else None,
                      bias=randn(*params, dtype=dtype, generator=g) if affine and bias else None)
        if not normalized_ndim:
            inputs["running_mean"] = torch.randn(shape[1], dtype=dtype, generator=g)
            inputs["running_var"] = torch.rand(shape[1], dtype=dtype, generator=g) + 0.5
        return inputs
    return make


def batch_norm_decomposed(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                          eps=1e-5):
    """F.batch_norm from primitive ops (the running statistics left alone): the reference for second
    derivatives under torch.func's jacrev(jacrev) and hessian, where torch 2.14's fused batch_norm gets the
    d(grad_weight)/d(input) block wrong (finite differences and create_graph agree with this one)."""
    dims = [0, *range(2, input.dim())]
    shape = [1, -1] + [1] * (input.dim() - 2)
    mean = input.mean(dims, keepdim=True) if training else running_mean.view(shape)
    var = ((input - mean) ** 2).mean(dims, keepdim=True) if training else running_var.view(shape)
    output = (input - mean) / torch.sqrt(var + eps)
    output = output if weight is None else output * weight.view(shape)
    return output if bias is None else output + bias.view(shape)


def layer_norm_decomposed(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """F.layer_norm from primitive ops: the reference for second derivatives under jacrev(jacrev) and hessian,
    where torch 2.14's layer_norm, like its batch_norm, gets the d(grad_weight)/d(input) block wrong (its Hessian
    is not even symmetric; its create_graph double backward agrees with this one)."""
    dims = tuple(range(-len(normalized_shape), 0))
    mean = input.mean(dims, keepdim=True)
    output = (input - mean) / torch.sqrt(((input - mean) ** 2).mean(dims, keepdim=True) + eps)
    output = output if weight is None else output * weight
    return output if bias is None else output + bias


def _batch_norm(name, shape, kwargs, **flags):
    return OpCase(name, F.batch_norm, torch_F.batch_norm, _norm_inputs(*shape, **flags), kwargs,
                  reference_second=batch_norm_decomposed)


def _layer_norm(name, shape, normalized_ndim, **flags):
    inputs, normalized_shape = _norm_inputs(*shape, normalized_ndim=normalized_ndim, **flags), shape[-normalized_ndim:]
    return OpCase(name, F.layer_norm, torch_F.layer_norm, inputs, dict(normalized_shape=normalized_shape),
                  reference_second=layer_norm_decomposed)


CASES: list[OpCase] = [
    _batch_norm("batch_norm(train, N C)", (8, 3), dict(training=True)),
    _batch_norm("batch_norm(train, N C H W)", (2, 3, 4, 5), dict(training=True)),
    _batch_norm("batch_norm(train, N C D H W, weight, no bias)", (2, 3, 2, 2, 3), dict(training=True), bias=False),
    _batch_norm("batch_norm(train, N C L, no affine)", (4, 3, 5), dict(training=True), affine=False),
    _batch_norm("batch_norm(train, N C H W, no affine, momentum=0.5)", (2, 3, 4, 5), dict(training=True, momentum=0.5),
                affine=False),
    _batch_norm("batch_norm(eval, N C)", (8, 3), dict(training=False)),
    _batch_norm("batch_norm(eval, N C H W)", (2, 3, 4, 5), dict(training=False)),
    _batch_norm("batch_norm(eval, N C H W, no affine)", (2, 3, 4, 5), dict(training=False), affine=False),
    _layer_norm("layer_norm(last dim)", (3, 4, 5), 1),
    _layer_norm("layer_norm(last 2 dims)", (3, 4, 5), 2),
    _layer_norm("layer_norm(last 2 dims, no affine)", (3, 4, 5), 2, affine=False),
    _layer_norm("layer_norm(whole input, weight, no bias)", (4, 5), 2, bias=False),
]

# A bias without a weight: torch's own double backward of batch_norm and layer_norm raises there ("Expected a
# proper Tensor but got None"), and its layer_norm backward too for a bfloat16 input with a float32 bias. These
# rows are therefore not in the table (whose penalty and autocast checks take torch as the reference);
# tests/test_functional_norm.py runs them against torch where torch works and against the decompositions elsewhere.
BIAS_WITHOUT_WEIGHT: list[OpCase] = [
    _batch_norm("batch_norm(train, N C H W, bias, no weight)", (3, 2, 3, 2), dict(training=True), weight=False),
    _batch_norm("batch_norm(eval, N C L, bias, no weight)", (4, 3, 5), dict(training=False), weight=False),
    _layer_norm("layer_norm(last dim, bias, no weight)", (6, 5), 1, weight=False),
]

TORCH_OPS: dict[str, tuple[str, ...]] = {
    "batch_norm": ("nn.functional.batch_norm",),  # its .without_cudnn variant runs on CUDA only
    "layer_norm": ("nn.functional.layer_norm",),
}
TORCH_MODULES: tuple[str, ...] = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm")
KNOWN_FAILURES: list[KnownFailure] = []
