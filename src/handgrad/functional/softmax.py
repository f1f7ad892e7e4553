"""softmax and log_softmax along one dimension.

Both derivatives are written from the forward's output y (a differentiable output of the node, so
double backward goes through it). Neither Jacobian is diagonal: a gradient or tangent at one
element moves every other element of its slice along ``dim``; the sums below run over that slice.

Reference: CS231n "softmax_loss"; torch.nn.functional.softmax and log_softmax.
"""

from __future__ import annotations

import torch

from handgrad.functional.autocast import autocast_on_any_device, without_autocast
from handgrad.functional.function import Autocast, TwinnedFunction, twinned


def shifted(input: torch.Tensor, dim: int) -> torch.Tensor:
    """x - max_dim x (the max kept as a size-1 dim): every exponent <= 0. A slice along an empty ``dim``
    has no max (amax refuses it) and nothing to normalise: x itself, so the result is empty like torch's."""
    if input.dim() and input.shape[dim] == 0:
        return input
    return input - input.amax(dim, keepdim=True)


@twinned
class Softmax(TwinnedFunction):
    """y_i = e^(x_i - m) / sum_j e^(x_j - m),  m = max_j x_j      along ``dim``;  x (*)  ->  y (*)

    Subtracting the max changes nothing mathematically and keeps every exponent <= 0.
    Jacobian: dy_i/dx_k = y_i ([i = k] - y_k), so
    grad_x = y * (grad_y - sum_j grad_y_j y_j)    (saves the output y)
    t_y    = y * (t_x - sum_j y_j t_x_j)          (jvp: the same symmetric Jacobian applied to t_x)
    """

    autocast = {"cuda": Autocast.FLOAT32, "cpu": Autocast.FLOAT32_INSIDE}  # as torch's softmax

    @staticmethod
    def forward(input, dim):
        e = torch.exp(shifted(input, dim))
        return e / e.sum(dim, keepdim=True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)
        ctx.dim = inputs[1]

    @staticmethod
    def backward(ctx, grad_output):
        (y,) = ctx.saved_tensors
        return y * (grad_output - (grad_output * y).sum(ctx.dim, keepdim=True)), None

    @staticmethod
    def jvp(ctx, t_input, _t_dim):
        (y,) = ctx.saved_tensors
        return y * (t_input - (t_input * y).sum(ctx.dim, keepdim=True))


@twinned
class LogSoftmax(TwinnedFunction):
    """y_i = x_i - logsumexp(x) = (x_i - m) - log sum_j e^(x_j - m),  m = max_j x_j     x (*)  ->  y (*)

    dy_i/dx_k = [i = k] - softmax(x)_k = [i = k] - e^(y_k), so
    grad_x = grad_y - e^y * sum_j grad_y_j          (saves the output y)
    t_y    = t_x - sum_j e^(y_j) t_x_j              (jvp: the transposed Jacobian's rows)
    """

    autocast = {"cuda": Autocast.FLOAT32, "cpu": Autocast.FLOAT32_INSIDE}  # as torch's log_softmax

    @staticmethod
    def forward(input, dim):
        x = shifted(input, dim)
        return x - torch.log(torch.exp(x).sum(dim, keepdim=True))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)
        ctx.dim = inputs[1]

    @staticmethod
    def backward(ctx, grad_output):
        (y,) = ctx.saved_tensors
        return grad_output - torch.exp(y) * grad_output.sum(ctx.dim, keepdim=True), None

    @staticmethod
    def jvp(ctx, t_input, _t_dim):
        (y,) = ctx.saved_tensors
        return t_input - (torch.exp(y) * t_input).sum(ctx.dim, keepdim=True)


def softmax(input: torch.Tensor, dim: int | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.softmax (``dim`` is required; ``dtype`` as in torch)."""
    return _call(Softmax, "softmax", input, dim, dtype)


def log_softmax(input: torch.Tensor, dim: int | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.log_softmax (``dim`` is required; ``dtype`` as in torch)."""
    return _call(LogSoftmax, "log_softmax", input, dim, dtype)


def _call(function: type[TwinnedFunction], name: str, input: torch.Tensor, dim: int | None,
          dtype: torch.dtype | None) -> torch.Tensor:
    """``function`` along ``dim``, with torch's meaning of ``dtype``: the input is cast to it first (a cast
    autograd records, so the gradient comes back in the input's dtype) and the op runs in it, also under
    autocast, whose own cast it replaces (CUDA autocast's softmax runs in float32 only without a dtype)."""
    if dim is None:
        raise ValueError(f"{name}: pass dim explicitly, e.g. {name}(x, dim=-1) to normalise over the last axis")
    if not -input.dim() <= dim < max(input.dim(), 1):
        raise IndexError(f"{name}: dim={dim} is out of range for an input of shape {tuple(input.shape)}")
    if dtype is None:
        if not input.is_floating_point():
            raise TypeError(f"{name}: input of dtype {input.dtype} is not floating point; pass dtype=torch.float32 "
                            "(the input is then cast to it) or convert the input")
        return function.call(input, dim)
    if not dtype.is_floating_point:
        raise TypeError(f"{name}: dtype={dtype} is not a floating dtype; pass e.g. dtype=torch.float32")
    input = input.to(dtype)
    if autocast_on_any_device() and torch.is_autocast_enabled(input.device.type):
        return without_autocast(input.device.type, function.call, input, dim)
    return function.call(input, dim)
