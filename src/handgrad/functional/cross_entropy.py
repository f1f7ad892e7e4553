"""Softmax cross-entropy: the log-softmax of logits x along the classes, then a loss linear in it, against
class indices (CrossEntropy) or class probabilities (SoftCrossEntropy).

Both return log p as a second, *differentiable* output (rule R1 of function.py): backward computes
p = e^(log p) from it, so a backward that is itself differentiated (a gradient penalty, a Hessian) goes
through log p's node, and the gradient reaching log p there is log_softmax's backward:

    grad_x = G - p * sum_c G_c,     G = dL/dlog p (from L) + grad_log p (from log p, when it is used)

Reference: CS231n "softmax_loss"; Szegedy et al., "Rethinking the Inception Architecture" (label
smoothing); torch.nn.functional.cross_entropy.
"""

from __future__ import annotations

import math

import torch

from handgrad.functional.class_targets import (
    class_targets,
    class_view,
    linear_loss,
    linear_loss_adjoint,
    loss_scale,
    per_row,
)
from handgrad.functional.function import Autocast, TwinnedFunction, may_overwrite, twinned
from handgrad.functional.reduction import check_floating, reduction_of

LOG2_E = math.log2(math.e)  # e^z = 2^(z log2 e)


def log_softmax_classes(input: torch.Tensor) -> torch.Tensor:
    """log p = (x - m) - log sum_c e^(x_c - m),  m = max_c x_c, along the class dim 1 (exponents <= 0):
    torch's log_softmax kernel, which computes that formula in one pass (the forward only: every
    derivative here is written out)."""
    return torch.log_softmax(input, 1)


def probabilities(log_p: torch.Tensor, overwrite: bool) -> torch.Tensor:
    """p = e^(log p), a new tensor. With ``overwrite`` (may_overwrite(): rule R3) as 2^(log p log2 e), in place
    on the product: torch's exp2 kernel is about twice as fast as its exp on CPU, and log p <= 0 keeps
    the rounding of the product below |log p| ulp of p's exponent."""
    return (log_p * LOG2_E).exp2_() if overwrite else torch.exp(log_p)


def through_log_softmax(p: torch.Tensor, grad_log_p: torch.Tensor) -> torch.Tensor:
    """grad_x = G - p * sum_c G_c for G = grad_log_p: dlog p_k / dx_c = [k = c] - p_c, summed against G."""
    return grad_log_p - p * grad_log_p.sum(1, keepdim=True)


def log_softmax_jvp(p: torch.Tensor, t_input: torch.Tensor) -> torch.Tensor:
    """t_log p = t_x - sum_c p_c t_x_c: the same Jacobian applied to a tangent."""
    return t_input - (p * t_input).sum(1, keepdim=True)


# --------------------------------------------------------------------------- class indices


@twinned
class CrossEntropy(TwinnedFunction):
    """Softmax cross-entropy against class indices       x (N, C, *d), t (N, *d)  ->  L, log p (N, C, *d)

    log p = log_softmax(x) along dim 1
    L     = Lambda(log p): rows r, mask u, class weights w, smoothing eps (class_targets.py)
    G     = Lambda^T(grad_L) + grad_log p,   grad_x = G - p * sum_c G_c,   p = e^(log p)
    Without label smoothing, where log p is not used after (every first-order backward): G = -s_i r_i
    onehot(t_i) and sum_c G_c = -s_i r_i, so
    grad_x = (p - onehot(t)) * s_i r_i        (s = grad_L / W for "mean", grad_L, or grad_L_i for "none";
                                               r = 1 without weights or ignored targets: one scalar s)
    t_log p = t_x - sum_c p_c t_x_c,   t_L = Lambda(t_log p)     (jvp: Lambda is linear)
    Saves log p (a differentiable output), t and the zero-derivative r, u, w.
    """

    autocast = Autocast.FLOAT32  # as torch's cross_entropy: float32 under autocast

    @staticmethod
    def forward(input, target, rows, mask, weight, reduction, smoothing):
        log_p = log_softmax_classes(input)
        return linear_loss(log_p, target, rows, mask, weight, reduction, smoothing), log_p

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, target, rows, mask, weight, ctx.reduction, ctx.smoothing = inputs
        ctx.set_materialize_grads(False)  # grad_log_p is None unless log p was used (R2)
        saved = (output[1], target, rows, mask, weight)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    @staticmethod
    def backward(ctx, grad_loss, grad_log_p):
        log_p, target, rows, mask, weight = ctx.saved_tensors
        if grad_loss is not None and grad_log_p is None and not ctx.smoothing:  # two kernels (docstring)
            overwrite = may_overwrite(grad_loss)  # R3: p is ours
            p = probabilities(log_p, overwrite)  # (N, C, *d)
            minus_one = -torch.ones_like(p[:, :1])
            grad = (p.scatter_add_ if overwrite else p.scatter_add)(1, target.unsqueeze(1), minus_one)  # p - onehot(t)
            scale = loss_scale(grad_loss, target, rows, ctx.reduction)  # s
            if rows is not None or ctx.reduction == "none":
                scale = per_row(scale, rows, target)  # s_i r_i  (N, 1, *d)
            return grad.mul_(scale) if overwrite else grad * scale, None, None, None, None, None, None
        p = torch.exp(log_p)  # (N, C, *d)
        grads = grad_log_p
        if grad_loss is not None:
            from_loss = linear_loss_adjoint(grad_loss, p, target, rows, mask, weight, ctx.reduction, ctx.smoothing)
            grads = from_loss if grads is None else grads + from_loss
        if grads is None:  # neither output's gradient is defined
            return None, None, None, None, None, None, None
        return through_log_softmax(p, grads), None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, t_input, *_):
        log_p, target, rows, mask, weight = ctx.saved_tensors
        t_log_p = log_softmax_jvp(torch.exp(log_p), t_input)
        return linear_loss(t_log_p, target, rows, mask, weight, ctx.reduction, ctx.smoothing), t_log_p


