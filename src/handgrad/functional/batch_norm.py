"""Batch normalisation: each channel standardised over the batch (and the spatial positions), then
scaled and shifted by a learned weight and bias. In training the batch's own statistics normalise
(BatchNormTrain: the gradient has the three chain-rule terms of normalization.py); in evaluation
the running statistics do, and the op is an affine map per channel (BatchNormEval).

Second derivatives: torch 2.14's own F.batch_norm in training gets the d(grad_weight)/d(input) block
of its Hessian wrong under torch.func (jacrev(jacrev), hessian), while finite differences and its
create_graph=True double backward agree with this op's. verify/cases/normalization.py therefore checks
those two transforms against a decomposition of batch norm into primitive ops (``reference_second``).

Reference: Ioffe & Szegedy, "Batch Normalization" (ICML 2015), section 3; torch.nn.functional.batch_norm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch._C import _functorch as functorch

from handgrad.functional.function import (
    Autocast,
    TwinnedFunction,
    forward_ad,
    may_overwrite,
    transforms_active,
    twinned,
    zero_link,
)
from handgrad.functional.normalization import standardized_grad, standardized_tangent


def channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-channel vector (C,) shaped (C, 1, ...) to broadcast against an (N, C, *) input: itself against
    (N, C). (A view costs ~3 us on CPU; C > 0 here, as batch_norm takes no channel-less input this far.)"""
    return t if ndim == 2 else t.view(-1, *[1] * (ndim - 2))


def channel_sum(t: torch.Tensor) -> torch.Tensor:
    """sum_{n,*} t[n, c, *] for an (N, C, *) tensor -> (C,); over n first, then the rest, which is
    2-3x faster on CPU than t.sum((0, 2, 3)) in one go."""
    per_channel = t.sum(0)  # (C, *)
    return per_channel.sum(tuple(range(1, per_channel.dim()))) if per_channel.dim() > 1 else per_channel


def per_channel(input: torch.Tensor) -> int:
    """m = N * (H * W ...), the elements each channel's statistics average over."""
    count = input.shape[0]
    for size in input.shape[2:]:
        count *= size
    return count


