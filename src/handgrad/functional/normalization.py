"""Batch normalisation (statistics per channel, over the batch) and layer normalisation
(statistics per example, over its last dimensions).

Both standardise, x_hat = (x - mean) / sqrt(var + eps), then scale and shift by learned
weight and bias. While the statistics come from the batch itself, they depend on every x,
so the gradient has three chain-rule terms: through x_hat directly, through the mean and
through the variance. They collapse to

    grad_x = invstd * (g - mean(g) - x_hat * mean(g * x_hat)),    g = grad_y * weight

with the means taken over the same elements as the statistics (standardized_grad).
Tensors of the input's size are costly to allocate on CPU, so the intermediates the op
owns are updated in place.

Reference: Ioffe & Szegedy, "Batch Normalization" (ICML 2015), section 3; Ba, Kiros &
Hinton, "Layer Normalization" (2016); CS231n "batchnorm_backward_alt".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from handgrad.functional.function import Autocast, TwinnedFunction, twinned


def standardized_grad(grad_xhat, xhat, invstd, mean_g, mean_g_xhat):
    """grad_x of x_hat = (x - mean) * invstd, where mean and var = mean((x - mean)^2) come from the
    m elements that x is standardised with. With g = dL/dx_hat and means over those m elements:

        (1) through x_hat directly:  g * invstd
        (2) through the mean:        dL/dmean = -invstd * sum(g)   (var's share is 0: sum(x - mean) = 0),
                                     dmean/dx = 1/m                 ->  -invstd * mean(g)
        (3) through the variance:    dL/dvar = -invstd^3 / 2 * sum(g * (x - mean)),
                                     dvar/dx = 2 (x - mean) / m     ->  -invstd * x_hat * mean(g * x_hat)

    ``mean_g`` and ``mean_g_xhat`` come precomputed, shaped to broadcast. Writes into ``xhat``'s memory
    (a temporary of the caller's) instead of allocating three more tensors of the input's size.
    """
    grad_input = xhat.mul_(-mean_g_xhat)  # (3), before its factor invstd
    grad_input += grad_xhat  # (1)
    grad_input -= mean_g  # (2)
    return grad_input.mul_(invstd)


# --------------------------------------------------------------------------- batch_norm


def channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-channel vector (C,) shaped (1, C, 1, ...) to broadcast against an (N, C, *) input."""
    return t.view(1, -1, *[1] * (ndim - 2))


def channel_sum(t: torch.Tensor) -> torch.Tensor:
    """sum_{n,*} t[n, c, *] for an (N, C, *) tensor -> (C,); over n first, then the rest, which is
    2-3x faster on CPU than t.sum((0, 2, 3)) in one go."""
    return t.sum(0).reshape(t.shape[1], -1).sum(1)


@twinned
class BatchNormTrain(TwinnedFunction):
    """Batch norm with the batch's own statistics, per channel c over the m = N * (H * W ...) elements:

        mean = (1/m) sum x,   var = (1/m) sum (x - mean)^2   (biased),   invstd = 1 / sqrt(var + eps)
        x_hat = (x - mean) * invstd,   y = weight * x_hat + bias

    Shapes:  x (N, C, *), weight (C,), bias (C,)  ->  y (N, C, *), and mean, var (C,) for the running
    statistics (not differentiable).

    grad_x      = weight * invstd * (grad_y - mean(grad_y) - x_hat * mean(grad_y * x_hat))        (N, C, *)
                  the three chain-rule terms of standardized_grad with g = grad_y * weight; weight
                  is constant over a channel's m elements, so it leaves the means
    grad_weight = sum_{n,*} grad_y * x_hat                                                  (C,)
    grad_bias   = sum_{n,*} grad_y                                                          (C,)

    Saves x, weight and the per-channel mean and invstd, as autograd does.
    """

    autocast = Autocast.FLOAT32_INSIDE  # as torch's kernels: statistics in float32, y in x's dtype
    once_differentiable = True  # first order only: reads mean, var saved non-differentiable (R1); in place (R3)

    @staticmethod
    def forward(input, weight, bias, eps):
        ndim, count = input.dim(), input.numel() // input.shape[1]  # m elements per channel
        mean = channel_sum(input) / count  # (C,)
        centered = input - channel_view(mean, ndim)  # (N, C, *)
        var = channel_sum(centered * centered) / count  # (C,)  two passes: no cancellation as in E[x^2] - E[x]^2
        scale = torch.rsqrt(var + eps) if weight is None else torch.rsqrt(var + eps) * weight
        output = centered.mul_(channel_view(scale, ndim))  # in place: centered is ours and done with
        if bias is not None:
            output += channel_view(bias, ndim)
        return output, mean, var

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, eps = inputs
        _, mean, var = output
        ctx.mark_non_differentiable(mean, var)
        ctx.save_for_backward(input, weight, mean, torch.rsqrt(var + eps))
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_output, _grad_mean, _grad_var):
        input, weight, mean, invstd = ctx.saved_tensors
        ndim, count = input.dim(), input.numel() // input.shape[1]  # m elements per channel
        xhat = (input - channel_view(mean, ndim)).mul_(channel_view(invstd, ndim))  # (N, C, *)
        sum_grad = channel_sum(grad_output)  # (C,)
        sum_grad_xhat = channel_sum(grad_output * xhat)  # (C,)
        grad_input = grad_weight = grad_bias = None

        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = sum_grad_xhat
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = sum_grad
        if ctx.needs_input_grad[0]:
            scale = invstd if weight is None else invstd * weight
            grad_input = standardized_grad(grad_output, xhat, channel_view(scale, ndim),
                                           channel_view(sum_grad / count, ndim),
                                           channel_view(sum_grad_xhat / count, ndim))  # (N, C, *)
        return grad_input, grad_weight, grad_bias, None


@twinned
class BatchNormEval(TwinnedFunction):
    """Batch norm with fixed (running) statistics: an affine map per channel.

        x_hat = (x - running_mean) * invstd,   invstd = 1 / sqrt(running_var + eps),   y = weight * x_hat + bias

    Shapes:  x (N, C, *), running_mean, running_var, weight, bias (C,)  ->  y (N, C, *)

    grad_x      = grad_y * weight * invstd       (N, C, *)   the statistics are constants here
    grad_weight = sum_{n,*} grad_y * x_hat       (C,)
    grad_bias   = sum_{n,*} grad_y               (C,)
    The running statistics are buffers, not parameters: they get no gradient.

    Saves x (only for grad_weight) and per-channel vectors.
    """

    autocast = Autocast.FLOAT32_INSIDE  # as torch's kernels: in float32, y in x's dtype
    once_differentiable = True  # first order only: its backward updates x_hat in place (R3); no jvp yet

    @staticmethod
    def forward(input, running_mean, running_var, weight, bias, eps):
        ndim = input.dim()
        scale = torch.rsqrt(running_var + eps) if weight is None else torch.rsqrt(running_var + eps) * weight
        shift = -running_mean * scale if bias is None else bias - running_mean * scale
        output = input * channel_view(scale, ndim)
        output += channel_view(shift, ndim)
        return output

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, running_mean, running_var, weight, bias, eps = inputs
        needs_w = weight is not None and ctx.needs_input_grad[3]
        # Copies of the statistics, so a later training step may update the buffers in place.
        ctx.save_for_backward(input if needs_w else None, running_mean.clone() if needs_w else None,
                              torch.rsqrt(running_var + eps), weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_output):
        input, mean, invstd, weight = ctx.saved_tensors
        ndim = grad_output.dim()
        grad_input = grad_weight = grad_bias = None

        if ctx.needs_input_grad[0]:
            scale = invstd if weight is None else invstd * weight
            grad_input = grad_output * channel_view(scale, ndim)  # (N, C, *)
        if weight is not None and ctx.needs_input_grad[3]:
            xhat = (input - channel_view(mean, ndim)).mul_(channel_view(invstd, ndim))
            grad_weight = channel_sum(xhat.mul_(grad_output))  # (C,)
        if ctx.has_bias and ctx.needs_input_grad[4]:
            grad_bias = channel_sum(grad_output)  # (C,)
        return grad_input, None, None, grad_weight, grad_bias, None


def _check_channels(input, **vectors):
    if input.dim() < 2:
        raise ValueError(f"batch_norm: expected input of shape (N, C, *), got {tuple(input.shape)}")
    channels = input.shape[1]
    for name, vector in vectors.items():
        if vector is not None and vector.shape != (channels,):
            raise ValueError(
                f"batch_norm: input of shape {tuple(input.shape)} has {channels} channels (dim 1), but {name} has "
                f"shape {tuple(vector.shape)}; build the layer with num_features={channels}"
            )


def batch_norm(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.batch_norm.

    In training the batch statistics normalise, and the running statistics (when given) are
    updated in place as torch does: r <- (1 - momentum) r + momentum s, with the *unbiased*
    batch variance for running_var.
    """
    _check_channels(input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    if eps < 0 or (training and eps == 0):
        raise ValueError(f"batch_norm: eps must be positive in training and non-negative otherwise, got {eps}")
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: running_mean and running_var are needed when training=False; "
                             "pass training=True to normalise with the batch's own statistics")
        return BatchNormEval.call(input, running_mean, running_var, weight, bias, eps)

    count = input.numel() // input.shape[1]  # elements per channel
    if count <= 1:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got input of shape "
                         f"{tuple(input.shape)}")
    output, mean, var = BatchNormTrain.call(input, weight, bias, eps)
    with torch.no_grad():
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        if running_var is not None:
            running_var.mul_(1 - momentum).add_(var * (count / (count - 1)), alpha=momentum)  # unbiased
    return output


# --------------------------------------------------------------------------- layer_norm


@twinned
class LayerNorm(TwinnedFunction):
    """Layer norm over the last k dimensions (their D elements form one row):

        mean, var = per-row mean and biased variance,   invstd = 1 / sqrt(var + eps)
        x_hat = (x - mean) * invstd,   y = weight * x_hat + bias     (weight, bias broadcast over the rows)

    Shapes:  x (*, D...), weight (D...), bias (D...)  ->  y (*, D...);   mean, invstd (*, 1...)

    grad_x      = invstd * (g - mean(g) - x_hat * mean(g * x_hat)),  g = grad_y * weight,
                  means over each row: the three chain-rule terms of standardized_grad
    grad_weight = sum_{*} grad_y * x_hat        (D...)   summed over the rows
    grad_bias   = sum_{*} grad_y                (D...)

    Saves x, weight and the per-row mean and invstd, as autograd does.
    """

    autocast = {"cuda": Autocast.FLOAT32, "cpu": Autocast.FLOAT32_INSIDE}  # as torch's layer_norm
    once_differentiable = True  # first order only: reads mean, invstd saved non-differentiable (R1); in place (R3)

    @staticmethod
    def forward(input, normalized_ndim, weight, bias, eps):
        dims = tuple(range(-normalized_ndim, 0))
        mean = input.mean(dims, keepdim=True)  # (*, 1...)
        centered = input - mean  # (*, D...)
        invstd = torch.rsqrt((centered * centered).mean(dims, keepdim=True) + eps)  # (*, 1...)
        output = centered.mul_(invstd)  # in place: centered is ours and done with
        if weight is not None:
            output *= weight
        if bias is not None:
            output += bias
        return output, mean, invstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, normalized_ndim, weight, bias, eps = inputs
        _, mean, invstd = output
        ctx.mark_non_differentiable(mean, invstd)
        ctx.save_for_backward(input, weight, mean, invstd)
        ctx.normalized_ndim = normalized_ndim
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_output, _grad_mean, _grad_invstd):
        input, weight, mean, invstd = ctx.saved_tensors
        dims = tuple(range(-ctx.normalized_ndim, 0))  # within a row
        rows = tuple(range(input.dim() - ctx.normalized_ndim))  # across rows
        xhat = (input - mean).mul_(invstd)  # (*, D...)
        grad_input = grad_weight = grad_bias = None

        if weight is not None and ctx.needs_input_grad[2]:
            grad_weight = (grad_output * xhat).sum(rows)  # (D...)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = grad_output.sum(rows)  # (D...)
        if ctx.needs_input_grad[0]:
            grad_xhat = grad_output if weight is None else grad_output * weight  # g
            grad_input = standardized_grad(grad_xhat, xhat, invstd, grad_xhat.mean(dims, keepdim=True),
                                           (grad_xhat * xhat).mean(dims, keepdim=True))  # (*, D...)
        return grad_input, None, grad_weight, grad_bias, None


def layer_norm(input: torch.Tensor, normalized_shape: int | Sequence[int], weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.layer_norm."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    trailing = tuple(input.shape[input.dim() - len(shape):]) if 0 < len(shape) <= input.dim() else None
    if trailing != shape:
        raise ValueError(
            f"layer_norm: normalized_shape {shape} must equal the last {len(shape)} dimension(s) of the input, but "
            f"input has shape {tuple(input.shape)}; pass the input's trailing shape, e.g. "
            f"normalized_shape={tuple(input.shape[-1:])}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"layer_norm: {name} of shape {tuple(t.shape)} must have normalized_shape {shape}")
    output, _, _ = LayerNorm.call(input, len(shape), weight, bias, eps)
    return output
