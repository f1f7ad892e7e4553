"""Padding the rows and columns of an image batch: with zeros, or with the image's own pixels as
torch.nn.Conv2d's padding_mode 'reflect', 'replicate' and 'circular' do, and as conv2d's padding='same'
does where the padding is uneven (the extra row or column of zeros at the bottom or right).

The forward is torch's pad, a copy; its derivative is written here: every output element is a copy of
one input element (or a zero), so the gradient sums each input's copies back.

Reference: torch.nn.functional.pad; torch.nn.Conv2d (its padding_mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as torch_F

from handgrad.functional.function import Autocast, TwinnedFunction, transforms_active, twinned

MODES = ("constant", "reflect", "replicate", "circular")


@twinned
class Pad2d(TwinnedFunction):
    """y = x with ``left``, ``right`` columns and ``top``, ``bottom`` rows added: zeros ('constant'), x's
    mirror image without its edge ('reflect'), copies of the edge ('replicate') or x's other side ('circular')

    Shapes:  x (N, C, H, W)  ->  y (N, C, top + H + bottom, left + W + right)

    Each y element is a zero or a copy of one x element: y[n, c, r, q] = x[n, c, rows[r], cols[q]], where
    rows (top + H + bottom,) and cols (left + W + right,) map each axis back to x (source_index). dy/dx
    only selects, so each x element collects the gradients of its copies:
    grad_x[n, c, i, j] = sum_{r: rows[r] = i} sum_{q: cols[q] = j} grad_y[n, c, r, q]    (N, C, H, W)
    'constant': the border is zeros, the rest x itself: grad_x = grad_y without its border (a crop)
    t_y = pad(t_x)                                                  (jvp: the op is linear)
    Double backward: grad_x is linear in grad_y and reads no input (torch's own pad gradient has no graph to x).
    """

    autocast = Autocast.INPUT_DTYPE  # as torch's pad: runs in its input's dtype

    @staticmethod
    def forward(input, left, right, top, bottom, mode):  # ints, not a tuple: see conv.ConvGeometry
        return torch_F.pad(input, (left, right, top, bottom), mode)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, *ctx.pad, ctx.mode = inputs
        ctx.input_size = input.shape[2:]

    @staticmethod
    def backward(ctx, grad_output):
        left, right, top, bottom = ctx.pad
        height, width = ctx.input_size
        if ctx.mode == "constant":
            return torch_F.pad(grad_output, (-left, -right, -top, -bottom)), None, None, None, None, None
        n, c, padded_height, _ = grad_output.shape
        cols = source_index(width, left, right, ctx.mode, grad_output.device)  # (left + W + right,)
        rows = source_index(height, top, bottom, ctx.mode, grad_output.device)  # (top + H + bottom,)
        by_column = grad_output.new_zeros(n, c, padded_height, width).index_add(3, cols, grad_output)
        grad_input = grad_output.new_zeros(n, c, height, width).index_add(2, rows, by_column)  # (N, C, H, W)
        return grad_input, None, None, None, None, None

    @staticmethod
    def jvp(ctx, t_input, *_):
        return pad2d_unchecked(t_input, tuple(ctx.pad), ctx.mode)


def source_index(size: int, before: int, after: int, mode: str, device: torch.device) -> torch.Tensor:
    """Where each of the before + size + after positions along an axis of the padded image copies from:
    position i (counted from the first original element, so -before <= i < size + after) reads

        reflect     |i| mirrored at the far edge:  (size - 1) - |(size - 1) - |i||
        replicate   the nearest edge:              clamp(i, 0, size - 1)
        circular    around the image:              i mod size
    """
    i = torch.arange(-before, size + after, device=device)
    if mode == "reflect":
        return (size - 1) - ((size - 1) - i.abs()).abs()
    if mode == "replicate":
        return i.clamp(0, size - 1)
    return i.remainder(size)


def recording() -> bool:
    """Whether what runs now may be differentiated: grad mode on (a backward under create_graph=True, a
    torch.func grad level, a jvp outside no_grad) or a functorch transform active. A backward or a jvp then
    pads (and convolves) through the hand-written Functions, whose derivatives are written here, not
    torch's (convolution_backward, reflection_pad2d_backward); otherwise torch's kernels run directly,
    without a Function's cost (an ordinary backward)."""
    return torch.is_grad_enabled() or transforms_active()


def pad2d_unchecked(input: torch.Tensor, pad: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    return Pad2d.call(input, *pad, mode) if recording() else torch_F.pad(input, pad, mode)


def pad2d(input: torch.Tensor, pad: Sequence[int], mode: str = "constant") -> torch.Tensor:
    """torch.nn.functional.pad's two-axis padding of (N, C, H, W) or (C, H, W) images by pad = (left, right,
    top, bottom), with zeros or with the image's own pixels ('reflect', 'replicate', 'circular'), as
    torch.nn.Conv2d pads for its padding_mode; the gradient is hand-written (Pad2d)."""
    if mode not in MODES:
        raise ValueError(f"pad2d: mode={mode!r} is not one of {MODES}")
    if len(pad) != 4 or not all(isinstance(p, int) and p >= 0 for p in pad):
        raise ValueError(f"pad2d: pad must be 4 non-negative ints (left, right, top, bottom), got {pad!r}")
    if input.dim() not in (3, 4):
        raise ValueError(f"pad2d: expected input of shape (N, C, H, W) or (C, H, W), got {tuple(input.shape)}")
    if input.dim() == 3:  # a single image (C, H, W) is a batch of one
        return pad2d(input.unsqueeze(0), pad, mode).squeeze(0)
    height, width = input.shape[2:]
    for axis, size, amounts in (("columns", width, pad[:2]), ("rows", height, pad[2:])):
        if mode == "reflect" and max(amounts) >= size:
            raise ValueError(f"pad2d: reflect padding {tuple(amounts)} of the {axis} must be smaller than the "
                             f"input's {size} {axis} (input of shape {tuple(input.shape)})")
        if mode == "circular" and max(amounts) > size:
            raise ValueError(f"pad2d: circular padding {tuple(amounts)} of the {axis} must be at most the "
                             f"input's {size} {axis} (input of shape {tuple(input.shape)})")
        if mode != "constant" and size == 0 and max(amounts) > 0:
            raise ValueError(f"pad2d: {mode} padding needs an input with {axis}, got shape {tuple(input.shape)}")
    return Pad2d.call(input, *pad, mode)
