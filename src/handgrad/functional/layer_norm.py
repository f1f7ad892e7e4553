"""Layer normalisation: each example standardised over its last dimensions (its D elements form one
row), then scaled and shifted elementwise by a learned weight and bias. The statistics are per row,
so unlike batch norm it behaves the same in training and evaluation and needs no running statistics.

Second derivatives: torch 2.14's own F.layer_norm, like its batch_norm (batch_norm.py), gets the
d(grad_weight)/d(input) block of its Hessian wrong under torch.func (its Hessian is not symmetric); its
create_graph=True double backward agrees with this op's. verify/cases/normalization.py checks jacrev(jacrev)
and hessian against a decomposition into primitive ops.

Reference: Ba, Kiros & Hinton, "Layer Normalization" (2016); torch.nn.functional.layer_norm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from handgrad.functional.function import Autocast, TwinnedFunction, may_overwrite, twinned
from handgrad.functional.normalization import standardized_grad, standardized_tangent


@twinned
class LayerNorm(TwinnedFunction):
    """Layer norm over the last k dimensions, whose D elements form one row:

        mean, var = per-row mean and biased variance,   r = 1 / sqrt(var + eps)
        x_hat = (x - mean) r,   y = weight * x_hat + bias     (weight, bias broadcast over the rows)

    Shapes:  x (*, D...), weight (D...), bias (D...)  ->  y (*, D...), and mean, r (*, 1...), the per-row
    statistics as differentiable outputs (R1): backward recomputes x_hat from them.

    grad_x      = r (g - mean(g) - x_hat mean(g x_hat)),   g = grad_y * weight,   means over each row:
                  terms (1)-(3) of standardized_grad
                + grad_mean / D - grad_r r^3 (x - mean) / D     terms (4), (5) (normalization.py), when not None
    grad_weight = sum_{*} grad_y x_hat          (D...)   summed over the rows (sum_rows: x may be one row)
    grad_bias   = sum_{*} grad_y                (D...)
    t_mean      = mean(t_x),   t_r = -r^2 mean(x_hat t_x)                                   (jvp)
    t_y         = weight r (t_x - mean(t_x) - x_hat mean(x_hat t_x)) + t_weight x_hat + t_bias

    Saves x, weight, mean and r, as autograd does. The forward is torch's native_layer_norm kernel (y, mean
    and r in one pass over each row); every derivative is written here.
    """

    autocast = {"cuda": Autocast.FLOAT32, "cpu": Autocast.FLOAT32_INSIDE}  # as torch's layer_norm

    @staticmethod
    def forward(input, normalized_ndim, weight, bias, eps):
        normalized_shape = input.shape[input.dim() - normalized_ndim:]  # D...
        return torch.native_layer_norm(input, normalized_shape, weight, bias, eps)  # y, mean, r (*, 1...)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, normalized_ndim, weight, bias, eps = inputs
        _, mean, invstd = output
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, weight, mean, invstd)
        ctx.save_for_forward(input, weight, mean, invstd)
        ctx.normalized_ndim = normalized_ndim
        ctx.row_size = math.prod(input.shape[input.dim() - normalized_ndim:])  # D
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_output, grad_mean, grad_invstd):
        input, weight, mean, invstd = ctx.saved_tensors
        if (grad_mean is None and grad_invstd is None and grad_output is not None and weight is not None
                and ctx.row_size > 1 and may_overwrite(grad_output)):  # every ordinary first-order backward
            return first_order_backward(ctx, grad_output, input, weight, mean, invstd)
        dims = tuple(range(-ctx.normalized_ndim, 0))  # within a row
        rows = tuple(range(input.dim() - ctx.normalized_ndim))  # across rows
        centered = input - mean  # (*, D...)
        grad_input = grad_weight = grad_bias = None

        if grad_output is not None:
            overwrite = grad_invstd is None and may_overwrite(grad_output)  # (5) reads centered again
            if ctx.row_size == 1:  # x_hat = 0 exactly; torch's kernel forms x r - mean r in one rounding (a fused
                xhat = torch.addcmul(-mean * invstd, input, invstd)  # multiply-add), whose residue reaches grad_weight
            else:
                xhat = centered.mul_(invstd) if overwrite else centered * invstd  # (*, D...)
            if weight is not None and ctx.needs_input_grad[2]:
                grad_weight = sum_rows(grad_output * xhat, rows)  # (D...)
            if ctx.has_bias and ctx.needs_input_grad[3]:
                grad_bias = sum_rows(grad_output, rows)  # (D...)
            if ctx.needs_input_grad[0]:
                grad_xhat = grad_output if weight is None else grad_output * weight  # g
                grad_input = standardized_grad(grad_xhat, xhat, invstd, grad_xhat.mean(dims, keepdim=True),
                                               (grad_xhat * xhat).mean(dims, keepdim=True), overwrite)  # (1) - (3)
        row_size = max(ctx.row_size, 1)  # D (an empty row divides nothing by 0)
        if ctx.needs_input_grad[0] and grad_mean is not None:
            through_mean = grad_mean / row_size  # (4)  (*, 1...), broadcast over the row
            grad_input = through_mean.expand_as(input) if grad_input is None else grad_input + through_mean
        if ctx.needs_input_grad[0] and grad_invstd is not None:
            through_invstd = centered * (grad_invstd * invstd**3 / -row_size)  # (5)
            grad_input = through_invstd if grad_input is None else grad_input + through_invstd
        return grad_input, None, grad_weight, grad_bias, None

    @staticmethod
    def jvp(ctx, t_input, _t_normalized_ndim, t_weight, t_bias, _t_eps):
        input, weight, mean, invstd = ctx.saved_tensors
        t_input = torch.zeros_like(input) if t_input is None else t_input  # x without a tangent (gradcheck's test)
        dims = tuple(range(-ctx.normalized_ndim, 0))
        xhat = (input - mean) * invstd
        t_mean = t_input.mean(dims, keepdim=True)  # (*, 1...)
        mean_xhat_t = (xhat * t_input).mean(dims, keepdim=True)  # (*, 1...)
        t_xhat = standardized_tangent(t_input, xhat, invstd, t_mean, mean_xhat_t)
        t_output = t_xhat if weight is None else t_xhat * weight
        if t_weight is not None:
            t_output = t_output + xhat * t_weight
        if t_bias is not None:
            t_output = t_output + t_bias
        return t_output, t_mean, -invstd * invstd * mean_xhat_t


def first_order_backward(ctx: Any, grad_output: torch.Tensor, input: torch.Tensor, weight: torch.Tensor,
                         mean: torch.Tensor, invstd: torch.Tensor) -> tuple:
    """LayerNorm's backward for the gradient of y alone, with a weight, in place (rule R3): terms (1)-(3) as

        grad_x = r (g - mean(g)) - r x_hat mean(g x_hat),   g = grad_y * weight,
        mean(g) = (grad_y . weight) / D,   mean(g x_hat) = ((grad_y x_hat) . weight) / D   (one dot per row)

    in one temporary of the input's size, where each new one costs more than a pass over it: it holds x_hat,
    then grad_y x_hat (summed into grad_weight and dotted with the weight), then x - mean again, which grad_x
    is built on. g itself is never formed: the two means are matrix-vector products.
    """
    ndim = input.dim() - ctx.normalized_ndim  # the row dimensions come first
    rows = tuple(range(ndim))
    work = (input - mean).mul_(invstd).mul_(grad_output)  # grad_y x_hat  (*, D...)
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[2]:
        grad_weight = sum_rows(work, rows) if rows else work.clone()  # (D...); one row: work is reused below
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_bias = sum_rows(grad_output, rows)  # (D...)
    if ctx.needs_input_grad[0]:
        w = weight.reshape(-1) / -ctx.row_size  # -w / D  (D,)
        minus_mean_g = (grad_output.flatten(ndim) @ w).view(mean.shape)  # -mean(g)  (*, 1...)
        minus_mean_g_xhat = (work.flatten(ndim) @ w).view(mean.shape)  # -mean(g x_hat)
        grad_input = torch.sub(input, mean, out=work).mul_(invstd * minus_mean_g_xhat)  # (3): -x_hat mean(g x_hat)
        grad_input.addcmul_(grad_output, weight).add_(minus_mean_g).mul_(invstd)  # + (1) + (2), times r
    return grad_input, None, grad_weight, grad_bias, None


def sum_rows(t: torch.Tensor, rows: tuple[int, ...]) -> torch.Tensor:
    """t summed over its row dimensions; t itself when there are none (normalized_shape == input.shape):
    ``t.sum(())`` would sum over every dimension."""
    return t.sum(rows) if rows else t


def layer_norm(input: torch.Tensor, normalized_shape: int | Sequence[int], weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.layer_norm (an int normalized_shape means (int,))."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not input.is_floating_point():
        raise TypeError(f"layer_norm: input of dtype {input.dtype} is not floating point; convert it, e.g. "
                        "input.float()")
    if not shape:
        raise ValueError("layer_norm: normalized_shape is empty; pass the trailing dimension(s) to normalise over, "
                         f"e.g. normalized_shape={tuple(input.shape[-1:])}")
    if len(shape) > input.dim() or tuple(input.shape[input.dim() - len(shape):]) != shape:
        raise ValueError(
            f"layer_norm: normalized_shape {shape} must equal the last {len(shape)} dimension(s) of the input, but "
            f"input has shape {tuple(input.shape)}; pass the input's trailing shape, e.g. "
            f"normalized_shape={tuple(input.shape[-1:])}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"layer_norm: {name} of shape {tuple(t.shape)} must have normalized_shape {shape}")
    output, _, _ = LayerNorm.call(input, len(shape), weight, bias, eps)
    return output