# --------------------------------------------------------------------------- class probabilities


@twinned
class SoftCrossEntropy(TwinnedFunction):
    """Softmax cross-entropy against class probabilities   x, y (N, C, *d), w (C,) or None  ->  L, log p

    log p = log_softmax(x) along dim 1,   q = (1 - eps) y + eps / C
    L_i   = -sum_c w_c q_ic log p_ic;  "mean" divides by M = N d1 ... dk, the number of rows (as torch)
    G      = -s_i w_c q_ic + grad_log p,    grad_x = G - p * sum_c G_c
    grad_y = -(1 - eps) s_i w_c log p_ic
    grad_w = -sum_i s_i q_ic log p_ic                       (summed over every dim but the classes)
    t_L    = reduce(-sum_c (w_c q_ic t_log p_ic + (1 - eps) w_c t_y_ic log p_ic + t_w_c q_ic log p_ic))
    with s_i = grad_L_i ("none"), grad_L ("sum"), grad_L / M ("mean"), and t_log p as in CrossEntropy.
    Saves log p (a differentiable output) and the inputs y, w.
    """

    autocast = Autocast.FLOAT32  # as torch's cross_entropy: float32 under autocast

    @staticmethod
    def forward(input, target, weight, reduction, smoothing):
        log_p = log_softmax_classes(input)
        return reduce_rows(-weighted(soft_target(target, smoothing), weight) * log_p, reduction), log_p

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, target, weight, ctx.reduction, ctx.smoothing = inputs
        ctx.set_materialize_grads(False)  # (R2)
        saved = (output[1], target, weight)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    @staticmethod
    def backward(ctx, grad_loss, grad_log_p):
        log_p, target, weight = ctx.saved_tensors
        p = torch.exp(log_p)
        grad_input = grad_target = grad_weight = None
        grads = grad_log_p
        if grad_loss is not None:
            s = row_scale(grad_loss, log_p, ctx.reduction)  # (N, 1, *d) or ()
            q = soft_target(target, ctx.smoothing)
            from_loss = -s * weighted(q, weight)  # dL/dlog p = -s_i w_c q_ic
            grads = from_loss if grads is None else grads + from_loss
            if ctx.needs_input_grad[1]:
                grad_target = -(1 - ctx.smoothing) * s * weighted(log_p, weight)
            if weight is not None and ctx.needs_input_grad[2]:
                grad_weight = (-s * q * log_p).sum_to_size(class_view(weight, log_p).shape).view(-1)
        if ctx.needs_input_grad[0] and grads is not None:
            grad_input = through_log_softmax(p, grads)
        return grad_input, grad_target, grad_weight, None, None

    @staticmethod
    def jvp(ctx, t_input, t_target, t_weight, _t_reduction, _t_smoothing):
        log_p, target, weight = ctx.saved_tensors
        t_log_p = log_softmax_jvp(torch.exp(log_p), t_input) if t_input is not None else torch.zeros_like(log_p)
        q = soft_target(target, ctx.smoothing)
        t_elements = weighted(q, weight) * t_log_p
        if t_target is not None:
            t_elements = t_elements + (1 - ctx.smoothing) * weighted(t_target, weight) * log_p
        if t_weight is not None:
            t_elements = t_elements + weighted(q, t_weight) * log_p
        return reduce_rows(-t_elements, ctx.reduction), t_log_p


