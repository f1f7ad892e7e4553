"""The Kullback-Leibler divergence KL(y || q) of a target distribution y from a prediction q, given as
log-probabilities x = log q, element by element, then reduced.

Reference: Kullback and Leibler, "On Information and Sufficiency" (1951); torch.nn.functional.kl_div.
"""

from __future__ import annotations

import warnings

import torch

from handgrad.functional.function import Autocast, TwinnedFunction, twinned
from handgrad.functional.reduction import broadcast_shape, check_floating, reduction_of

REDUCTIONS = ("mean", "batchmean", "sum", "none")


@twinned
class KLDiv(TwinnedFunction):
    """L = reduce(l),  x = log q                                   x (*), y (**)  ->  L (broadcast shape, or ())

    log_target=False (y probabilities):  l = y (log y - x) = xlogy(y, y) - y x      (0 where y = 0)
    log_target=True  (y = log-probabilities):  l = e^y (y - x)
    reduce: "none", "sum", "mean" (/ n elements), "batchmean" (/ N = x.shape[0]; a 0-d x: the sum)
    With s = grad_L_i, grad_L, grad_L / n or grad_L / N:
    grad_x = -y s                       log_target: -e^y s
    grad_y = (log y + 1 - x) s          log_target:  e^y (y - x + 1) s
        d/dy xlogy(y, y) = log y + 1 is written as torch's derivative of xlogy: xlogy([y != 0], y) + y / y,
        nan at y = 0, where y log y has no derivative (and -inf on the side y > 0)
    t_L = reduce(-y t_x + (log y + 1 - x) t_y)     log_target: reduce(e^y (-t_x + (y - x + 1) t_y))
    Saves the inputs x and y. grad_x has no graph to x (d grad_x / dx = 0), as torch's has not.
    """

    autocast = Autocast.FLOAT32  # as torch's kl_div: float32 under autocast

    @staticmethod
    def forward(input, target, reduction, log_target):
        if log_target:
            values = torch.exp(target) * (target - input)
        else:
            values = torch.xlogy(target, target) - target * input
        return reduce_divergence(values, reduction, input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, ctx.reduction, ctx.log_target = inputs
        ctx.input_shape, ctx.target_shape = input.shape, target.shape
        ctx.save_for_backward(input, target)
        ctx.save_for_forward(input, target)

    @staticmethod
    def backward(ctx, grad_loss):
        input, target = ctx.saved_tensors
        scale = divergence_scale(grad_loss, ctx.reduction, input, target)
        grad_input = grad_target = None
        weight = torch.exp(target) if ctx.log_target else target  # dl/d(-x): e^y or y
        if ctx.needs_input_grad[0]:
            grad_input = (-weight * scale).sum_to_size(ctx.input_shape)
        if ctx.needs_input_grad[1]:
            grad_target = (target_slope(input, target, ctx.log_target, weight) * scale).sum_to_size(ctx.target_shape)
        return grad_input, grad_target, None, None

    @staticmethod
    def jvp(ctx, t_input, t_target, _t_reduction, _t_log_target):
        input, target = ctx.saved_tensors
        weight = torch.exp(target) if ctx.log_target else target
        t_values = torch.zeros(torch.broadcast_shapes(input.shape, target.shape), dtype=input.dtype,
                               device=input.device)
        if t_input is not None:
            t_values = t_values - weight * t_input
        if t_target is not None:
            t_values = t_values + target_slope(input, target, ctx.log_target, weight) * t_target
        return reduce_divergence(t_values, ctx.reduction, input)


def target_slope(input: torch.Tensor, target: torch.Tensor, log_target: bool, weight: torch.Tensor) -> torch.Tensor:
    """dl/dy: e^y (y - x + 1) with log_target, else xlogy([y != 0], y) + y / y - x (= log y + 1 - x)."""
    if log_target:
        return weight * (target - input + 1)
    return torch.xlogy(target != 0, target) + target / target - input


def reduce_divergence(values: torch.Tensor, reduction: str, input: torch.Tensor) -> torch.Tensor:
    if reduction == "none":
        return values
    if reduction == "mean":
        return values.mean()
    total = values.sum()
    return total / input.shape[0] if reduction == "batchmean" and input.dim() else total


def divergence_scale(grad_loss: torch.Tensor, reduction: str, input: torch.Tensor,
                     target: torch.Tensor) -> torch.Tensor:
    """s: grad_L_i, grad_L, grad_L / n, or grad_L / N for "batchmean"."""
    if reduction == "mean":
        return grad_loss / max(torch.broadcast_shapes(input.shape, target.shape).numel(), 1)
    if reduction == "batchmean" and input.dim():
        return grad_loss / input.shape[0]
    return grad_loss


def kl_div(input: torch.Tensor, target: torch.Tensor, size_average: bool | None = None, reduce: bool | None = None,
           reduction: str = "mean", log_target: bool = False) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.kl_div: input holds log-probabilities, target probabilities
    (log-probabilities with log_target=True). reduction="batchmean" is the divergence per example;
    "mean" divides by every element (as torch, with torch's warning)."""
    legacy = size_average is not None or reduce is not None
    reduction = reduction_of("kl_div", reduction, size_average, reduce, allowed=REDUCTIONS)
    if reduction == "mean" and not legacy:
        warnings.warn("kl_div: reduction='mean' divides the total loss by both the batch size and the support size; "
                      "'batchmean' divides only by the batch size, and is the divergence per example "
                      "(torch's warning: 'mean' will behave as 'batchmean' in its next major release)", stacklevel=2)
    check_floating("kl_div", input=input, target=target)
    if input.shape != target.shape:
        broadcast_shape("kl_div", ("input", input), ("target", target))
    return KLDiv.call(input, target, reduction, bool(log_target))
