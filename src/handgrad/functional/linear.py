"""The affine map y = x W^T + b, the weighted sum at the heart of every layer.

Reference: CS231n "affine_forward / affine_backward"; torch.nn.functional.linear.
"""

from __future__ import annotations

import math

import torch

from handgrad.functional.function import Autocast, TwinnedFunction, twinned


@twinned
class Linear(TwinnedFunction):
    """y = x @ W^T + b

    Shapes:  x (*, D_in), W (D_out, D_in), b (D_out,)  ->  y (*, D_out)
    The leading dimensions * are flattened into one batch dimension of N rows (N = 1 for x (D_in,)).

    grad_x = grad_y @ W              (*, D_in)
    grad_W = grad_y^T @ x            (D_out, D_in)   summed over the N rows
    grad_b = sum_n grad_y            (D_out,)        b was broadcast over the N rows
    t_y    = t_x @ W^T + x @ t_W^T + t_b             (jvp: y is bilinear in x and W, affine in b)

    Saves x and W, the inputs the three formulas read (the jvp needs both). Double backward needs
    nothing more: each gradient is linear in grad_y and reads only inputs.
    """

    autocast = Autocast.LOWER_PRECISION  # as torch's linear: x, W, b cast to bf16 / fp16

    @staticmethod
    def forward(input, weight, bias):
        if bias is None:
            return input @ weight.mT
        if input.dim() == 2:
            return torch.addmm(bias, input, weight.mT)  # b + x W^T in one kernel
        if input.dim() > 2 and input.is_contiguous():  # the rows as one matrix, a view: still one kernel, as torch's
            rows = input.view(math.prod(input.shape[:-1]), input.shape[-1])  # (N, D_in); N explicit: D_in may be 0
            return torch.addmm(bias, rows, weight.mT).view(*input.shape[:-1], weight.shape[0])
        return input @ weight.mT + bias

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias = inputs
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        rows = math.prod(input.shape[:-1])  # N, given explicitly: reshape(-1, 0) is ambiguous when D_in = 0
        grad_y = grad_output.reshape(rows, grad_output.shape[-1])  # (N, D_out)

        if ctx.needs_input_grad[0]:
            grad_input = grad_output @ weight  # (*, D_in)
        if ctx.needs_input_grad[1]:
            grad_weight = grad_y.mT @ input.reshape(rows, input.shape[-1])  # (D_out, D_in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_y.sum(0)  # (D_out,)
        return grad_input, grad_weight, grad_bias

    @staticmethod
    def jvp(ctx, t_input, t_weight, t_bias):
        input, weight = ctx.saved_tensors  # a missing tangent of x or W arrives as zeros; of a None b, as None
        t_output = t_input @ weight.mT + input @ t_weight.mT  # (*, D_out)
        return t_output if t_bias is None else t_output + t_bias


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.linear."""
    if weight.dim() != 2:
        raise ValueError(f"linear: weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if input.dim() == 0 or input.shape[-1] != weight.shape[1]:
        features = input.shape[-1] if input.dim() else 0
        raise ValueError(
            f"linear: input of shape {tuple(input.shape)} has {features} features "
            f"in its last dimension, but weight of shape {tuple(weight.shape)} expects {weight.shape[1]}; "
            f"reshape the input to (*, {weight.shape[1]}) or build the layer with in_features={features}"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(
            f"linear: bias of shape {tuple(bias.shape)} does not match weight of shape {tuple(weight.shape)}; "
            f"expected bias of shape ({weight.shape[0]},)"
        )
    return Linear.call(input, weight, bias)
