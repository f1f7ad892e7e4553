"""Regression losses: a penalty rho of the difference d = x - y, element by element, then reduced.

    mse_loss        rho(d) = d^2                                              rho'(d) = 2 d
    l1_loss         rho(d) = |d|                                              rho'(d) = sign(d)
    smooth_l1_loss  rho(d) = d^2 / (2 beta)  if |d| < beta, else |d| - beta / 2     rho'(d) = d / beta, else sign(d)
    huber_loss      rho(d) = d^2 / 2  if |d| < delta, else delta (|d| - delta / 2)  rho'(d) = d, else delta sign(d)

sign(0) = 0: torch's subgradient of |d| at 0. smooth_l1 with beta = 0 is l1 (as in torch, which also never
divides by beta there). x and y broadcast against each other, as torch's do (with a warning: a broadcast
between different shapes is usually a bug). An optional weight of the input's shape multiplies rho(d).

Reference: Nielsen, "Neural Networks and Deep Learning", ch. 1 (the quadratic cost); Girshick, "Fast R-CNN"
(smooth L1); Huber, "Robust Estimation of a Location Parameter" (1964); torch.nn.functional's losses.
"""

from __future__ import annotations

import warnings

import torch

from handgrad.functional.function import Autocast, TwinnedFunction, twinned
from handgrad.functional.reduction import broadcast_shape, check_floating, reduction_of


def penalty(kind: str, d: torch.Tensor, parameter: float) -> torch.Tensor:
    """rho(d), written as torch's kernels compute it."""
    if kind == "squared":
        return d * d
    if kind == "absolute":
        return d.abs()
    z = d.abs()
    if kind == "smooth_l1":  # parameter = beta > 0
        return torch.where(z < parameter, 0.5 * d * d / parameter, z - 0.5 * parameter)
    return torch.where(z < parameter, 0.5 * d * d, parameter * (z - 0.5 * parameter))  # huber, parameter = delta


def slope(kind: str, d: torch.Tensor, parameter: float) -> torch.Tensor:
    """rho'(d) / c, with c = 2 for "squared" (folded into the scale: one kernel fewer) and 1 otherwise."""
    if kind == "squared":
        return d
    if kind == "absolute":
        return torch.sign(d)
    inside = d.abs() < parameter
    if kind == "smooth_l1":
        return torch.where(inside, d / parameter, torch.sign(d))
    return torch.where(inside, d, parameter * torch.sign(d))


class PointwiseLoss(TwinnedFunction):
    """L = reduce(w rho(d)),  d = x - y        x (*), y (**), w (*) or None  ->  L, d (broadcast shape)

    reduce: "none" the values, "sum" their sum, "mean" their sum / n (n elements of d), and
    "weighted_mean" sum_i w_i rho(d_i) / W, W = sum_i w_i (mse_loss and l1_loss with a weight: torch's).
    With s_i = grad_L_i, grad_L, grad_L / n or grad_L / W, and grad_d the gradient reaching d:
    grad_x =  sum_to_x(w rho'(d) s + grad_d)              (summed over the dims x was broadcast along)
    grad_y = -sum_to_y(w rho'(d) s + grad_d)
    grad_w =  rho(d) s,  for "weighted_mean"  (rho(d) - L) s       (L is sum w rho / W: W depends on w)
    t_d = t_x - t_y,   t_L = reduce(w rho'(d) t_d + t_w rho(d))   ("weighted_mean": minus L sum t_w, over W)
    d is returned as a second, differentiable output (rule R1): backward reads rho'(d) from it.
    """

    autocast = Autocast.FLOAT32  # as torch's regression losses: float32 under autocast

    @staticmethod
    def forward(input, target, weight, kind, parameter, reduction):
        diff = input - target
        values = penalty(kind, diff, parameter)
        if weight is not None:
            values = values * weight
        if reduction == "weighted_mean":
            return values.sum() / weight.sum(), diff
        if reduction == "mean":
            return values.mean(), diff
        return (values.sum() if reduction == "sum" else values), diff

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, ctx.kind, ctx.parameter, ctx.reduction = inputs
        ctx.set_materialize_grads(False)  # grad_d is None unless d was used (R2)
        ctx.input_shape, ctx.target_shape = input.shape, target.shape
        loss, diff = output
        saved = (diff, weight, loss if ctx.reduction == "weighted_mean" else None)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    @staticmethod
    def backward(ctx, grad_loss, grad_diff):
        diff, weight, loss = ctx.saved_tensors
        grad = grad_weight = None
        if grad_loss is not None:
            factor = 2.0 if ctx.kind == "squared" else 1.0  # c, of rho'(d) = c slope(d)
            scale = element_scale(grad_loss, diff, weight, ctx.reduction, factor)  # c s: () or like d
            grad = slope(ctx.kind, diff, ctx.parameter) * scale  # rho'(d) s
            if weight is not None:
                if ctx.needs_input_grad[2]:
                    values = penalty(ctx.kind, diff, ctx.parameter)
                    grad_weight = (values - loss if loss is not None else values) * (scale / factor)
                grad = grad * weight
        if grad_diff is not None:
            grad = grad_diff if grad is None else grad + grad_diff
        if grad is None:  # neither output's gradient is defined
            return None, None, grad_weight, None, None, None
        grad_input = grad.sum_to_size(ctx.input_shape) if ctx.needs_input_grad[0] else None
        grad_target = -grad.sum_to_size(ctx.target_shape) if ctx.needs_input_grad[1] else None
        return grad_input, grad_target, grad_weight, None, None, None

    @staticmethod
    def jvp(ctx, t_input, t_target, t_weight, *_):
        diff, weight, loss = ctx.saved_tensors
        t_diff = torch.zeros_like(diff)
        if t_input is not None:
            t_diff = t_diff + t_input
        if t_target is not None:
            t_diff = t_diff - t_target
        factor = 2 if ctx.kind == "squared" else 1
        t_values = slope(ctx.kind, diff, ctx.parameter) * t_diff * factor
        if weight is not None:
            t_values = t_values * weight
            if t_weight is not None:
                t_values = t_values + penalty(ctx.kind, diff, ctx.parameter) * t_weight
        if ctx.reduction == "weighted_mean":
            t_sum = t_values.sum() if t_weight is None else t_values.sum() - loss * t_weight.sum()
            return t_sum / weight.sum(), t_diff
        if ctx.reduction == "mean":
            return t_values.mean(), t_diff
        return (t_values.sum() if ctx.reduction == "sum" else t_values), t_diff