@twinned
class BatchNormTrain(TwinnedFunction):
    """Batch norm with the batch's own statistics, per channel c over its m = N * (H * W ...) elements:

        mean = (1/m) sum x,   var = (1/m) sum (x - mean)^2   (biased),   r = 1 / sqrt(var + eps)
        x_hat = (x - mean) r,   y = weight * x_hat + bias

    Shapes:  x (N, C, *), weight (C,), bias (C,)  ->  y (N, C, *), and mean, var (C,), which feed the
    running statistics and are differentiable outputs (R1): backward recomputes r and x_hat from them.

    grad_x      = weight r (grad_y - mean(grad_y) - x_hat mean(grad_y x_hat))                (N, C, *)
                  terms (1)-(3) of standardized_grad with g = grad_y * weight; the weight is
                  constant over a channel's m elements, so it leaves the means
                + grad_mean / m + grad_var 2 (x - mean) / m      terms (4), (5), when not None (R2)
    grad_weight = sum_{n,*} grad_y x_hat                                                     (C,)
    grad_bias   = sum_{n,*} grad_y                                                           (C,)
    t_mean      = mean(t_x),   t_var = 2 mean((x - mean) t_x)                               (jvp)
    t_y         = weight r (t_x - mean(t_x) - x_hat mean(x_hat t_x)) + t_weight x_hat + t_bias

    Saves x, weight, mean and var (autograd saves x, weight, mean and r). An empty batch (m = 0) divides
    by 1 instead: its statistics are 0 and its gradients zeros, as torch's.
    """

    autocast = Autocast.FLOAT32_INSIDE  # as torch's kernels: statistics in float32, y in x's dtype

    @staticmethod
    def forward(input, weight, bias, eps):
        ndim, m = input.dim(), max(per_channel(input), 1)
        mean = channel_sum(input) / m  # (C,)
        centered = input - channel_view(mean, ndim)  # (N, C, *)
        var = channel_sum(centered * centered) / m  # (C,)  two passes: no cancellation as in E[x^2] - E[x]^2
        scale = torch.rsqrt(var + eps) if weight is None else torch.rsqrt(var + eps) * weight
        if may_overwrite():  # R3: centered is ours (under vmap the weight may be batched where x is not)
            output = centered.mul_(channel_view(scale, ndim))
            if bias is not None:
                output += channel_view(bias, ndim)
        else:
            output = centered * channel_view(scale, ndim)
            if bias is not None:
                output = output + channel_view(bias, ndim)
        return output, mean, var

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, eps = inputs
        _, mean, var = output
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, weight, mean, var)
        ctx.save_for_forward(input, weight, mean, var)
        ctx.has_bias, ctx.eps = bias is not None, eps

    @staticmethod
    def backward(ctx, grad_output, grad_mean, grad_var):
        input, weight, mean, var = ctx.saved_tensors
        ndim, m = input.dim(), max(per_channel(input), 1)
        invstd = torch.rsqrt(var + ctx.eps)  # (C,)
        centered = input - channel_view(mean, ndim)  # (N, C, *)
        grad_input = grad_weight = grad_bias = None

        if grad_output is not None:
            overwrite = grad_var is None and may_overwrite(grad_output)  # (5) reads centered again
            xhat = centered.mul_(channel_view(invstd, ndim)) if overwrite else centered * channel_view(invstd, ndim)
            sum_grad = channel_sum(grad_output)  # (C,)
            sum_grad_xhat = channel_sum(grad_output * xhat)  # (C,)
            if weight is not None and ctx.needs_input_grad[1]:
                grad_weight = sum_grad_xhat
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_bias = sum_grad
            if ctx.needs_input_grad[0]:
                scale = invstd if weight is None else invstd * weight
                grad_input = standardized_grad(grad_output, xhat, channel_view(scale, ndim),
                                               channel_view(sum_grad / m, ndim), channel_view(sum_grad_xhat / m, ndim),
                                               overwrite)  # (1) - (3)   (N, C, *)
        if ctx.needs_input_grad[0] and grad_mean is not None:
            through_mean = channel_view(grad_mean / m, ndim)  # (4), broadcast over the channel's elements
            grad_input = through_mean.expand_as(input) if grad_input is None else grad_input + through_mean
        if ctx.needs_input_grad[0] and grad_var is not None:
            through_var = centered * channel_view(grad_var * (2 / m), ndim)  # (5)
            grad_input = through_var if grad_input is None else grad_input + through_var
        return grad_input, grad_weight, grad_bias, None

    @staticmethod
    def jvp(ctx, t_input, t_weight, t_bias, _t_eps):
        input, weight, mean, var = ctx.saved_tensors
        t_input = torch.zeros_like(input) if t_input is None else t_input  # x without a tangent (gradcheck's test)
        ndim, m = input.dim(), max(per_channel(input), 1)
        invstd = torch.rsqrt(var + ctx.eps)  # (C,)
        xhat = (input - channel_view(mean, ndim)) * channel_view(invstd, ndim)
        t_mean = channel_sum(t_input) / m  # (C,)
        mean_xhat_t = channel_sum(xhat * t_input) / m  # (C,)
        t_var = 2 * mean_xhat_t / invstd  # 2 mean((x - mean) t_x)
        t_xhat = standardized_tangent(t_input, xhat, channel_view(invstd, ndim), channel_view(t_mean, ndim),
                                      channel_view(mean_xhat_t, ndim))
        t_output = t_xhat if weight is None else t_xhat * channel_view(weight, ndim)
        if t_weight is not None:
            t_output = t_output + xhat * channel_view(t_weight, ndim)
        if t_bias is not None:
            t_output = t_output + channel_view(t_bias, ndim)
        return t_output, t_mean, t_var


