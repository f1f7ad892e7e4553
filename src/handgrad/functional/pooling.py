"""2-D max and average pooling.

Max pooling routes each window's gradient to the one input that won the window, which the
forward records as a flat index; average pooling spreads it evenly over the window. Both
see a window through one strided view per window offset (window_views): max pooling takes a
running maximum over them, average pooling adds its share to each.

Reference: CS231n "max_pool_forward_naive / max_pool_backward_naive";
torch.nn.functional.max_pool2d and avg_pool2d (the same window arithmetic and defaults).
"""

from __future__ import annotations

import torch
import torch.nn.functional as torch_F

from handgrad.functional.conv import IntPair, pair
from handgrad.functional.function import Autocast, TwinnedFunction, twinned

# --------------------------------------------------------------------------- max_pool2d


@twinned
class MaxPool2d(TwinnedFunction):
    """y[n, c, h, w] = max over the window (s*h - p + d*i, s*w - p + d*j), 0 <= i < kH, 0 <= j < kW,
    of x, with padding counted as -inf (so a window's maximum is always a real input)

    Shapes:  x (N, C, H, W)  ->  y (N, C, H_out, W_out), and the winners' flat indices into H * W (same shape)

    dy/dx = 1 at the window's winner, its first maximal input (row-major), 0 elsewhere, so each
    window sends its gradient to its winner; an input that wins several overlapping windows
    collects them all:
    grad_x[n, c].flat[idx[n, c, h, w]] += grad_y[n, c, h, w]      (N, C, H, W)

    Saves only the int64 indices and the input's shape, not the input. On CPU the forward finds
    y and the winners itself (max_pool_windows) when the windows lie inside the input, as in
    LeNet-5, where torch's kernel takes 4x as long (scripts/benchmark.py, README Performance).
    Windows that reach into padding go to torch's kernel, which never lets the padding win; so
    does CUDA, where that kernel is one launch against max_pool_windows' four per window offset.
    """

    autocast = Autocast.INPUT_DTYPE  # as torch's: runs in its input's dtype
    once_differentiable = True  # first order only: saves no input to link to (R4); out= ops defy vmap

    @staticmethod
    def forward(input, kernel_size, stride, padding, dilation, ceil_mode):
        return max_pool_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, kernel_size, stride, _, dilation, _ = inputs
        _, indices = output
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(indices)
        ctx.input_shape = input.shape
        ctx.disjoint = windows_disjoint(kernel_size, stride, dilation)

    @staticmethod
    def backward(ctx, grad_output, _grad_indices):
        (indices,) = ctx.saved_tensors
        return to_winners(grad_output, indices, ctx.input_shape, ctx.disjoint), None, None, None, None, None


def max_pool_with_indices(input, kernel, stride, padding, dilation, ceil_mode):
    """Each window's maximum and the flat index into H * W of its winner: by max_pool_windows on CPU when
    the windows lie inside the input, else by torch's kernel (see MaxPool2d)."""
    out_size = tuple(pooled_size(size, k, s, p, d, ceil_mode)
                     for size, k, s, p, d in zip(input.shape[2:], kernel, stride, padding, dilation, strict=True))
    inside = not any(padding) and all((o - 1) * s + d * (k - 1) + 1 <= size for o, s, d, k, size
                                      in zip(out_size, stride, dilation, kernel, input.shape[2:], strict=True))
    if inside and input.device.type == "cpu" and input.shape[2] * input.shape[3] <= EXACT_FLOAT32_INDICES:
        return max_pool_windows(input, kernel, stride, dilation, out_size)
    return torch_F.max_pool2d(input, kernel, stride, padding, dilation, ceil_mode, return_indices=True)


def windows_disjoint(kernel, stride, dilation) -> bool:
    """Whether no two windows share an input (stride >= the kernel's span on both axes): then each
    input wins one window at most, and to_winners can scatter instead of adding."""
    return all(s >= d * (k - 1) + 1 for k, s, d in zip(kernel, stride, dilation, strict=True))


def to_winners(grad_output, indices, input_shape, disjoint: bool) -> torch.Tensor:
    """grad_x[n, c].flat[idx[n, c, h, w]] += grad_y[n, c, h, w]: each window's gradient to its winner."""
    n, c, height, width = input_shape
    grad_input = grad_output.new_zeros(n, c, height * width)
    if disjoint:  # every index distinct: a plain scatter, faster than adding
        grad_input.scatter_(2, indices.flatten(2), grad_output.flatten(2))
    else:  # an input that wins several windows collects them all
        grad_input.scatter_add_(2, indices.flatten(2), grad_output.flatten(2))
    return grad_input.view(n, c, height, width)


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


def window_views(x: torch.Tensor, kernel, stride, dilation, out_size) -> list[torch.Tensor]:
    """One strided view of ``x`` (N, C, H, W) per window offset (i, j), in row-major order:

        view[i * kW + j][n, c, h, w] = x[n, c, s*h + d*i, s*w + d*j]          (N, C, H_out, W_out)

    the element at offset (i, j) of window (h, w), for every window at once."""
    (k_h, k_w), (s_h, s_w), (d_h, d_w), (o_h, o_w) = kernel, stride, dilation, out_size
    return [x[:, :, d_h * i:d_h * i + s_h * (o_h - 1) + 1:s_h, d_w * j:d_w * j + s_w * (o_w - 1) + 1:s_w]
            for i in range(k_h) for j in range(k_w)]