def soft_target(target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """q = (1 - eps) y + eps / C: the probabilities mixed with the uniform distribution."""
    return target * (1 - smoothing) + smoothing / target.shape[1] if smoothing else target


def weighted(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """values_ic * w_c (values itself without weights)."""
    return values if weight is None else values * class_view(weight, values)


def reduce_rows(elements: torch.Tensor, reduction: str) -> torch.Tensor:
    """sum over the classes (dim 1), then "none" / "sum" / "mean" over the M rows (nan for M = 0, as torch)."""
    if reduction == "none":
        return elements.sum(1)
    total = elements.sum()
    return total / (elements.numel() // max(elements.shape[1], 1)) if reduction == "mean" else total


def row_scale(grad_loss: torch.Tensor, like: torch.Tensor, reduction: str) -> torch.Tensor:
    """s_i, shaped to broadcast against ``like`` (N, C, *d): grad_L_i, grad_L, or grad_L / M."""
    if reduction == "none":
        return grad_loss.unsqueeze(1)
    return grad_loss / max(like.numel() // max(like.shape[1], 1), 1) if reduction == "mean" else grad_loss


# --------------------------------------------------------------------------- the wrapper


def cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  size_average: bool | None = None, ignore_index: int = -100, reduce: bool | None = None,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.cross_entropy, every argument with torch's meaning.

    input: logits (C,), (N, C) or (N, C, d1, ..., dk). target: class indices () , (N) or (N, d1, ..., dk)
    (torch.long or torch.uint8), or class probabilities of the input's own shape (torch's rule: a target
    of the input's shape holds probabilities). weight: one per class. ignore_index: a class index whose
    targets add nothing (class indices only). label_smoothing: eps in [0, 1] (torch reads eps <= 0 as 0).
    """
    reduction = reduction_of("cross_entropy", reduction, size_average, reduce)
    check_floating("cross_entropy", input=input)
    if label_smoothing > 1.0:
        raise ValueError(f"cross_entropy: label_smoothing={label_smoothing} must be between 0.0 and 1.0")
    smoothing = float(label_smoothing) if label_smoothing > 0.0 else 0.0
    if input.dim() == 0:
        raise ValueError("cross_entropy: input is a 0-d tensor; expected logits of shape (C,), (N, C) or "
                         "(N, C, d1, ...)")
    if input.shape == target.shape:
        return probability_cross_entropy(input, target, weight, ignore_index, reduction, smoothing)
    targets = class_targets("cross_entropy", input, target, weight, ignore_index)
    loss, _ = CrossEntropy.call(targets.input, targets.target, targets.rows, targets.mask,
                                weight if smoothing else None, reduction, smoothing)
    return loss.squeeze(0) if targets.unbatched and reduction == "none" else loss


def probability_cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                              ignore_index: int, reduction: str, smoothing: float) -> torch.Tensor:
    """cross_entropy against class probabilities (target of the input's shape), after torch's checks."""
    if not target.is_floating_point():
        raise TypeError(f"cross_entropy: a target of the input's shape {tuple(input.shape)} holds class "
                        f"probabilities and must be floating point, got {target.dtype}; for class indices "
                        f"give it shape {(input.shape[0], *input.shape[2:]) if input.dim() > 1 else ()}")
    if ignore_index >= 0:
        raise ValueError(f"cross_entropy: ignore_index={ignore_index} applies to class indices only, not to "
                         "class probabilities; leave it at its default")
    classes = input.shape[0 if input.dim() == 1 else 1]
    if weight is not None and weight.shape != (classes,):
        raise ValueError(f"cross_entropy: weight of shape {tuple(weight.shape)} must hold one weight per class: "
                         f"shape ({classes},) for logits of shape {tuple(input.shape)}")
    unbatched = input.dim() == 1
    if unbatched:
        input, target = input.unsqueeze(0), target.unsqueeze(0)
    loss, _ = SoftCrossEntropy.call(input, target, weight, reduction, smoothing)
    return loss.squeeze(0) if unbatched and reduction == "none" else loss
