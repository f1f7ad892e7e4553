"""The addition that joins two paths: a residual connection (x + f(x)) or token and position embeddings.

Not in handgrad.functional's table of torch twins (torch has no function of this name; its ``+`` is
AddBackward0): it exists so that a transformer's every gradient node is handgrad's, for the coverage tool.

Reference: He et al., "Deep Residual Learning for Image Recognition", 2016 (the residual connection).
"""

from __future__ import annotations

import torch

from handgrad.functional.function import Autocast, TwinnedFunction, twinned


@twinned
class ResidualAdd(TwinnedFunction):
    """y = x + r          x (*), r broadcastable against x  ->  y (the broadcast shape)
    grad_x = grad_y summed over the dimensions x was broadcast along     (x's shape)
    grad_r = grad_y summed over the dimensions r was broadcast along     (r's shape)
    jvp: t_y = t_x + t_r
    """

    autocast = Autocast.AS_WRITTEN  # as torch's +, which autocast leaves alone: type promotion picks the dtype

    @staticmethod
    def forward(input, other):
        return input + other

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, other = inputs
        ctx.input_shape, ctx.other_shape = input.shape, other.shape

    @staticmethod
    def backward(ctx, grad_output):
        grad_input = grad_output.sum_to_size(ctx.input_shape) if ctx.needs_input_grad[0] else None
        grad_other = grad_output.sum_to_size(ctx.other_shape) if ctx.needs_input_grad[1] else None
        return grad_input, grad_other

    @staticmethod
    def jvp(ctx, t_input, t_other):
        return t_input + t_other


def residual_add(input: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """input + other, with a hand-written backward (ResidualAdd)."""
    return ResidualAdd.call(input, other)
