"""Inverted dropout: zero each element with probability p while training, and scale the
survivors by 1 / (1 - p) so that the expected output equals the input and evaluation
needs no rescaling.

Reference: Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from
Overfitting" (JMLR 2014); torch.nn.functional.dropout.
"""

from __future__ import annotations

import torch

from handgrad.functional.function import Autocast, TwinnedFunction, may_overwrite, twinned


@twinned
class Dropout(TwinnedFunction):
    """y = x * m / (1 - p),   m ~ Bernoulli(1 - p) drawn once per element      x (*), m (*) bool  ->  y (*)

    The mask is an input, drawn by the wrapper, so the Function itself is deterministic (under
    torch.vmap the wrapper's draw follows vmap's ``randomness`` argument, as torch's dropout does).
    dy/dx = m / (1 - p), a constant per element:
    grad_x = grad_y * m / (1 - p)                 (saves the bool mask m, one byte an element)
    t_y    = t_x * m / (1 - p)                    (jvp)
    Double backward: grad_x is linear in grad_y and has no graph to x, as torch's (its
    native_dropout_backward reads only the mask).
    """

    autocast = Autocast.INPUT_DTYPE  # as torch's: runs in its input's dtype

    @staticmethod
    def forward(input, mask, scale):
        kept = input * as_bytes(mask)
        return kept.mul_(scale) if may_overwrite() else kept * scale

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, mask, ctx.scale = inputs
        ctx.save_for_backward(mask)
        ctx.save_for_forward(mask)

    @staticmethod
    def backward(ctx, grad_output):
        (mask,) = ctx.saved_tensors
        kept = grad_output * as_bytes(mask)
        return kept.mul_(ctx.scale) if may_overwrite(grad_output) else kept * ctx.scale, None, None

    @staticmethod
    def jvp(ctx, t_input, _t_mask, _t_scale):
        (mask,) = ctx.saved_tensors
        return t_input * as_bytes(mask) * ctx.scale


def as_bytes(mask: torch.Tensor) -> torch.Tensor:
    """The bool mask's memory read as uint8 0 / 1: multiplying by it is 2x faster on CPU than by the bool
    tensor itself (whose conversion to the float's dtype is a slow kernel)."""
    return mask.view(torch.uint8)


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.dropout (``inplace`` is ignored: the result is a new tensor).

    Like torch, p = 0 or training=False returns ``input`` itself, and the mask is drawn from the
    global generator with ``bernoulli_(1 - p)``, so a given seed drops the same elements as torch.
    """
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0 or input.numel() == 0:
        return input
    if p == 1:  # every element dropped; 1 / (1 - p) would be inf
        return Dropout.call(input, torch.zeros_like(input, dtype=torch.bool), 0.0)
    mask = torch.empty_like(input, dtype=torch.bool).bernoulli_(1 - p)  # True = kept
    return Dropout.call(input, mask, 1 / (1 - p))