@twinned
class WeightedPointwiseLoss(TwinnedFunction):
    """PointwiseLoss for mse_loss and l1_loss with a weight: torch computes those from its own ops (pow or abs,
    mul, sum, div), so under autocast they run in the dtypes autocast gives those ops, not in float32."""

    autocast = Autocast.AS_WRITTEN
    forward = staticmethod(PointwiseLoss.forward)
    setup_context = staticmethod(PointwiseLoss.setup_context)
    backward = staticmethod(PointwiseLoss.backward)
    jvp = staticmethod(PointwiseLoss.jvp)


twinned(PointwiseLoss)  # only now: twinned replaces the methods WeightedPointwiseLoss has just shared


def element_scale(grad_loss: torch.Tensor, diff: torch.Tensor, weight: torch.Tensor | None, reduction: str,
                  factor: float) -> torch.Tensor:
    """c s, with s = grad_L_i ("none"), grad_L ("sum"), grad_L / n ("mean"), grad_L / W ("weighted_mean"):
    the constant c folded into the same kernel where it can be."""
    if reduction == "mean":
        return grad_loss * (factor / max(diff.numel(), 1))
    if reduction == "weighted_mean" and weight is not None:
        return grad_loss * factor / weight.sum()
    return grad_loss * factor if factor != 1 else grad_loss


# --------------------------------------------------------------------------- the wrappers


def pointwise_loss(name: str, input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                   kind: str, parameter: float, reduction: str) -> torch.Tensor:
    """The checks torch makes (with handgrad's messages), torch's broadcast warning, then PointwiseLoss."""
    check_floating(name, input=input, target=target)
    if input.shape != target.shape:
        shape = broadcast_shape(name, ("input", input), ("target", target))
        warnings.warn(f"{name}: target of shape {tuple(target.shape)} is broadcast against input of shape "
                      f"{tuple(input.shape)} to shape {tuple(shape)}, as torch does; this is usually a bug (an "
                      "(N, 1) output against an (N,) target makes an (N, N) loss): give both the same shape",
                      UserWarning, stacklevel=3)
    if weight is not None and weight.shape != input.shape:
        raise ValueError(f"{name}: weight of shape {tuple(weight.shape)} must have the input's shape "
                         f"{tuple(input.shape)}")
    function = WeightedPointwiseLoss if weight is not None and kind in ("squared", "absolute") else PointwiseLoss
    loss, _ = function.call(input, target, weight, kind, parameter, reduction)
    return loss


def mse_loss(input: torch.Tensor, target: torch.Tensor, size_average: bool | None = None,
             reduce: bool | None = None, reduction: str = "mean", weight: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.mse_loss: the mean (or sum) of (x - y)^2; with a weight w,
    "mean" is sum w (x - y)^2 / sum w, as in torch."""
    reduction = reduction_of("mse_loss", reduction, size_average, reduce)
    mean = "weighted_mean" if weight is not None and reduction == "mean" else reduction
    return pointwise_loss("mse_loss", input, target, weight, "squared", 0.0, mean)


def l1_loss(input: torch.Tensor, target: torch.Tensor, size_average: bool | None = None,
            reduce: bool | None = None, reduction: str = "mean", weight: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.l1_loss: the mean (or sum) of |x - y|; with a weight w,
    "mean" is sum w |x - y| / sum w, as in torch."""
    reduction = reduction_of("l1_loss", reduction, size_average, reduce)
    mean = "weighted_mean" if weight is not None and reduction == "mean" else reduction
    return pointwise_loss("l1_loss", input, target, weight, "absolute", 0.0, mean)


def smooth_l1_loss(input: torch.Tensor, target: torch.Tensor, size_average: bool | None = None,
                   reduce: bool | None = None, reduction: str = "mean", beta: float = 1.0) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.smooth_l1_loss (beta >= 0; beta = 0 is l1_loss)."""
    reduction = reduction_of("smooth_l1_loss", reduction, size_average, reduce)
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta={beta} must be >= 0 (0 gives l1_loss)")
    kind = "smooth_l1" if beta > 0 else "absolute"
    return pointwise_loss("smooth_l1_loss", input, target, None, kind, float(beta), reduction)


def huber_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean", delta: float = 1.0,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.huber_loss (delta > 0); with a weight w, "mean" is the plain
    mean of w rho(d), as in torch."""
    reduction = reduction_of("huber_loss", reduction)
    if not delta > 0:
        raise ValueError(f"huber_loss: delta={delta} must be positive")
    return pointwise_loss("huber_loss", input, target, weight, "huber", float(delta), reduction)
