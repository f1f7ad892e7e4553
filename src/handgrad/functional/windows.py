"""The window arguments of conv2d and the pooling ops (kernel size, stride, padding, dilation), read
and checked as torch reads them, and the window arithmetic the ops share.

torch takes each of them as an int (both axes), or a tuple or list of one int (both axes) or two
(rows, columns); a pooling stride of None or () means the kernel size. Every check runs before any
kernel and names the value at fault.

Reference: ATen's pooling_output_shape and pool2d_shape_check (aten/src/ATen/native/Pool.h).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

IntPair = int | Sequence[int]  # an int for both axes, or one or two of them (as torch takes them)


def pair(value: IntPair, name: str, op: str) -> tuple[int, int]:
    """(v, v) for an int v or a 1-sequence (v,); (a, b) for a 2-sequence (a, b)."""
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        return value  # the common form, checked in ~0.1 us
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise TypeError(f"{op}: {name} must be an int or a tuple of one or two ints, got {value!r}")
    if len(values) not in (1, 2):
        raise ValueError(f"{op}: {name} must be an int or a tuple of one or two ints, got {value!r} "
                         f"({len(values)} values)")
    return values[0], values[-1]


@dataclass(frozen=True)
class Window:
    """A pooling window's geometry: kernel size, stride, padding (on both sides) and dilation, each a pair
    (rows, columns), and ceil_mode (whether a last, partial window counts). One argument, not tuples: see
    conv.ConvGeometry."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool

    def out_size(self, height: int, width: int) -> tuple[int, int]:
        """(H_out, W_out): the windows along each axis."""
        return (pooled_size(height, self.kernel[0], self.stride[0], self.padding[0], self.dilation[0], self.ceil_mode),
                pooled_size(width, self.kernel[1], self.stride[1], self.padding[1], self.dilation[1], self.ceil_mode))


def pooled_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """Windows along one axis, as torch counts them (ATen's pooling_output_shape): with ceil_mode the
    last window may hang over the padded input's end, but must start inside the input or its padding."""
    reach = size + 2 * padding - dilation * (kernel - 1) - 1
    count = (-(-reach // stride) if ceil_mode else reach // stride) + 1
    if ceil_mode and (count - 1) * stride >= size + padding:
        count -= 1
    return count


def window_views(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
                 out_size: tuple[int, int]) -> list[torch.Tensor]:
    """One strided view of ``x`` (N, C, H, W) per window offset (i, j), in row-major order:

        view[i * kW + j][n, c, h, w] = x[n, c, s*h + d*i, s*w + d*j]          (N, C, H_out, W_out)

    the element at offset (i, j) of window (h, w), for every window at once."""
    (k_h, k_w), (s_h, s_w), (d_h, d_w), (o_h, o_w) = kernel, stride, dilation, out_size
    return [x[:, :, d_h * i:d_h * i + s_h * (o_h - 1) + 1:s_h, d_w * j:d_w * j + s_w * (o_w - 1) + 1:s_w]
            for i in range(k_h) for j in range(k_w)]


def pool_window(op: str, input: torch.Tensor, kernel_size: IntPair, stride: IntPair | None, padding: IntPair,
                dilation: IntPair, ceil_mode: bool) -> Window:
    """The Window of a pooling op's arguments, checked as torch checks them: the arguments, then the input."""
    kernel = pair(kernel_size, "kernel_size", op)
    no_stride = stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0)
    stride = kernel if no_stride else pair(stride, "stride", op)  # type: ignore[arg-type]
    padding, dilation = pair(padding, "padding", op), pair(dilation, "dilation", op)
    for name, value in (("kernel_size", kernel), ("stride", stride), ("dilation", dilation)):
        if min(value) < 1:
            raise ValueError(f"{op}: {name} must be positive, got {name}={value}")
    if min(padding) < 0 or any(p > k // 2 for p, k in zip(padding, kernel, strict=True)):
        raise ValueError(f"{op}: padding={padding} must be between 0 and half the kernel size {kernel} (rounded "
                         "down), so that every window holds at least one input")
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{op}: input must be a tensor, got {type(input).__name__}")
    if input.dim() not in (3, 4) or 0 in input.shape[-3:]:
        raise ValueError(f"{op}: expected input of shape (N, C, H, W) or (C, H, W) with C, H and W non-zero (N may "
                         f"be 0), got {tuple(input.shape)}")
    if input.dtype == torch.bool or input.is_complex():
        raise TypeError(f"{op}: input of dtype {input.dtype} is not supported, as in torch; convert it to a "
                        "floating-point dtype")
    window = Window(kernel, stride, padding, dilation, bool(ceil_mode))
    height, width = input.shape[-2:]
    if min(window.out_size(height, width)) < 1:
        reach = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True))
        padded = (height + 2 * padding[0], width + 2 * padding[1])
        raise ValueError(f"{op}: kernel_size={kernel} with dilation {dilation} spans {reach}, larger than the input "
                         f"of shape {tuple(input.shape)} padded by {padding} to {padded}; use a smaller kernel, more "
                         "padding or a larger input")
    return window
