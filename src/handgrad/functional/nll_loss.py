"""The negative log-likelihood of log-probabilities against class indices: cross_entropy without the
softmax (cross_entropy(x, t) = nll_loss(log_softmax(x, 1), t)).

Reference: torch.nn.functional.nll_loss; CS231n "softmax_loss".
"""

from __future__ import annotations

import torch

from handgrad.functional.class_targets import class_targets, linear_loss, linear_loss_adjoint
from handgrad.functional.function import Autocast, TwinnedFunction, twinned, zero_link
from handgrad.functional.reduction import check_floating, reduction_of


@twinned
class NLLLoss(TwinnedFunction):
    """L = Lambda(z), eps = 0:  L_i = -r_i z_{i, t_i}, reduced        z (N, C, *d), t (N, *d)  ->  L

    (class_targets.py: row weights r = [t_i != ignore_index] w_{t_i}, "mean" divides by W = sum_i r_i)
    grad_z = Lambda^T(grad_L):  -s_i r_i at (i, t_i), 0 elsewhere     (s_i = grad_L_i, grad_L, grad_L / W)
    t_L    = Lambda(t_z)                                                 (jvp: L is linear in z)
    Double backward: grad_z is linear in grad_L and constant in z, so while a backward is differentiated it
    returns zero_link(grad_z, z) (rule R4): torch's nll_loss_backward(grad, z, ...) also keeps a graph to z
    of zero derivative. That is why z is saved (an input: no memory of its own).
    """

    autocast = Autocast.FLOAT32  # as torch's nll_loss: float32 under autocast

    @staticmethod
    def forward(input, target, rows, reduction):
        return linear_loss(input, target, rows, None, None, reduction, 0.0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, rows, ctx.reduction = inputs
        ctx.save_for_backward(input, target, rows)
        ctx.save_for_forward(input, target, rows)

    @staticmethod
    def backward(ctx, grad_loss):
        input, target, rows = ctx.saved_tensors
        grad_input = linear_loss_adjoint(grad_loss, input, target, rows, None, None, ctx.reduction, 0.0)
        return zero_link(grad_input, input), None, None, None

    @staticmethod
    def jvp(ctx, t_input, *_):
        _, target, rows = ctx.saved_tensors
        return linear_loss(t_input, target, rows, None, None, ctx.reduction, 0.0)


def nll_loss(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
             size_average: bool | None = None, ignore_index: int = -100, reduce: bool | None = None,
             reduction: str = "mean") -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.nll_loss, every argument with torch's meaning.

    input: log-probabilities (C,), (N, C) or (N, C, d1, ..., dk); target: class indices (), (N) or
    (N, d1, ..., dk) (torch.long or torch.uint8); weight: one per class; ignore_index: a class index whose
    targets add nothing ("mean" then averages over the others, weighted).
    """
    reduction = reduction_of("nll_loss", reduction, size_average, reduce)
    check_floating("nll_loss", input=input)
    targets = class_targets("nll_loss", input, target, weight, ignore_index)
    loss = NLLLoss.call(targets.input, targets.target, targets.rows, reduction)
    return loss.squeeze(0) if targets.unbatched and reduction == "none" else loss
