"""Binary cross-entropy: of probabilities x (binary_cross_entropy), or of logits x, the probability being
sigma(x) (binary_cross_entropy_with_logits, the stable one), against targets y in [0, 1], element by element.

Reference: Goodfellow, Bengio and Courville, "Deep Learning", 6.2.2.2 (the sigmoid and its log-likelihood);
torch.nn.functional.binary_cross_entropy and binary_cross_entropy_with_logits.
"""

from __future__ import annotations

import torch

from handgrad.functional.activations import stable_sigmoid
from handgrad.functional.autocast import autocast_on_any_device
from handgrad.functional.function import Autocast, TwinnedFunction, twinned
from handgrad.functional.reduction import (
    broadcast_shape,
    check_constant,
    check_floating,
    may_read_values,
    reduce,
    reduction_of,
)

LOG_FLOOR = -100.0  # torch clamps each log at -100: a probability of exactly 0 or 1 costs 100, not inf
EPSILON = 1e-12  # torch's floor of x (1 - x) in the derivative


@twinned
class BinaryCrossEntropy(TwinnedFunction):
    """L = reduce(w l),  l = (y - 1) max(log(1 - x), -100) - y max(log x, -100)      x, y (*), w (*) or None

    grad_x = w s (x - y) / max(x (1 - x), 1e-12)
    grad_y = w s (log(1 - x) - log x)             (= -logit(x); neither clamped: torch's derivatives)
    t_L    = reduce(w ((x - y) / max(x (1 - x), 1e-12) t_x + (log(1 - x) - log x) t_y))
    where dl/dx = -y / x + (1 - y) / (1 - x) = (x - y) / (x (1 - x)) without the clamps, and s = grad_L_i,
    grad_L or grad_L / n. Saves the inputs x, y and w.
    """

    autocast = Autocast.FLOAT32  # as torch's on the CPU (CUDA autocast refuses it: the wrapper says so)

    @staticmethod
    def forward(input, target, weight, reduction):
        log_x, log_1mx = torch.log(input).clamp_min(LOG_FLOOR), torch.log1p(-input).clamp_min(LOG_FLOOR)
        values = (target - 1) * log_1mx - target * log_x
        return reduce(values if weight is None else values * weight, reduction)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, ctx.reduction = inputs
        ctx.save_for_backward(input, target, weight)
        ctx.save_for_forward(input, target, weight)

    @staticmethod
    def backward(ctx, grad_loss):
        input, target, weight = ctx.saved_tensors
        scale = grad_loss / max(input.numel(), 1) if ctx.reduction == "mean" else grad_loss
        if weight is not None:
            scale = scale * weight
        grad_input = grad_target = None
        if ctx.needs_input_grad[0]:
            grad_input = (input - target) / (input * (1 - input)).clamp_min(EPSILON) * scale
        if ctx.needs_input_grad[1]:
            grad_target = (torch.log1p(-input) - torch.log(input)) * scale
        return grad_input, grad_target, None, None

    @staticmethod
    def jvp(ctx, t_input, t_target, *_):
        input, target, weight = ctx.saved_tensors
        t_values = torch.zeros_like(input)
        if t_input is not None:
            t_values = t_values + (input - target) / (input * (1 - input)).clamp_min(EPSILON) * t_input
        if t_target is not None:
            t_values = t_values + (torch.log1p(-input) - torch.log(input)) * t_target
        return reduce(t_values if weight is None else t_values * weight, ctx.reduction)


