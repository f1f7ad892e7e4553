"""2-D convolution (cross-correlation, as in every deep-learning library) with stride, zero padding,
dilation and groups, and its adjoint, the transposed convolution.

Both gradients of a convolution are convolutions again: grad_x is the *transposed* convolution of
grad_y with the same kernel, and grad_W a convolution of x with grad_y in which the batch axis plays
the part of the channels (stride and dilation swap roles). The transposed convolution's gradients are,
in turn, a convolution and the same weight gradient. So each Function's backward is written with the
two Functions, and whenever a graph is recorded (create_graph=True, a torch.func level, a jvp) it calls
them, not torch's ops: the derivatives of a backward are hand-written too, never torch's
convolution_backward.

Reference: Dumoulin & Visin, "A guide to convolution arithmetic for deep learning" (2016);
CS231n "conv_forward_naive / conv_backward_naive"; torch.nn.functional.conv2d, conv_transpose2d.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as torch_F

from handgrad.functional.autocast import autocast_on_any_device
from handgrad.functional.function import Autocast, TwinnedFunction, twinned
from handgrad.functional.padding import pad2d, recording
from handgrad.functional.windows import IntPair, pair


@dataclass(frozen=True)
class ConvGeometry:
    """How a convolution's windows slide: stride, zero padding (on both sides) and dilation, each a pair
    (rows, columns); groups; and for a transposed convolution, output_padding (rows and columns added at
    the bottom and right). One argument, not four tuples: torch.func's generated vmap rule counts a tuple
    argument's ints as separate arguments when it batches a jvp (jacfwd, hessian) and fails (torch 2.14)."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    output_padding: tuple[int, int] = (0, 0)


