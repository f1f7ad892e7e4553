"""2-D average pooling: each window's mean (or its sum over a given divisor).

The op is linear, y = A x / D with A the window sums and D each window's divisor, so its gradient is
the adjoint, grad_x = A^T (grad_y / D), spreading each window's gradient evenly over its inputs, and
its jvp the op itself applied to the tangent.

Reference: CS231n; torch.nn.functional.avg_pool2d (the same window arithmetic and defaults).
"""

from __future__ import annotations

import torch
import torch.nn.functional as torch_F

from handgrad.functional.function import Autocast, TwinnedFunction, may_overwrite, twinned, zero_link
from handgrad.functional.padding import recording
from handgrad.functional.windows import IntPair, Window, pool_window, window_views


@twinned
class AvgPool2d(TwinnedFunction):
    """y[n, c, h, w] = (1 / D[h, w]) sum over the window (s*h - p + i, s*w - p + j), 0 <= i < kH, 0 <= j < kW,
    of x, with padding counted as 0

    Shapes:  x (N, C, H, W)  ->  y (N, C, H_out, W_out)
    D[h, w] = kH * kW with the defaults; fewer at the borders where windows are clipped
    (count_include_pad=False, ceil_mode=True); ``divisor_override`` when given (any non-zero int, as torch).

    dy[h, w]/dx = 1 / D[h, w] for every x in window (h, w), so each window spreads grad_y / D evenly
    over its inputs, and overlapping windows add up:
    grad_x_pad[s*h + i, s*w + j] += grad_y[h, w] / D[h, w]   for every window offset (i, j),
    then grad_x = grad_x_pad without the padding                                      (N, C, H, W)
    t_y = avg_pool2d(t_x)                                     (jvp: the op is linear)
    Double backward: grad_x is linear in grad_y and constant in x (d grad_x / dx = 0): linked to x by
    zero_link, as torch's avg_pool2d_backward(grad, x, ...) is. So x is saved, for that link only.
    """

    autocast = Autocast.INPUT_DTYPE  # as torch's: runs in its input's dtype

    @staticmethod
    def forward(input, window, count_include_pad, divisor_override):
        return avg_pool(input, window, count_include_pad, divisor_override)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.window, ctx.count_include_pad, ctx.divisor_override = inputs
        ctx.save_for_backward(input)
        ctx.save_for_forward(input)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        kernel, stride, padding = ctx.window.kernel, ctx.window.stride, ctx.window.padding
        count_include_pad, divisor_override = ctx.count_include_pad, ctx.divisor_override
        height, width = input.shape[2:]
        if divisor_override is not None:
            divisor = divisor_override
        else:
            rows = window_counts(height, grad_output.shape[2], kernel[0], stride[0], padding[0], count_include_pad)
            cols = window_counts(width, grad_output.shape[3], kernel[1], stride[1], padding[1], count_include_pad)
            divisor = torch.outer(rows, cols).to(grad_output.device, grad_output.dtype)  # (H_out, W_out)
        share = grad_output / divisor  # what each input of window (h, w) receives   (N, C, H_out, W_out)
        spread = spread_over_windows(share, kernel, stride, may_overwrite(grad_output))
        # The frame starts at the padded input's corner (-p, -p): crop the padding off the top and left,
        # and crop or zero-fill the bottom and right to (H, W).
        p_h, p_w = padding
        grad_input = torch_F.pad(spread, (-p_w, width + p_w - spread.shape[3], -p_h, height + p_h - spread.shape[2]))
        return zero_link(grad_input, input), None, None, None

    @staticmethod
    def jvp(ctx, t_input, *_):
        return average_pooled(t_input, ctx.window, ctx.count_include_pad, ctx.divisor_override)


def window_counts(in_size: int, out_size: int, kernel: int, stride: int, padding: int,
                  count_include_pad: bool) -> torch.Tensor:
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


def spread_over_windows(share: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                        in_place: bool) -> torch.Tensor:
    """A^T share: each window's share added to each of its positions, on the frame the windows tile,
    (H_out - 1) s + kH rows by (W_out - 1) s + kW columns (the window offset (i, j) of window (h, w) lands
    on row s*h + i, column s*w + j).

    In place, one strided view of the frame per window offset, where may_overwrite allows (the fastest
    on CPU for small kernels); otherwise by F.fold, which adds the same columns out of place (create_graph,
    torch.func transforms), and whose own derivative, F.unfold, is a forward op.
    """
    n, c, out_h, out_w = share.shape
    (k_h, k_w), (s_h, s_w) = kernel, stride
    frame = ((out_h - 1) * s_h + k_h, (out_w - 1) * s_w + k_w)
    if in_place:
        spread = share.new_zeros(n, c, *frame)
        for view in window_views(spread, kernel, stride, (1, 1), (out_h, out_w)):
            view += share
        return spread
    columns = share.reshape(n, c, 1, out_h * out_w).expand(n, c, k_h * k_w, out_h * out_w)
    return torch_F.fold(columns.reshape(n, c * k_h * k_w, out_h * out_w), frame, kernel, stride=stride)


def avg_pool(input: torch.Tensor, window: Window, count_include_pad: bool,
             divisor_override: int | None) -> torch.Tensor:
    """torch's avg_pool2d kernel, the forward's values."""
    w = window
    return torch_F.avg_pool2d(input, w.kernel, w.stride, w.padding, w.ceil_mode, count_include_pad, divisor_override)


def average_pooled(input: torch.Tensor, window: Window, count_include_pad: bool,
                   divisor_override: int | None) -> torch.Tensor:
    """avg_pool2d through AvgPool2d while what runs may be differentiated (padding.recording), else torch's kernel."""
    if recording():
        return AvgPool2d.call(input, window, count_include_pad, divisor_override)
    return avg_pool(input, window, count_include_pad, divisor_override)


def avg_pool2d(input: torch.Tensor, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
               ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None
               ) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.avg_pool2d (stride defaults to kernel_size)."""
    window = pool_window("avg_pool2d", input, kernel_size, stride, padding, 1, ceil_mode)
    if divisor_override is not None and (not isinstance(divisor_override, int) or isinstance(divisor_override, bool)
                                         or divisor_override == 0):
        raise ValueError(f"avg_pool2d: divisor_override must be a non-zero int (or None), got {divisor_override!r}")
    if input.dim() == 3:  # a single image (C, H, W) is a batch of one
        return AvgPool2d.call(input.unsqueeze(0), window, count_include_pad, divisor_override).squeeze(0)
    return AvgPool2d.call(input, window, count_include_pad, divisor_override)
