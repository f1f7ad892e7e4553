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


def rho(kind: str, parameter: float, d: torch.Tensor) -> torch.Tensor:
    """rho(d), written as torch's kernels compute it."""
    if kind == "squared":
        return d * d
    if kind == "absolute":
        return d.abs()
    z = d.abs()
    if kind == "smooth_l1":  # parameter = beta > 0
        return torch.where(z < parameter, 0.5 * d * d / parameter, z - 0.5 * parameter)
    return torch.where(z < parameter, 0.5 * d * d, parameter * (z - 0.5 * parameter))  # huber, parameter = delta


def slope(kind: str, parameter: float, d: torch.Tensor) -> torch.Tensor:
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
    grad_w =  rho(d) s,  for "weighted_mean"  (rho(d) - L) s       (L = sum w rho / W: W depends on w)
    t_d = t_x - t_y,   t_L = reduce(w rho'(d) t_d + t_w rho(d))   ("weighted_mean": minus L sum t_w, over W)
    d is returned as a second, differentiable output (rule R1): backward reads rho'(d) from it. Saves d and w.
    ``penalty`` is (kind, parameter): ("squared", 0), ("absolute", 0), ("smooth_l1", beta), ("huber", delta).
    """

    autocast = Autocast.FLOAT32  # as torch's regression losses: float32 under autocast

    @staticmethod
    def forward(input, target, weight, penalty, reduction):
        kind, parameter = penalty
        diff = input - target
        values = rho(kind, parameter, diff)
        if weight is None:
            return (values.mean() if reduction == "mean" else values.sum() if reduction == "sum" else values), diff
        return reduce_weighted(values * weight, weight, reduction), diff

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, ctx.penalty, ctx.reduction = inputs
        ctx.set_materialize_grads(False)  # grad_d is None unless d was used (R2)
        ctx.shapes = input.shape, target.shape
        ctx.save_for_backward(output[1], weight)
        ctx.save_for_forward(output[1], weight)

    @staticmethod
    def backward(ctx, grad_loss, grad_diff):
        diff, weight = ctx.saved_tensors
        grad = grad_weight = None
        if grad_loss is not None:
            kind, parameter = ctx.penalty
            factor = 2.0 if kind == "squared" else 1.0  # c, of rho'(d) = c slope(d)
            scale = element_scale(grad_loss, diff, weight, ctx.reduction, factor)  # c s: () or like d
            grad = slope(kind, parameter, diff) * scale  # rho'(d) s
            if weight is not None:
                if ctx.needs_input_grad[2]:
                    values = rho(kind, parameter, diff)
                    if ctx.reduction == "weighted_mean":
                        values = values - (values * weight).sum() / weight.sum()  # rho(d) - L
                    grad_weight = values * (scale / factor)
                grad = grad * weight
        if grad_diff is not None:
            grad = grad_diff if grad is None else grad + grad_diff
        if grad is None:  # neither output's gradient is defined
            return None, None, grad_weight, None, None
        input_shape, target_shape = ctx.shapes
        grad_input = sum_to(grad, input_shape) if ctx.needs_input_grad[0] else None
        grad_target = -sum_to(grad, target_shape) if ctx.needs_input_grad[1] else None
        return grad_input, grad_target, grad_weight, None, None

    @staticmethod
    def jvp(ctx, t_input, t_target, t_weight, _t_penalty, _t_reduction):
        diff, weight = ctx.saved_tensors
        kind, parameter = ctx.penalty
        t_diff = torch.zeros_like(diff)
        if t_input is not None:
            t_diff = t_diff + t_input
        if t_target is not None:
            t_diff = t_diff - t_target
        t_values = slope(kind, parameter, diff) * t_diff * (2.0 if kind == "squared" else 1.0)  # rho'(d) t_d
        if weight is None:
            t_loss = t_values.mean() if ctx.reduction == "mean" else t_values.sum() if ctx.reduction == "sum" \
                else t_values
            return t_loss, t_diff
        t_values = t_values * weight
        values = rho(kind, parameter, diff)
        if t_weight is not None:
            t_values = t_values + values * t_weight
        t_loss = reduce_weighted(t_values, weight, ctx.reduction)
        if ctx.reduction == "weighted_mean" and t_weight is not None:
            t_loss = t_loss - (values * weight).sum() / weight.sum() * t_weight.sum() / weight.sum()  # L sum t_w / W
        return t_loss, t_diff


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


def reduce_weighted(values: torch.Tensor, weight: torch.Tensor, reduction: str) -> torch.Tensor:
    """The weighted values reduced: "weighted_mean" divides their sum by W = sum w."""
    if reduction == "weighted_mean":
        return values.sum() / weight.sum()
    return values.mean() if reduction == "mean" else values.sum() if reduction == "sum" else values


def sum_to(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``grad`` summed over the dims its input was broadcast along (itself where there were none)."""
    return grad if grad.shape == shape else grad.sum_to_size(shape)


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
    if not (input.is_floating_point() and target.is_floating_point()):
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
    loss, _ = function.call(input, target, weight, (kind, parameter), reduction)
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