@twinned
class Conv2d(TwinnedFunction):
    """y[n, o] = b[o] + sum_{c in group(o)} sum_{i,j} W[o, c, i, j] * x_pad[n, c, s*h + d*i, s*w + d*j]

    Shapes:  x (N, C_in, H, W), W (C_out, C_in / g, kH, kW), b (C_out,)  ->  y (N, C_out, H_out, W_out)
    with H_out = floor((H + 2p - d (kH - 1) - 1) / s) + 1 (likewise W_out), s = stride, p = padding,
    d = dilation, g = groups (input and output channels split into g independent blocks).

    grad_x = conv_transpose2d(grad_y, W*; s, p, d, g)       (N, C_in, H, W)
             each x element collects W * grad_y from every window that read it
    grad_W = weight_gradient(x*, grad_y)                    (C_out, C_in / g, kH, kW)
             W[o, c, i, j] multiplied x_pad[n, c, s*h + d*i, s*w + d*j] for every n, h, w, so its
             gradient is that sum weighted by grad_y[n, o, h, w]
    grad_b = sum_{n,h,w} grad_y                             (C_out,)   b was broadcast over n, h, w
    t_y    = conv2d(t_x, W) + conv2d(x, t_W) + t_b          (jvp: y is bilinear in x and W, affine in b)
    (* the complex conjugate, for complex x and W: torch's gradient is the conjugate Wirtinger derivative)

    Saves x and W, the inputs the formulas read (the jvp needs both). Double backward needs nothing more:
    each gradient is linear in grad_y and reads only inputs.
    """

    autocast = Autocast.LOWER_PRECISION  # as torch's conv2d: x, W, b cast to bf16 / fp16

    @staticmethod
    def forward(input, weight, bias, geometry):
        return torch_F.conv2d(input, weight, bias, geometry.stride, geometry.padding, geometry.dilation,
                              geometry.groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, ctx.geometry = inputs
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        if input.numel() == 0 or grad_output.numel() == 0:  # an empty batch, or no channels: every gradient is 0
            return empty_gradients(ctx, input, weight, grad_output)
        geometry, grad_input, grad_weight, grad_bias = ctx.geometry, None, None, None
        if ctx.needs_input_grad[0]:
            grad_input = transposed_convolution(grad_output, conj(weight), input.shape[2:], geometry)  # (N, C_in, H, W)
        if ctx.needs_input_grad[1]:
            grad_weight = weight_gradient(conj(input), grad_output, weight.shape, geometry)  # (C_out, C_in / g, kH, kW)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            # Over n, then h, w (faster than at once), summed in float32 at least: a bf16 / fp16 gradient
            # (under autocast) is then rounded once, not once more per (h, w).
            accumulate = torch.promote_types(grad_output.dtype, torch.float32)
            per_channel = grad_output.sum(0, dtype=accumulate)  # (C_out, H_out, W_out)
            grad_bias = per_channel.reshape(per_channel.shape[0], -1).sum(1)  # (C_out,)
        return grad_input, grad_weight, grad_bias, None

    @staticmethod
    def jvp(ctx, t_input, t_weight, t_bias, _t_geometry):
        input, weight = ctx.saved_tensors  # a missing tangent of x or W arrives as zeros; of a None b, as None
        return convolution(t_input, weight, t_bias, ctx.geometry) + convolution(input, t_weight, None, ctx.geometry)


@twinned
class ConvTranspose2d(TwinnedFunction):
    """z = conv_transpose2d(u, W; s, p, output_padding, g, d): the adjoint of x -> conv2d(x, W; s, p, d, g)

    Shapes:  u (N, C_out, H_out, W_out), W (C_out, C_in / g, kH, kW)  ->  z (N, C_in, H, W)
    with H = (H_out - 1) s - 2p + d (kH - 1) + 1 + output_padding: the rows of conv2d's input, output_padding
    giving back those its floor division dropped. <z, x> = <u, conv2d(x, W)> for every x, so

    grad_u = conv2d(grad_z, W*; s, p, d, g)                 (N, C_out, H_out, W_out)
    grad_W = weight_gradient(grad_z, u*)                    (C_out, C_in / g, kH, kW)
    t_z    = conv_transpose2d(t_u, W) + conv_transpose2d(u, t_W)       (jvp: bilinear in u and W)

    Conv2d's backward (its grad_x), and its own double backward.
    """

    autocast = Autocast.LOWER_PRECISION  # as torch's conv_transpose2d

    @staticmethod
    def forward(input, weight, geometry):
        return transposed_kernel(input, weight, geometry)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, ctx.geometry = inputs
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        geometry, grad_input, grad_weight = ctx.geometry, None, None
        if ctx.needs_input_grad[0]:
            grad_input = convolution(grad_output, conj(weight), None, geometry)  # (N, C_out, H_out, W_out)
        if ctx.needs_input_grad[1]:
            grad_weight = weight_gradient(grad_output, conj(input), weight.shape, geometry)  # (C_out, C_in / g, kH, kW)
        return grad_input, grad_weight, None

    @staticmethod
    def jvp(ctx, t_input, t_weight, _t_geometry):
        input, weight = ctx.saved_tensors
        return transposed(t_input, weight, ctx.geometry) + transposed(input, t_weight, ctx.geometry)


def empty_gradients(ctx, input, weight, grad_output):
    """Conv2d's gradients when x or grad_y has no elements (N = 0, or C_in = 0, where torch's conv2d returns
    no channels): zeros, of which the convolutions' channel arithmetic cannot make every shape."""
    needs_x, needs_w, needs_b = ctx.needs_input_grad[:3]
    return (torch.zeros_like(input) if needs_x else None, torch.zeros_like(weight) if needs_w else None,
            grad_output.new_zeros(weight.shape[0]) if ctx.has_bias and needs_b else None, None)


# --------------------------------------------------------------------------- the convolutions a backward runs


def convolution(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, geometry: ConvGeometry
                ) -> torch.Tensor:
    """conv2d through Conv2d while what runs may be differentiated (padding.recording), else torch's kernel."""
    if recording():
        return Conv2d.call(input, weight, bias, geometry)
    g = geometry
    return torch_F.conv2d(input, weight, bias, g.stride, g.padding, g.dilation, g.groups)


def transposed(input: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """conv_transpose2d through ConvTranspose2d while what runs may be differentiated, else torch's kernel."""
    if recording():
        return ConvTranspose2d.call(input, weight, geometry)
    return transposed_kernel(input, weight, geometry)


def transposed_kernel(input: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    g = geometry
    return torch_F.conv_transpose2d(input, weight, None, g.stride, g.padding, g.output_padding, g.groups, g.dilation)


def conj(t: torch.Tensor) -> torch.Tensor:
    """t's complex conjugate (a lazy view); t itself when real."""
    return t.conj() if t.is_complex() else t


def transposed_convolution(grad_output: torch.Tensor, weight: torch.Tensor, size: Sequence[int],
                           geometry: ConvGeometry) -> torch.Tensor:
    """conv_transpose2d of grad_y back to conv2d's input of spatial ``size`` (H, W): output_padding gives
    back the rows and columns the forward's floor division dropped at the bottom and right, where the
    transposed convolution rebuilds only (H_out - 1) s + d (kH - 1) + 1 - 2p of them."""
    s, p, d = geometry.stride, geometry.padding, geometry.dilation
    extra_h, extra_w = (size[a] + 2 * p[a] - ((grad_output.shape[2 + a] - 1) * s[a] + d[a] * (weight.shape[2 + a] - 1)
                                              + 1) for a in (0, 1))
    return transposed(grad_output, weight, replace(geometry, output_padding=(extra_h, extra_w)))


def weight_gradient(input: torch.Tensor, grad_output: torch.Tensor, weight_shape: Sequence[int],
                    geometry: ConvGeometry) -> torch.Tensor:
    """grad_W[o, c, i, j] = sum_{n,h,w} grad_y[n, o, h, w] x_pad[n, c, s*h + d*i, s*w + d*j]   (C_out, C_in / g, kH, kW)

    bilinear in (x, grad_y), and itself a convolution: of x's channels of one group (as the batch) with
    grad_y's maps (as the kernel, N of them per group), the stride s now spacing the kernel's taps
    (dilation) and d the windows (stride). Its rows past kH are windows the forward never had (the rows
    its floor division dropped); padding with negative widths crops them.
    """
    n, _, height, width = input.shape
    _, c_group, k_h, k_w = weight_shape
    groups = geometry.groups
    # Channels of one group become the batch, and the batch becomes the channels of g groups.
    x_t = (input.reshape(n, groups, c_group, height, width).permute(2, 1, 0, 3, 4)
           .reshape(c_group, groups * n, height, width))
    grad_y_t = grad_output.transpose(0, 1)  # (C_out, N, H_out, W_out)
    swapped = ConvGeometry(geometry.dilation, geometry.padding, geometry.stride, groups)  # stride <-> dilation
    full = convolution(x_t, grad_y_t, None, swapped)  # (C_in / g, C_out, >= kH, >= kW)
    cropped = torch_F.pad(full, (0, k_w - full.shape[3], 0, k_h - full.shape[2]))  # (C_in / g, C_out, kH, kW)
    return cropped.transpose(0, 1)


# --------------------------------------------------------------------------- conv2d, its arguments checked


def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: IntPair = 1,
           padding: IntPair | str = 0, dilation: IntPair = 1, groups: int = 1) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.conv2d. A single image (C, H, W) is a batch of one.
    padding='valid' is none; padding='same' keeps the input's size (stride 1): d (k - 1) rows in all, the
    odd one, if any, at the bottom (likewise columns, at the right), as torch pads (by Pad2d, then)."""
    _check_tensors(input, weight, bias)
    if input.dim() == 3:
        return conv2d(input.unsqueeze(0), weight, bias, stride, padding, dilation, groups).squeeze(0)
    strides, dilations = pair(stride, "stride", "conv2d"), pair(dilation, "dilation", "conv2d")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive int, got groups={groups!r}")
    if isinstance(padding, str):
        paddings, extra = _string_padding(padding, (weight.shape[2], weight.shape[3]), strides, dilations)
        if extra != (0, 0):  # the uneven 'same': the odd row (column) of zeros at the bottom (right)
            input = pad2d(input, (0, extra[1], 0, extra[0]))
    else:
        paddings = pair(padding, "padding", "conv2d")
    for name, value, least in (("stride", strides, 1), ("dilation", dilations, 1), ("padding", paddings, 0)):
        if min(value) < least:
            raise ValueError(f"conv2d: {name} must be at least {least}, got {name}={value}")
    _check_shapes(input, weight, bias, paddings, dilations, groups)
    return Conv2d.call(input, weight, bias, ConvGeometry(strides, paddings, dilations, groups))


def _string_padding(padding: str, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
                    ) -> tuple[tuple[int, int], tuple[int, int]]:
    """padding='valid' or 'same' as (symmetric padding, extra rows and columns at the bottom and right)."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding != "same":
        raise ValueError(f"conv2d: padding={padding!r} is not 'valid', 'same', an int or a pair of ints")
    if stride != (1, 1):
        raise ValueError(f"conv2d: padding='same' is not supported for strided convolutions (stride={stride}), as "
                         "in torch; pass the padding as ints")
    totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]  # rows (columns) the output would lose
    return (totals[0] // 2, totals[1] // 2), (totals[0] % 2, totals[1] % 2)


def _check_tensors(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Tensors of one dtype (autocast casts them to one) and device, of the dims conv2d takes."""
    for name, t in (("input", input), ("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor) and not (name == "bias" and t is None):
            raise TypeError(f"conv2d: {name} must be a tensor, got {type(t).__name__}")
    if weight.dim() != 4:
        raise ValueError(f"conv2d: weight must be 4-D (C_out, C_in / groups, kH, kW), got shape {tuple(weight.shape)}")
    if input.dim() not in (3, 4):
        raise ValueError(f"conv2d: expected input of shape (N, C_in, H, W) or (C_in, H, W), got {tuple(input.shape)}")
    tensors = (input, weight) if bias is None else (input, weight, bias)
    if any(t.dtype != input.dtype for t in tensors) and not autocast_on_any_device():
        raise TypeError("conv2d: input, weight and bias must have one dtype, got "
                        + ", ".join(str(t.dtype) for t in tensors) + "; convert them, e.g. weight.to(input.dtype)")
    if not (input.is_floating_point() or input.is_complex() or input.dtype == torch.int64):
        raise TypeError(f"conv2d: input of dtype {input.dtype} is not supported (floating, complex or int64 only)")
    if any(t.device != input.device for t in tensors):
        raise ValueError("conv2d: input, weight and bias must be on one device, got "
                         + ", ".join(str(t.device) for t in tensors))


def _check_shapes(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int],
                  dilation: tuple[int, int], groups: int) -> None:
    """Channels that split into ``groups``, a bias per output channel, a kernel that fits the padded input."""
    n, c_in, height, width = input.shape
    c_out, kernel = weight.shape[0], (weight.shape[2], weight.shape[3])
    if c_in % groups or c_out % groups or c_out < groups:
        raise ValueError(f"conv2d: groups={groups} must divide both the input's {c_in} channels (input of shape "
                         f"{tuple(input.shape)}) and the weight's {c_out} output channels (weight of shape "
                         f"{tuple(weight.shape)}); in_channels and out_channels must be divisible by groups, "
                         "with at least one output channel per group")
    if c_in != weight.shape[1] * groups:
        raise ValueError(f"conv2d: input of shape {tuple(input.shape)} has {c_in} channels, but weight of shape "
                         f"{tuple(weight.shape)} with groups={groups} expects {weight.shape[1]} * {groups} = "
                         f"{weight.shape[1] * groups}; build the layer with in_channels={c_in} or feed it "
                         f"{weight.shape[1] * groups} channels")
    if bias is not None and bias.shape != (c_out,):
        raise ValueError(f"conv2d: bias of shape {tuple(bias.shape)} does not match weight of shape "
                         f"{tuple(weight.shape)}; expected bias of shape ({c_out},)")
    if min(kernel) < 1:
        raise ValueError(f"conv2d: weight of shape {tuple(weight.shape)} has an empty kernel {kernel}")
    padded = (height + 2 * padding[0], width + 2 * padding[1])
    reach = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True))
    if reach[0] > padded[0] or reach[1] > padded[1]:
        raise ValueError(f"conv2d: kernel of size {kernel} with dilation {dilation} spans {reach}, larger than the "
                         f"input of shape {tuple(input.shape)} padded by {padding} to {padded}; use a smaller kernel, "
                         "more padding or a larger input")
    if 0 in (height, width) and n and c_in:
        raise ValueError(f"conv2d: input of shape {tuple(input.shape)} has no rows or columns; torch convolves such "
                         "an input only in an empty batch (N = 0) or with no channels")