def softplus_of_minus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^-x) = max(-x, 0) + log(1 + e^-|x|): only e^(number <= 0) is taken, so it never overflows."""
    return (-x).clamp_min(0) + torch.log1p(torch.exp(-x.abs()))


@twinned
class BinaryCrossEntropyWithLogits(TwinnedFunction):
    """L = reduce(w l), x logits, y targets, pw the positive weight (1 without)    x, y (*), w, pw broadcast

    l = -(pw y log sigma(x) + (1 - y) log(1 - sigma(x)))
      = (1 - y) x + (1 + (pw - 1) y) softplus(-x),   since -log sigma(x) = softplus(-x) = log(1 + e^-x) and
        -log(1 - sigma(x)) = -log sigma(-x) = x + softplus(-x);   softplus(-x) = max(-x, 0) + log(1 + e^-|x|)
      = max(x, 0) - x y + log(1 + e^-|x|)          without pw (x + max(-x, 0) = max(x, 0))
    d softplus(-x)/dx = -sigma(-x) = sigma(x) - 1, so with a = 1 + (pw - 1) y:
    grad_x = w s (a sigma(x) - pw y)                (sigma(x) - y without pw)
    grad_y = w s ((pw - 1) softplus(-x) - x)        (-x without pw)
    t_L    = reduce(w ((a sigma(x) - pw y) t_x + ((pw - 1) softplus(-x) - x) t_y))
    with s = grad_L_i, grad_L or grad_L / n. Saves the inputs x, y, w and pw.
    """

    autocast = Autocast.FLOAT32  # as torch's: float32 under autocast

    @staticmethod
    def forward(input, target, weight, pos_weight, reduction):
        if pos_weight is None:
            values = input.clamp_min(0) - input * target + torch.log1p(torch.exp(-input.abs()))
        else:
            values = (1 - target) * input + (1 + (pos_weight - 1) * target) * softplus_of_minus(input)
        return reduce(values if weight is None else values * weight, reduction)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, pos_weight, ctx.reduction = inputs
        ctx.save_for_backward(input, target, weight, pos_weight)
        ctx.save_for_forward(input, target, weight, pos_weight)

    @staticmethod
    def backward(ctx, grad_loss):
        input, target, weight, pos_weight = ctx.saved_tensors
        scale = grad_loss / max(input.numel(), 1) if ctx.reduction == "mean" else grad_loss
        if weight is not None:
            scale = scale * weight
        grad_input = grad_target = None
        if ctx.needs_input_grad[0]:
            grad_input = logit_slope(input, target, pos_weight) * scale
        if ctx.needs_input_grad[1]:
            grad_target = target_slope(input, pos_weight) * scale
        return grad_input, grad_target, None, None, None

    @staticmethod
    def jvp(ctx, t_input, t_target, *_):
        input, target, weight, pos_weight = ctx.saved_tensors
        t_values = torch.zeros_like(input)
        if t_input is not None:
            t_values = t_values + logit_slope(input, target, pos_weight) * t_input
        if t_target is not None:
            t_values = t_values + target_slope(input, pos_weight) * t_target
        return reduce(t_values if weight is None else t_values * weight, ctx.reduction)


def logit_slope(input: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor | None) -> torch.Tensor:
    """dl/dx = sigma(x) - y, or (1 + (pw - 1) y) sigma(x) - pw y."""
    if pos_weight is None:
        return stable_sigmoid(input) - target
    return (1 + (pos_weight - 1) * target) * stable_sigmoid(input) - pos_weight * target


def target_slope(input: torch.Tensor, pos_weight: torch.Tensor | None) -> torch.Tensor:
    """dl/dy = -x, or (pw - 1) softplus(-x) - x."""
    return -input if pos_weight is None else (pos_weight - 1) * softplus_of_minus(input) - input


# --------------------------------------------------------------------------- the wrappers


def binary_cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                         size_average: bool | None = None, reduce: bool | None = None,
                         reduction: str = "mean") -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.binary_cross_entropy: input holds probabilities in [0, 1],
    target the same shape, values in [0, 1]; weight broadcasts to the input's shape."""
    reduction = reduction_of("binary_cross_entropy", reduction, size_average, reduce)
    if autocast_on_any_device() and input.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        raise RuntimeError("binary_cross_entropy: torch refuses it under CUDA autocast, as unsafe in float16 (log of "
                           "a rounded probability); pass logits to binary_cross_entropy_with_logits (or "
                           "BCEWithLogitsLoss) instead of sigmoid + binary_cross_entropy")
    check_targets("binary_cross_entropy", input, target, weight=weight)
    if may_read_values(input):
        for what, values in (("input", input), ("target", target)):
            low, high = (float(v) for v in torch.aminmax(values.detach())) if values.numel() else (0.0, 0.0)
            if not 0.0 <= low <= high <= 1.0:  # also False for nan
                raise ValueError(f"binary_cross_entropy: every element of {what} must be a probability in [0, 1], got "
                                 f"values in [{low}, {high}]; for logits use binary_cross_entropy_with_logits")
    return BinaryCrossEntropy.call(input, target, weight, reduction)


def binary_cross_entropy_with_logits(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                                     size_average: bool | None = None, reduce: bool | None = None,
                                     reduction: str = "mean", pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.binary_cross_entropy_with_logits: input holds logits, target
    the same shape with values in [0, 1]; weight and pos_weight (the weight of the positive term, e.g. one
    per class along the last dim) broadcast to the input's shape."""
    reduction = reduction_of("binary_cross_entropy_with_logits", reduction, size_average, reduce)
    check_targets("binary_cross_entropy_with_logits", input, target, weight=weight, pos_weight=pos_weight)
    return BinaryCrossEntropyWithLogits.call(input, target, weight, pos_weight, reduction)


def check_targets(name: str, input: torch.Tensor, target: torch.Tensor, **weights: torch.Tensor | None) -> None:
    """torch's checks, with handgrad's messages: floating tensors, a target of the input's shape, weights that
    broadcast to it and do not require grad (torch's op is not differentiable in them)."""
    check_floating(name, input=input, target=target, **weights)
    if target.shape != input.shape:
        raise ValueError(f"{name}: target of shape {tuple(target.shape)} must have the input's shape "
                         f"{tuple(input.shape)}")
    check_constant(name, **weights)
    for what, weight in weights.items():
        if weight is not None and broadcast_shape(name, ("input", input), (what, weight)) != input.shape:
            raise ValueError(f"{name}: {what} of shape {tuple(weight.shape)} must broadcast to the input's shape "
                             f"{tuple(input.shape)}")
