"""2-D convolution (cross-correlation, as in every deep-learning library) with stride,
zero padding, dilation and groups.

Both gradients are themselves convolutions: grad_x is the *transposed* convolution of
grad_y with the same kernel, and grad_W is a convolution of x with grad_y in which the
batch axis plays the part of the channels (stride and dilation swap roles).

Reference: Dumoulin & Visin, "A guide to convolution arithmetic for deep learning" (2016);
CS231n "conv_forward_naive / conv_backward_naive"; torch.nn.functional.conv2d.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as torch_F

from handgrad.functional.function import Autocast, TwinnedFunction, twinned

IntPair = int | Sequence[int]  # an int for both axes, or one per axis (as torch takes them)


def pair(value: IntPair, name: str, op: str) -> tuple[int, int]:
    """(value, value) for an int, the tuple itself for a pair; shared by conv and pooling."""
    pair_ = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair_) != 2 or not all(isinstance(v, int) for v in pair_):
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    return pair_[0], pair_[1]


def output_padding(input_size: int, output_size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Rows the forward's floor division dropped at the bottom (or right) of the padded input.

    A transposed convolution of the output rebuilds (output_size - 1) * stride + dilation * (kernel - 1) + 1
    rows of the padded input; the remaining rows, fewer than ``stride``, saw no window.
    """
    return input_size + 2 * padding - ((output_size - 1) * stride + dilation * (kernel - 1) + 1)