def pooled_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """Windows along one axis, as torch counts them (ATen's pooling_output_shape): with ceil_mode the
    last window may hang over the padded input's end, but must start inside the input or its padding."""
    reach = size + 2 * padding - dilation * (kernel - 1) - 1
    count = (-(-reach // stride) if ceil_mode else reach // stride) + 1
    if ceil_mode and (count - 1) * stride >= size + padding:
        count -= 1
    return count


def _pool_args(op, input, kernel_size, stride, padding, dilation=1):
    """The window arguments as pairs, checked against the input's shape like torch checks them."""
    if input.dim() not in (3, 4):
        raise ValueError(f"{op}: expected input of shape (N, C, H, W) or (C, H, W), got {tuple(input.shape)}")
    kernel = pair(kernel_size, "kernel_size", op)
    stride = kernel if stride is None else pair(stride, "stride", op)
    padding, dilation = pair(padding, "padding", op), pair(dilation, "dilation", op)
    if min(kernel) < 1 or min(stride) < 1 or min(dilation) < 1:
        raise ValueError(f"{op}: kernel_size, stride and dilation must be positive, got kernel_size={kernel}, "
                         f"stride={stride}, dilation={dilation}")
    reach = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True))
    if min(padding) < 0 or any(2 * p > r for p, r in zip(padding, reach, strict=True)):
        raise ValueError(f"{op}: padding={padding} must be between 0 and half the kernel's span {reach}, "
                         "so that every window holds at least one input")
    height, width = input.shape[-2:]
    padded = (height + 2 * padding[0], width + 2 * padding[1])
    if reach[0] > padded[0] or reach[1] > padded[1]:
        raise ValueError(
            f"{op}: kernel_size={kernel} with dilation {dilation} spans {reach}, larger than the input of shape "
            f"{tuple(input.shape)} padded by {padding} to {padded}; use a smaller kernel, more padding or a "
            "larger input"
        )
    return kernel, stride, padding, dilation


def max_pool2d(input: torch.Tensor, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
               dilation: IntPair = 1, ceil_mode: bool = False, return_indices: bool = False):
    """Hand-written twin of torch.nn.functional.max_pool2d (stride defaults to kernel_size)."""
    kernel, stride, padding, dilation = _pool_args("max_pool2d", input, kernel_size, stride, padding, dilation)
    if input.dim() == 3:  # a single image (C, H, W) is a batch of one
        output, indices = max_pool2d(input.unsqueeze(0), kernel, stride, padding, dilation, ceil_mode, True)
        output, indices = output.squeeze(0), indices.squeeze(0)
    else:
        output, indices = MaxPool2d.call(input, kernel, stride, padding, dilation, ceil_mode)
    return (output, indices) if return_indices else output


# --------------------------------------------------------------------------- max_pool2d_relu


@twinned
class MaxPool2dReLU(TwinnedFunction):
    """y = relu(max_pool2d(x)) = max_pool2d(relu(x))      x (N, C, H, W)  ->  y (N, C, H_out, W_out)

    ReLU is monotone, so it commutes with a window's maximum: pooling first runs ReLU on a quarter
    of the elements (2 x 2 windows) and keeps no full-size mask. The winner of a window is the same
    either way when its maximum is positive (ReLU leaves positive values alone, and zeroes are
    smaller); when it is not, ReLU's derivative there is 0 and the window sends nothing:
    grad_x[n, c].flat[idx[n, c, h, w]] += grad_y[n, c, h, w] * [y[n, c, h, w] > 0]       (N, C, H, W)
    with [y > 0] = sign(y), as y >= 0 (ReLU's backward). Exactly what autograd gives max_pool2d(relu(x))
    for finite upstream gradients (an inf or nan one at a window with y = 0: see ReLU).

    Saves the indices and y, a quarter of the size of the ReLU output and indices autograd keeps.
    """

    autocast = Autocast.INPUT_DTYPE
    once_differentiable = True  # first order only: max_pool_windows' out= ops defy vmap; no jvp yet

    @staticmethod
    def forward(input, kernel_size, stride, padding, dilation, ceil_mode):
        pooled, indices = max_pool_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode)
        return pooled.relu_(), indices  # pooled is a new tensor: ReLU in place

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, kernel_size, stride, _, dilation, _ = inputs
        output, indices = output
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(output, indices)
        ctx.input_shape = input.shape
        ctx.disjoint = windows_disjoint(kernel_size, stride, dilation)

    @staticmethod
    def backward(ctx, grad_output, _grad_indices):
        output, indices = ctx.saved_tensors
        grad_pooled = grad_output * output.sign()  # ReLU's backward, on the pooled elements
        return to_winners(grad_pooled, indices, ctx.input_shape, ctx.disjoint), None, None, None, None, None


