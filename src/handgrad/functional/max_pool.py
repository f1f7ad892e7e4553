"""2-D max pooling, and max pooling fused with the ReLU before it (what LeNet5 runs).

Max pooling routes each window's gradient to the one input that won the window, which the forward
records as a flat index: the backward scatters grad_y to the winners, the jvp gathers the tangent
at them. The derivative is piecewise constant, so the backward's own derivative with respect to x is
zero, and under create_graph it keeps a graph to x of zero derivative, as torch's does (zero_link).

Reference: CS231n "max_pool_forward_naive / max_pool_backward_naive"; torch.nn.functional.max_pool2d
(the same window arithmetic and defaults).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as torch_F

from handgrad.functional.activations import passes
from handgrad.functional.function import (
    Autocast,
    TwinnedFunction,
    may_overwrite,
    transforms_active,
    twinned,
    zero_link,
)
from handgrad.functional.windows import IntPair, Window, pool_window, window_views

# --------------------------------------------------------------------------- max_pool2d


@twinned
class MaxPool2d(TwinnedFunction):
    """y[n, c, h, w] = max over the window (s*h - p + d*i, s*w - p + d*j), 0 <= i < kH, 0 <= j < kW,
    of x, with padding counted as -inf (so a window's maximum is always a real input)

    Shapes:  x (N, C, H, W)  ->  y (N, C, H_out, W_out), and the winners' flat indices idx into H * W (same shape)

    dy/dx = 1 at the window's winner, its first maximal input (row-major), 0 elsewhere, so each
    window sends its gradient to its winner; an input that wins several overlapping windows
    collects them all:
    grad_x[n, c].flat[idx[n, c, h, w]] += grad_y[n, c, h, w]      (N, C, H, W)
    t_y[n, c, h, w] = t_x[n, c].flat[idx[n, c, h, w]]              (jvp: the tangent at the winner)
    Double backward: grad_x is linear in grad_y and constant in x (d grad_x / dx = 0): linked to x by
    zero_link, as torch's max_pool2d_with_indices_backward(grad, x, ...) is. So x is saved, with idx.

    On CPU the forward finds y and the winners itself (max_pool_windows) when the windows lie inside
    the input, as in LeNet-5, where torch's kernel takes 4x as long (scripts/benchmark.py, README
    Performance). Windows that reach into padding go to torch's kernel, which never lets the padding
    win; so does CUDA, where that kernel is one launch against max_pool_windows' four per window offset,
    and so does a torch.func transform (max_pool_windows' out= ops have no batching rule).
    """

    autocast = Autocast.INPUT_DTYPE  # as torch's: runs in its input's dtype

    @staticmethod
    def forward(input, window):
        return max_pool_with_indices(input, window)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, window = inputs
        _, indices = output
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(input, indices)
        ctx.save_for_forward(input, indices)
        ctx.disjoint = windows_disjoint(window)

    @staticmethod
    def backward(ctx, grad_output, _grad_indices):
        input, indices = ctx.saved_tensors
        grad_input = to_winners(grad_output, indices, input.shape, ctx.disjoint)
        return zero_link(grad_input, input), None

    @staticmethod
    def jvp(ctx, t_input, _t_window):
        _, indices = ctx.saved_tensors
        return at_winners(t_input, indices), None


def max_pool_with_indices(input: torch.Tensor, window: Window) -> tuple[torch.Tensor, torch.Tensor]:
    """Each window's maximum and the flat index into H * W of its winner: by max_pool_windows on CPU when
    the windows lie inside the input, else by torch's kernel (see MaxPool2d)."""
    w = window
    out_size = w.out_size(input.shape[2], input.shape[3])
    inside = not any(w.padding) and all((o - 1) * s + d * (k - 1) + 1 <= size for o, s, d, k, size
                                        in zip(out_size, w.stride, w.dilation, w.kernel, input.shape[2:], strict=True))
    if (inside and input.device.type == "cpu" and input.shape[2] * input.shape[3] <= EXACT_FLOAT32_INDICES
            and not transforms_active()):
        return max_pool_windows(input, w.kernel, w.stride, w.dilation, out_size)
    return torch_F.max_pool2d(input, w.kernel, w.stride, w.padding, w.dilation, w.ceil_mode, return_indices=True)


def windows_disjoint(window: Window) -> bool:
    """Whether no two windows share an input (stride >= the kernel's span on both axes): then each
    input wins one window at most, and to_winners can scatter instead of adding."""
    return all(s >= d * (k - 1) + 1 for k, s, d in zip(window.kernel, window.stride, window.dilation, strict=True))


def to_winners(grad_output: torch.Tensor, indices: torch.Tensor, input_shape: Sequence[int],
               disjoint: bool) -> torch.Tensor:
    """grad_x[n, c].flat[idx[n, c, h, w]] += grad_y[n, c, h, w]: each window's gradient to its winner.
    Into a new zeros tensor in place where may_overwrite allows, out of place otherwise (create_graph, vmap)."""
    n, c, height, width = input_shape
    windows = indices.shape[2] * indices.shape[3]  # H_out * W_out, given: reshape(n, c, -1) fails when n = 0
    flat_indices = indices.reshape(n, c, windows)
    flat_grad = grad_output.reshape(n, c, windows)
    zeros = grad_output.new_zeros(n, c, height * width)
    if not may_overwrite(grad_output):
        return zeros.scatter_add(2, flat_indices, flat_grad).view(n, c, height, width)
    if disjoint:  # every index distinct: a plain scatter, faster than adding
        zeros.scatter_(2, flat_indices, flat_grad)
    else:  # an input that wins several windows collects them all
        zeros.scatter_add_(2, flat_indices, flat_grad)
    return zeros.view(n, c, height, width)


def at_winners(t_input: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """t_y[n, c, h, w] = t_x[n, c].flat[idx[n, c, h, w]]: the tangent of each window's winner."""
    n, c, out_h, out_w = indices.shape
    flat_input = t_input.reshape(n, c, t_input.shape[2] * t_input.shape[3])
    return flat_input.gather(2, indices.reshape(n, c, out_h * out_w)).view(n, c, out_h, out_w)


EXACT_FLOAT32_INDICES = 2 ** 24  # max_pool_windows counts flat indices in float32: exact up to here


def max_pool_windows(input, kernel, stride, dilation, out_size):
    """Each window's maximum and the flat index into H * W of its first maximal element, for windows
    inside the input, as a running maximum over the K = kH * kW window offsets t (row-major):

        m_0 = v_0,   m_t = max(m_{t-1}, v_t),   y = m_{K-1}        (v_t: window_views, elementwise)

    The winner is the last offset that beat the running maximum, v_t > m_{t-1} (ties stay with the
    earlier element, as torch's kernel keeps them); offsets grow with t, so its position relative
    to the window's corner is  off = max_t [v_t > m_{t-1}] * (d*i*W + d*j),  and idx = corner + off.
    A NaN makes the window's maximum NaN, as in torch, but its index (so its gradient) stays where
    the comparisons leave it, where torch's kernel points at the NaN.
    """
    (k_h, k_w), (s_h, s_w), (d_h, d_w), (o_h, o_w) = kernel, stride, dilation, out_size
    height, width = input.shape[2:]
    if (s_h, s_w) == (k_h, k_w) and (d_h, d_w) == (1, 1):
        # Windows that tile the input: one copy puts each offset's elements side by side, in memory
        # order, where the strided views would make every elementwise op below 5-8x slower on CPU.
        n, c = input.shape[:2]
        tiles = input[:, :, :o_h * k_h, :o_w * k_w].reshape(n, c, o_h, k_h, o_w, k_w)
        views = tiles.permute(3, 5, 0, 1, 2, 4).reshape(k_h * k_w, n, c, o_h, o_w).unbind(0)
    else:
        views = window_views(input, kernel, stride, dilation, out_size)

    def relative(t):  # the flat offset of window offset t from the window's (0, 0)
        i, j = divmod(t, k_w)
        return d_h * i * width + d_w * j

    output = views[0].clone(memory_format=torch.contiguous_format)  # m_0
    offset = torch.zeros(output.shape, dtype=torch.float32, device=input.device)  # exact to 2^24
    beats = torch.empty_like(offset)
    for t, view in enumerate(views[1:], start=1):
        torch.gt(view, output, out=beats)  # [v_t > m_{t-1}] as 0 / 1: 3x faster on CPU than a bool tensor
        torch.maximum(offset, beats.mul_(relative(t)), out=offset)
        torch.maximum(output, view, out=output)  # m_t
    rows = torch.arange(o_h, dtype=torch.float32, device=input.device) * (s_h * width)
    columns = torch.arange(o_w, dtype=torch.float32, device=input.device) * s_w
    corner = rows.unsqueeze(1) + columns  # (H_out, W_out): the flat index of each window's (0, 0)
    indices = offset.add_(corner).long()
    if input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous():
        # torch's kernel keeps a channels-last input's layout in its outputs; so do these
        output, indices = (t.contiguous(memory_format=torch.channels_last) for t in (output, indices))
    return output, indices


def max_pool2d(input: torch.Tensor, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
               dilation: IntPair = 1, ceil_mode: bool = False, return_indices: bool = False
               ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Hand-written twin of torch.nn.functional.max_pool2d (stride defaults to kernel_size)."""
    window = pool_window("max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode)
    if input.dim() == 3:  # a single image (C, H, W) is a batch of one
        output, indices = MaxPool2d.call(input.unsqueeze(0), window)
        output, indices = output.squeeze(0), indices.squeeze(0)
    else:
        output, indices = MaxPool2d.call(input, window)
    return (output, indices) if return_indices else output


# --------------------------------------------------------------------------- max_pool2d_relu


@twinned
class MaxPool2dReLU(TwinnedFunction):
    """y = relu(max_pool2d(x)) = max_pool2d(relu(x))      x (N, C, H, W)  ->  y (N, C, H_out, W_out)

    ReLU is monotone, so it commutes with a window's maximum: pooling first runs ReLU on a quarter
    of the elements (2 x 2 windows) and keeps no full-size mask. The winner of a window is the same
    either way when its maximum is positive (ReLU leaves positive values alone, and zeroes are
    smaller); when it is not, ReLU's derivative there is 0 and the window sends nothing:
    grad_x[n, c].flat[idx[n, c, h, w]] += grad_y[n, c, h, w] * passes(y[n, c, h, w])    (N, C, H, W)
    t_y[n, c, h, w] = t_x[n, c].flat[idx[n, c, h, w]] * passes(y[n, c, h, w])           (jvp)
    with passes(y) = [y > 0] (ReLU's derivative read off its output, activations.passes). Exactly what
    autograd gives max_pool2d(relu(x)) for finite upstream gradients (an inf or nan one at a window
    with y = 0: see ReLU).
    Double backward: passes(y) has derivative 0 but a graph to y, a differentiable output, so grad_x
    keeps a graph to x of zero derivative, as torch's has (no zero_link needed).

    Saves the indices and y, a quarter of the size of the ReLU output and indices autograd keeps.
    """

    autocast = Autocast.INPUT_DTYPE

    @staticmethod
    def forward(input, window):
        pooled, indices = max_pool_with_indices(input, window)
        return (pooled.relu_() if may_overwrite() else pooled.relu()), indices  # pooled: a new tensor

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, window = inputs
        output, indices = output
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(output, indices)
        ctx.save_for_forward(output, indices)
        ctx.input_shape = input.shape
        ctx.disjoint = windows_disjoint(window)

    @staticmethod
    def backward(ctx, grad_output, _grad_indices):
        output, indices = ctx.saved_tensors
        grad_pooled = grad_output * passes(output)  # ReLU's backward, on the pooled elements
        return to_winners(grad_pooled, indices, ctx.input_shape, ctx.disjoint), None

    @staticmethod
    def jvp(ctx, t_input, _t_window):
        output, indices = ctx.saved_tensors
        return at_winners(t_input, indices) * passes(output), None


def max_pool2d_relu(input: torch.Tensor, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
                    dilation: IntPair = 1, ceil_mode: bool = False) -> torch.Tensor:
    """relu(max_pool2d(input, ...)) as one op: max_pool2d's arguments; equal, value and gradient, to
    max_pool2d(relu(input), ...), the usual order in a convolutional network (LeNet5 uses it)."""
    window = pool_window("max_pool2d_relu", input, kernel_size, stride, padding, dilation, ceil_mode)
    if input.dim() == 3:  # a single image (C, H, W) is a batch of one
        return MaxPool2dReLU.call(input.unsqueeze(0), window)[0].squeeze(0)
    output, _ = MaxPool2dReLU.call(input, window)
    return output