@twinned
class Conv2d(TwinnedFunction):
    """y[n, o] = b[o] + sum_{c in group(o)} sum_{i,j} W[o, c, i, j] * x_pad[n, c, s*h + d*i, s*w + d*j]

    Shapes:  x (N, C_in, H, W), W (C_out, C_in / g, kH, kW), b (C_out,)  ->  y (N, C_out, H_out, W_out)
    with H_out = floor((H + 2p - d (kH - 1) - 1) / s) + 1 (likewise W_out), s = stride, p = padding,
    d = dilation, g = groups (input and output channels split into g independent blocks).

    grad_x = conv_transpose2d(grad_y, W; s, p, d, g)       (N, C_in, H, W)
             each x element collects W * grad_y from every window that read it
    grad_W = conv2d(x^T, grad_y^T; stride=d, dilation=s, p, g) cropped to (kH, kW), transposed back
             (C_out, C_in / g, kH, kW): W[o, c, i, j] multiplied x_pad[n, c, s*h + d*i, s*w + d*j] for
             every n, h, w, so its gradient is that sum weighted by grad_y[n, o, h, w]
    grad_b = sum_{n,h,w} grad_y                             (C_out,)   b was broadcast over n, h, w

    Only what a requested gradient needs is saved: x for grad_W, W for grad_x.
    """

    autocast = Autocast.LOWER_PRECISION  # as torch's conv2d: x, W, b cast to bf16 / fp16
    once_differentiable = True  # first order only: saves x or W only where a gradient needs it, the jvp needs both (R5)

    @staticmethod
    def forward(input, weight, bias, stride, padding, dilation, groups):
        return torch_F.conv2d(input, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, stride, padding, dilation, groups = inputs
        needs_x, needs_w, _ = ctx.needs_input_grad[:3]
        ctx.save_for_backward(input if needs_w else None, weight if needs_x else None)
        ctx.input_shape = input.shape
        ctx.weight_shape = weight.shape
        ctx.has_bias = bias is not None
        ctx.stride, ctx.padding, ctx.dilation, ctx.groups = stride, padding, dilation, groups

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        s, p, d, g = ctx.stride, ctx.padding, ctx.dilation, ctx.groups
        n, _, height, width = ctx.input_shape
        _, c_group, k_h, k_w = ctx.weight_shape
        grad_input = grad_weight = grad_bias = None

        if ctx.needs_input_grad[0]:
            extra = (output_padding(height, grad_output.shape[2], k_h, s[0], p[0], d[0]),  # rows and columns the
                     output_padding(width, grad_output.shape[3], k_w, s[1], p[1], d[1]))  # forward's floor dropped
            grad_input = torch_F.conv_transpose2d(grad_output, weight, None, s, p, extra, g, d)  # (N, C_in, H, W)
        if ctx.needs_input_grad[1]:
            # Channels of one group become the batch, and the batch becomes the channels of g groups.
            x_t = (input.reshape(n, g, c_group, height, width).permute(2, 1, 0, 3, 4)
                   .reshape(c_group, g * n, height, width))
            grad_y_t = grad_output.transpose(0, 1)  # (C_out, N, H_out, W_out)
            grad_weight = torch_F.conv2d(x_t, grad_y_t, None, d, p, s, g)  # (C_in / g, C_out, >= kH, >= kW)
            grad_weight = grad_weight[:, :, :k_h, :k_w].transpose(0, 1)  # (C_out, C_in / g, kH, kW)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            # Over n, then h, w (faster than at once), summed in float32 at least: a bf16 / fp16 gradient
            # (under autocast) is then rounded once, not once more per (h, w).
            accumulate = torch.promote_types(grad_output.dtype, torch.float32)
            grad_bias = grad_output.sum(0, dtype=accumulate).flatten(1).sum(1)  # (C_out,)
        return grad_input, grad_weight, grad_bias, None, None, None, None


def _same_padding(kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    if stride != (1, 1):
        raise ValueError(f"conv2d: padding='same' is not supported for strided convolutions (stride={stride}); "
                         "pass the padding as integers")
    totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
    if any(total % 2 for total in totals):
        raise NotImplementedError(
            f"conv2d: padding='same' with kernel {kernel} and dilation {dilation} needs uneven padding "
            f"({totals} rows/columns in all), which handgrad does not implement; use an odd kernel size"
        )
    return totals[0] // 2, totals[1] // 2


def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: IntPair = 1,
           padding: IntPair | str = 0, dilation: IntPair = 1, groups: int = 1) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.conv2d (a single image (C, H, W) is a batch of one)."""
    if weight.dim() != 4:
        raise ValueError(f"conv2d: weight must be 4-D (C_out, C_in / groups, kH, kW), got shape {tuple(weight.shape)}")
    if input.dim() == 3:
        return conv2d(input.unsqueeze(0), weight, bias, stride, padding, dilation, groups).squeeze(0)
    if input.dim() != 4:
        raise ValueError(f"conv2d: expected input of shape (N, C_in, H, W) or (C_in, H, W), got {tuple(input.shape)}")
    stride, dilation = pair(stride, "stride", "conv2d"), pair(dilation, "dilation", "conv2d")
    kernel = (weight.shape[2], weight.shape[3])
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        padding = _same_padding(kernel, stride, dilation)
    elif isinstance(padding, str):
        raise ValueError(f"conv2d: padding={padding!r} is not 'valid', 'same', an int or a pair of ints")
    padding = pair(padding, "padding", "conv2d")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"conv2d: need stride >= 1, dilation >= 1 and padding >= 0, got stride={stride}, "
                         f"dilation={dilation}, padding={padding}")

    n, c_in, height, width = input.shape
    c_out = weight.shape[0]
    if groups < 1 or c_in % groups or c_out % groups:
        raise ValueError(
            f"conv2d: groups={groups} must divide both the input's {c_in} channels (input of shape "
            f"{tuple(input.shape)}) and the weight's {c_out} output channels; in_channels and out_channels "
            "must be divisible by groups"
        )
    if c_in != weight.shape[1] * groups:
        raise ValueError(
            f"conv2d: input of shape {tuple(input.shape)} has {c_in} channels, but weight of shape "
            f"{tuple(weight.shape)} with groups={groups} expects {weight.shape[1]} * {groups} = "
            f"{weight.shape[1] * groups}; build the layer with in_channels={c_in} or feed it "
            f"{weight.shape[1] * groups} channels"
        )
    if bias is not None and bias.shape != (c_out,):
        raise ValueError(f"conv2d: bias of shape {tuple(bias.shape)} does not match weight of shape "
                         f"{tuple(weight.shape)}; expected bias of shape ({c_out},)")
    padded = (height + 2 * padding[0], width + 2 * padding[1])
    reach = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True))
    if reach[0] > padded[0] or reach[1] > padded[1]:
        raise ValueError(
            f"conv2d: kernel of size {kernel} with dilation {dilation} spans {reach}, larger than the input of "
            f"shape {tuple(input.shape)} padded by {padding} to {padded}; use a smaller kernel, more padding "
            "or a larger input"
        )
    return Conv2d.call(input, weight, bias, stride, padding, dilation, groups)
