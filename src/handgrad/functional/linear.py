"""The affine map y = x W^T + b, the weighted sum at the heart of every layer.

Reference: CS231n "affine_forward / affine_backward"; torch.nn.functional.linear.
"""

from __future__ import annotations

import torch
from torch.autograd import Function

from handgrad.functional.function import Autocast, combined_forward


@combined_forward
class Linear(Function):
    """y = x @ W^T + b

    Shapes:  x (*, D_in), W (D_out, D_in), b (D_out,)  ->  y (*, D_out)
    The leading dimensions * are flattened into one batch dimension of N rows.

    grad_x = grad_y @ W              (*, D_in)
    grad_W = grad_y^T @ x            (D_out, D_in)   summed over the N rows
    grad_b = sum_n grad_y            (D_out,)        b was broadcast over the N rows

    Only what a requested gradient needs is saved: x for grad_W, W for grad_x.
    """

    autocast = Autocast.LOWER_PRECISION  # as torch's linear: x, W, b cast to bf16 / fp16

    @staticmethod
    def forward(input, weight, bias):
        if bias is None:
            return input @ weight.mT
        if input.dim() == 2:
            return torch.addmm(bias, input, weight.mT)  # b + x W^T in one kernel
        return input @ weight.mT + bias

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias = inputs
        needs_x, needs_w, _ = ctx.needs_input_grad
        ctx.save_for_backward(input if needs_w else None, weight if needs_x else None)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        grad_y = grad_output.reshape(-1, grad_output.shape[-1])  # (N, D_out)

        if ctx.needs_input_grad[0]:
            grad_input = grad_output @ weight  # (*, D_in)
        if ctx.needs_input_grad[1]:
            grad_weight = grad_y.mT @ input.reshape(-1, input.shape[-1])  # (D_out, D_in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_y.sum(0)  # (D_out,)
        return grad_input, grad_weight, grad_bias


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
    return Linear.apply(input, weight, bias)