@twinned
class BatchNormEval(TwinnedFunction):
    """Batch norm with fixed (running) statistics: an affine map per channel.

        x_hat = (x - running_mean) r,   r = 1 / sqrt(running_var + eps),   y = weight * x_hat + bias

    Shapes:  x (N, C, *), running_mean, running_var, weight, bias (C,)  ->  y (N, C, *)

    grad_x      = grad_y weight r                (N, C, *)   the statistics are constants here
    grad_weight = sum_{n,*} grad_y x_hat         (C,)
    grad_bias   = sum_{n,*} grad_y               (C,)
    t_y         = (t_x weight + (x - running_mean) t_weight) r + t_bias        (jvp)
    The running statistics are buffers, not parameters: they get no gradient and no tangent, as in
    torch (whose batch_norm refuses a running statistic that requires grad).

    Saves r, the weight and, where a gradient or t_y reads them, x and a copy of running_mean.
    Double backward needs nothing more: grad_x reads the weight, grad_weight reads x. grad_x is linear in
    grad_y and constant in x: zero_link keeps its graph to x, as torch's does (R4).
    """

    autocast = Autocast.FLOAT32_INSIDE  # as torch's kernels: in float32, y in x's dtype

    @staticmethod
    def forward(input, running_mean, running_var, weight, bias, eps):
        ndim = input.dim()
        scale = torch.rsqrt(running_var + eps) if weight is None else torch.rsqrt(running_var + eps) * weight
        shift = -running_mean * scale if bias is None else bias - running_mean * scale
        output = input * channel_view(scale, ndim)
        if may_overwrite():  # R3: under vmap the shift may be batched where the output is not
            output += channel_view(shift, ndim)
            return output
        return output + channel_view(shift, ndim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, running_mean, running_var, weight, bias, eps = inputs
        # x (zero_link's anchor, and for grad_weight) and a copy of running_mean (so a later training step may
        # update the buffer in place) only where a gradient or the jvp may read them; r is a function of the
        # buffer running_var alone: a tensor of zero derivative (R1).
        keep_mean = weight is not None and (ctx.needs_input_grad[3] or tangents_possible())
        keep_input = keep_mean or ctx.needs_input_grad[0] or tangents_possible()
        saved = (input if keep_input else None, running_mean.clone() if keep_mean else None,
                 torch.rsqrt(running_var + eps), weight)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_output):
        input, mean, invstd, weight = ctx.saved_tensors
        ndim = grad_output.dim()
        grad_input = grad_weight = grad_bias = None

        if ctx.needs_input_grad[0]:
            scale = invstd if weight is None else invstd * weight
            grad_input = zero_link(grad_output * channel_view(scale, ndim), input)  # (N, C, *)   R4: linear in x
        if weight is not None and ctx.needs_input_grad[3]:
            centered = input - channel_view(mean, ndim)  # ours: x_hat grad_y is built in it when allowed (R3)
            if may_overwrite(grad_output):
                grad_weight = channel_sum(centered.mul_(channel_view(invstd, ndim)).mul_(grad_output))  # (C,)
            else:
                grad_weight = channel_sum(centered * channel_view(invstd, ndim) * grad_output)
        if ctx.has_bias and ctx.needs_input_grad[4]:
            grad_bias = channel_sum(grad_output)  # (C,)
        return grad_input, None, None, grad_weight, grad_bias, None

    @staticmethod
    def jvp(ctx, t_input, _t_running_mean, _t_running_var, t_weight, t_bias, _t_eps):
        input, mean, invstd, weight = ctx.saved_tensors
        ndim = input.dim()
        t_input = torch.zeros_like(input) if t_input is None else t_input  # x without a tangent (gradcheck's test)
        t_scaled = t_input if weight is None else t_input * channel_view(weight, ndim)
        if weight is not None and t_weight is not None:
            t_scaled = t_scaled + (input - channel_view(mean, ndim)) * channel_view(t_weight, ndim)
        t_output = t_scaled * channel_view(invstd, ndim)
        return t_output if t_bias is None else t_output + channel_view(t_bias, ndim)


def tangents_possible() -> bool:
    """Whether a jvp may follow (a torch.func transform or a forward-AD level is active), where
    ``ctx.needs_input_grad`` says nothing: it is False for an input that carries only a tangent."""
    return transforms_active() or forward_ad._current_level >= 0