def max_pool2d_relu(input: torch.Tensor, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
                    dilation: IntPair = 1, ceil_mode: bool = False) -> torch.Tensor:
    """relu(max_pool2d(input, ...)) as one op: max_pool2d's arguments; equal, value and gradient, to
    max_pool2d(relu(input), ...), the usual order in a convolutional network (LeNet5 uses it)."""
    kernel, stride, padding, dilation = _pool_args("max_pool2d_relu", input, kernel_size, stride, padding, dilation)
    if input.dim() == 3:  # a single image (C, H, W) is a batch of one
        return max_pool2d_relu(input.unsqueeze(0), kernel, stride, padding, dilation, ceil_mode).squeeze(0)
    output, _ = MaxPool2dReLU.call(input, kernel, stride, padding, dilation, ceil_mode)
    return output


# --------------------------------------------------------------------------- avg_pool2d


def window_counts(in_size: int, out_size: int, kernel: int, stride: int, padding: int, count_include_pad: bool):
    """How many elements each of the ``out_size`` windows along one axis averages (torch's divisor).

    Window t covers rows [t*s - p, t*s - p + k) clipped to the padded input [-p, in_size + p), or to the
    input itself [0, in_size) when padding is not counted. Windows only extend past the padded input
    with ceil_mode=True.
    """
    start = torch.arange(out_size) * stride - padding
    end = (start + kernel).clamp(max=in_size + padding)
    if not count_include_pad:
        start, end = start.clamp(min=0), end.clamp(max=in_size)
    return end - start


@twinned
class AvgPool2d(TwinnedFunction):
    """y[n, c, h, w] = (1 / D[h, w]) sum over the window (s*h - p + i, s*w - p + j), 0 <= i < kH, 0 <= j < kW,
    of x, with padding counted as 0

    Shapes:  x (N, C, H, W)  ->  y (N, C, H_out, W_out)
    D[h, w] = kH * kW with the defaults; fewer at the borders where windows are clipped
    (count_include_pad=False, ceil_mode=True); ``divisor_override`` when given.

    dy[h, w]/dx = 1 / D[h, w] for every x in window (h, w), so each window spreads grad_y / D evenly
    over its inputs, and overlapping windows add up:
    grad_x_pad[s*h + i, s*w + j] += grad_y[h, w] / D[h, w]   for every window offset (i, j),
    then grad_x = grad_x_pad without the padding                                      (N, C, H, W)

    Saves nothing but shapes and window arguments.
    """

    autocast = Autocast.INPUT_DTYPE  # as torch's: runs in its input's dtype
    once_differentiable = True  # first order only: its backward adds into views in place (R3), links nothing (R4)

    @staticmethod
    def forward(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
        return torch_F.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.kernel_size, ctx.stride, ctx.padding, _, ctx.count_include_pad, ctx.divisor_override = inputs
        ctx.input_shape = input.shape

    @staticmethod
    def backward(ctx, grad_output):
        n, c, height, width = ctx.input_shape
        (k_h, k_w), (s_h, s_w), (p_h, p_w) = ctx.kernel_size, ctx.stride, ctx.padding
        out_h, out_w = grad_output.shape[2:]
        if ctx.divisor_override is not None:
            divisor = ctx.divisor_override
        else:
            rows = window_counts(height, out_h, k_h, s_h, p_h, ctx.count_include_pad)  # (H_out,)
            cols = window_counts(width, out_w, k_w, s_w, p_w, ctx.count_include_pad)  # (W_out,)
            divisor = torch.outer(rows, cols).to(grad_output)  # (H_out, W_out)

        share = grad_output / divisor  # what each input of window (h, w) receives   (N, C, H_out, W_out)
        # The windows tile a frame that starts at the padded input's corner (-p, -p); the window offset
        # (i, j) of every window lands on the frame's rows s*h + i, columns s*w + j.
        spread = grad_output.new_zeros(n, c, (out_h - 1) * s_h + k_h, (out_w - 1) * s_w + k_w)
        for view in window_views(spread, (k_h, k_w), (s_h, s_w), (1, 1), (out_h, out_w)):
            view += share
        # Crop the padding off the top and left; crop or zero-fill the bottom and right to (H, W).
        grad_input = torch_F.pad(spread, (-p_w, width + p_w - spread.shape[3], -p_h, height + p_h - spread.shape[2]))
        return grad_input.view(n, c, height, width), None, None, None, None, None, None


def avg_pool2d(input: torch.Tensor, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
               ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None):
    """Hand-written twin of torch.nn.functional.avg_pool2d (stride defaults to kernel_size)."""
    kernel, stride, padding, _ = _pool_args("avg_pool2d", input, kernel_size, stride, padding)
    if divisor_override is not None and divisor_override <= 0:
        raise ValueError(f"avg_pool2d: divisor_override must be positive, got {divisor_override}")
    if input.dim() == 3:  # a single image (C, H, W) is a batch of one
        return avg_pool2d(input.unsqueeze(0), kernel, stride, padding, ceil_mode, count_include_pad,
                          divisor_override).squeeze(0)
    return AvgPool2d.call(input, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
