"""Rows of conv2d, and its torch samples (OpInfo nn.functional.conv2d, ModuleInfo nn.Conv2d)."""

from __future__ import annotations

import torch.nn.functional as torch_F

import handgrad.functional as F
from handgrad.functional.padding import pad2d
from handgrad.verify.compare import OpCase
from handgrad.verify.inputs import randn
from handgrad.verify.known import KnownFailure


def _conv_inputs(n: int, c_in: int, height: int, width: int, c_out: int, kernel: int | tuple[int, int],
                 groups: int = 1, bias: bool = True):
    k_h, k_w = (kernel, kernel) if isinstance(kernel, int) else kernel

    def make(dtype, g):
        return dict(input=randn(n, c_in, height, width, dtype=dtype, generator=g),
                    weight=randn(c_out, c_in // groups, k_h, k_w, dtype=dtype, generator=g),
                    bias=randn(c_out, dtype=dtype, generator=g) if bias else None)
    return make


def padded_conv2d(pad: tuple[int, int, int, int], mode: str, conv2d=F.conv2d, padding=pad2d):
    """conv2d after padding by ``pad`` = (left, right, top, bottom) in ``mode``: what torch.nn.Conv2d runs for
    a padding_mode other than 'zeros' (handgrad's Pad2d, or torch's F.pad for the reference)."""
    def fn(input, weight, bias, **kwargs):
        return conv2d(padding(input, pad, mode), weight, bias, **kwargs)
    return fn


CASES: list[OpCase] = [
    OpCase("conv2d(3x3)", F.conv2d, torch_F.conv2d, _conv_inputs(2, 3, 6, 6, 3, 3)),
    OpCase("conv2d(stride=2, padding=1, odd 7x8)", F.conv2d, torch_F.conv2d, _conv_inputs(2, 3, 7, 8, 3, 3),
           dict(stride=2, padding=1)),
    OpCase("conv2d(dilation=2, padding=2)", F.conv2d, torch_F.conv2d, _conv_inputs(2, 2, 7, 7, 3, 3),
           dict(dilation=2, padding=2)),
    OpCase("conv2d(groups=3, no bias)", F.conv2d, torch_F.conv2d, _conv_inputs(2, 6, 5, 5, 6, 3, groups=3, bias=False),
           dict(groups=3)),
    OpCase("conv2d(groups=2, stride=(2,1), padding=(1,0), dilation=(1,2))", F.conv2d, torch_F.conv2d,
           _conv_inputs(2, 4, 5, 7, 4, 3, groups=2), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)),
    OpCase("conv2d(5x5, 1 channel, odd 9x11)", F.conv2d, torch_F.conv2d, _conv_inputs(2, 1, 9, 11, 2, 5)),
    OpCase("conv2d(padding='same')", F.conv2d, torch_F.conv2d, _conv_inputs(2, 2, 5, 5, 3, 3), dict(padding="same")),
    # an even kernel span: the odd row and column of zeros at the bottom and right (the hand-written Pad2d)
    OpCase("conv2d(padding='same', 2x4 kernel, dilation=(1,3))", F.conv2d, torch_F.conv2d,
           _conv_inputs(2, 2, 5, 6, 3, (2, 4)), dict(padding="same", dilation=(1, 3))),
    # torch.nn.Conv2d's padding_mode: Pad2d, then conv2d without padding
    *(OpCase(f"conv2d({mode} padding (2,1,1,0), stride=2)", padded_conv2d((2, 1, 1, 0), mode),
             padded_conv2d((2, 1, 1, 0), mode, torch_F.conv2d, torch_F.pad), _conv_inputs(2, 2, 5, 6, 3, 3),
             dict(stride=2)) for mode in ("reflect", "replicate", "circular")),
]

TORCH_OPS: dict[str, tuple[str, ...]] = {"conv2d": ("nn.functional.conv2d",)}
TORCH_MODULES: tuple[str, ...] = ("Conv2d",)
KNOWN_FAILURES: list[KnownFailure] = []