def batch_norm(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.batch_norm.

    In training the batch statistics normalise, and the running statistics (when given) are
    updated in place as torch does: r <- (1 - momentum) r + momentum s, with the *unbiased*
    batch variance for running_var. An empty batch gives an empty output and leaves them as
    they are; so does an empty 1-D input, which torch accepts too (taken as a batch of no
    examples of the channels the vectors have).
    """
    if input.dim() == 1 and input.numel() == 0:
        channels = next((v.numel() for v in (running_mean, running_var, weight, bias) if v is not None), 0)
        return batch_norm(input.view(0, channels), running_mean, running_var, weight, bias, training, momentum,
                          eps).view(0)
    if not _check_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps):
        return input.clone()  # no channels: an empty output, with a graph to the input, as torch's
    if not training:
        return BatchNormEval.call(input, running_mean, running_var, weight, bias, eps)

    output, mean, var = BatchNormTrain.call(input, weight, bias, eps)
    count = per_channel(input)
    if running_mean is not None and running_var is not None and count > 0:  # an empty batch leaves them as they are
        if transforms_active():
            below_differentiating_levels(update_running_stats, running_mean, running_var, mean, var, momentum, count)
        else:
            update_running_stats(running_mean, running_var, mean, var, momentum, count)
    return output


def update_running_stats(running_mean: torch.Tensor, running_var: torch.Tensor, mean: torch.Tensor,
                         var: torch.Tensor, momentum: float, count: int) -> None:
    """r <- (1 - momentum) r + momentum s, in place, for the batch's mean and its *unbiased* variance."""
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        running_var.mul_(1 - momentum).add_(var * (count / (count - 1)), alpha=momentum)  # unbiased


def below_differentiating_levels(update: Callable[..., object], *args: Any) -> None:
    """``update(*args)`` below the torch.func levels that differentiate (grad, vjp, jvp) at the top of the
    stack, on the values they wrap: those levels refuse an in-place update of a tensor captured from outside
    them (the buffers: "would mutate a captured Tensor"), while torch's batch_norm kernel updates its buffers
    below them, with the primal statistics. A vmap level stays: there, as in torch, the buffers must be
    batched like the input."""
    differentiating = (functorch.TransformType.Grad, functorch.TransformType.Jvp)
    popped = []
    try:
        while (top := functorch.peek_interpreter_stack()) is not None and top.key() in differentiating:
            args = tuple(unwrapped(a, top.level()) for a in args)
            popped.append(functorch.pop_dynamic_layer_stack())
        update(*args)
    finally:
        while popped:
            functorch.push_dynamic_layer_stack(popped.pop())


def unwrapped(value: Any, level: int) -> Any:
    """``value`` without its wrapper of the torch.func ``level`` (the value itself where it has none)."""
    if isinstance(value, torch.Tensor) and functorch.is_gradtrackingtensor(value) \
            and functorch.maybe_get_level(value) == level:
        return functorch.get_unwrapped(value)
    return value


def _check_batch_norm(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                      weight: torch.Tensor | None, bias: torch.Tensor | None, training: bool, momentum: float | None,
                      eps: float) -> int:
    """batch_norm's arguments, as torch checks them, with messages that name the fix; returns C."""
    if not input.is_floating_point():
        raise TypeError(f"batch_norm: input of dtype {input.dtype} is not floating point; convert it, e.g. "
                        "input.float()")
    if input.dim() < 2:
        raise ValueError(f"batch_norm: expected input of shape (N, C, *), got {tuple(input.shape)}; a single "
                         "example of C features is input.unsqueeze(0)")
    channels = input.shape[1]
    for name, vector in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                         ("bias", bias)):
        if vector is not None and vector.shape != (channels,):
            raise ValueError(
                f"batch_norm: input of shape {tuple(input.shape)} has {channels} channels (dim 1), but {name} has "
                f"shape {tuple(vector.shape)}; build the layer with num_features={channels}"
            )
    if eps < 0 or (training and eps == 0):
        raise ValueError(f"batch_norm: eps must be positive in training and non-negative otherwise, got {eps}")
    if (running_mean is None) != (running_var is None):
        given, missing = ("running_mean", "running_var") if running_var is None else ("running_var", "running_mean")
        raise ValueError(f"batch_norm: {given} is given but {missing} is None; pass both running statistics, or "
                         "neither (training=True then normalises with the batch's own statistics alone)")
    if not training:
        if running_mean is None:
            raise ValueError("batch_norm: running_mean and running_var are needed when training=False; "
                             "pass training=True to normalise with the batch's own statistics")
    elif per_channel(input) == 1:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got input of shape "
                         f"{tuple(input.shape)}; a batch of one example has no variance to normalise by")
    elif running_mean is not None and not isinstance(momentum, (int, float)):
        raise TypeError(f"batch_norm: momentum must be a number, got {momentum!r}; nn.BatchNorm's momentum=None "
                        "(a cumulative average) passes 1 / num_batches_tracked here")
    return channels
