"""Rows of batch_norm and layer_norm, and their torch samples."""

from __future__ import annotations

import torch
import torch.nn.functional as torch_F

import handgrad.functional as F
from handgrad.verify.compare import OpCase
from handgrad.verify.inputs import randn
from handgrad.verify.known import KnownFailure, first_order_samples
from handgrad.verify.transforms import first_order


def _norm_inputs(*shape: int, affine: bool = True, normalized_ndim: int | None = None):
    """Input of ``shape``; with ``normalized_ndim`` (layer norm) weight and bias over the last dims, else
    (batch norm) per channel, with running statistics (not differentiated)."""
    def make(dtype, g):
        params = shape[-normalized_ndim:] if normalized_ndim else shape[1:2]
        # Uniform on [-1, 3), not randn: compare() draws grad_output with randn from the same seed, and a grad_output
        # affine in the input lies in the null space of the normalisation's backward (grad_input would be ~0).
        inputs = dict(input=(4 * torch.rand(shape, dtype=dtype, generator=g) - 1).requires_grad_(),
                      weight=randn(*params, dtype=dtype, generator=g) if affine else None,
                      bias=randn(*params, dtype=dtype, generator=g) if affine else None)
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


IN_PLACE = "vmap: the backward updates a temporary in place, which jacrev's batched gradients refuse (R3)"
TRAIN = first_order("BatchNormTrain", jacrev=IN_PLACE)
EVAL = first_order("BatchNormEval", jacrev=IN_PLACE)
EVAL_NO_AFFINE = first_order("BatchNormEval")  # without a weight, its backward does nothing in place
LAYER = first_order("LayerNorm", jacrev=IN_PLACE)


def _batch_norm(name, shape, kwargs, affine=True, opt_out=TRAIN):
    return OpCase(name, F.batch_norm, torch_F.batch_norm, _norm_inputs(*shape, affine=affine), kwargs, opt_out=opt_out,
                  reference_second=batch_norm_decomposed)


CASES: list[OpCase] = [
    _batch_norm("batch_norm(train, N C)", (8, 3), dict(training=True)),
    _batch_norm("batch_norm(train, N C H W)", (2, 3, 4, 5), dict(training=True)),
    _batch_norm("batch_norm(train, N C L, no affine)", (4, 3, 5), dict(training=True), affine=False),
    _batch_norm("batch_norm(train, N C H W, no affine, momentum=0.5)", (2, 3, 4, 5), dict(training=True, momentum=0.5),
                affine=False),
    _batch_norm("batch_norm(eval, N C)", (8, 3), dict(training=False), opt_out=EVAL),
    _batch_norm("batch_norm(eval, N C H W)", (2, 3, 4, 5), dict(training=False), opt_out=EVAL),
    _batch_norm("batch_norm(eval, N C H W, no affine)", (2, 3, 4, 5), dict(training=False), affine=False,
                opt_out=EVAL_NO_AFFINE),
    OpCase("layer_norm(last dim)", F.layer_norm, torch_F.layer_norm, _norm_inputs(3, 4, 5, normalized_ndim=1),
           dict(normalized_shape=(5,)), opt_out=LAYER),
    OpCase("layer_norm(last 2 dims)", F.layer_norm, torch_F.layer_norm, _norm_inputs(3, 4, 5, normalized_ndim=2),
           dict(normalized_shape=(4, 5)), opt_out=LAYER),
    OpCase("layer_norm(last 2 dims, no affine)", F.layer_norm, torch_F.layer_norm,
           _norm_inputs(3, 4, 5, affine=False, normalized_ndim=2), dict(normalized_shape=(4, 5)), opt_out=LAYER),
]

TORCH_OPS: dict[str, tuple[str, ...]] = {
    "batch_norm": ("nn.functional.batch_norm",),  # its .without_cudnn variant runs on CUDA only
    "layer_norm": ("nn.functional.layer_norm",),
}
TORCH_MODULES: tuple[str, ...] = ("BatchNorm1d", "BatchNorm2d", "LayerNorm")
NO_BATCH = "an empty batch in training, which torch accepts (running statistics unchanged), is refused"
KNOWN_FAILURES: list[KnownFailure] = [
    KnownFailure("batch_norm", "samples", r"expected input of shape \(N, C, \*\), got \(0,\)", 4,
                 "a 1-D empty input, which torch accepts, is refused"),
    *first_order_samples("batch_norm", "BatchNormTrain", gradgradcheck=2, jvp=2),
    *first_order_samples("batch_norm", "BatchNormEval", gradgradcheck=1, jvp=1),
    KnownFailure("layer_norm", "samples", r"LayerNormBackward returned an invalid gradient", 4,
                 "normalized_shape == input.shape: sum over no row dims sums everything"),
    *first_order_samples("layer_norm", "LayerNorm", gradgradcheck=3, jvp=3),
    KnownFailure("layer_norm", "vmap_grad", r"LayerNormTransformableGeneratedBackward returned an invalid gradient",
                 2, "normalized_shape == input.shape: sum over no row dims sums everything"),
    KnownFailure("BatchNorm1d", "samples", r"expected more than 1 value per channel", 2, NO_BATCH),
    KnownFailure("BatchNorm2d", "samples", r"expected more than 1 value per channel", 2, NO_BATCH),
]
