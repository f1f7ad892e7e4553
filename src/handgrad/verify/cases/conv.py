"""Rows of conv2d, and its torch samples (OpInfo nn.functional.conv2d, ModuleInfo nn.Conv2d)."""

from __future__ import annotations

import torch.nn.functional as torch_F

import handgrad.functional as F
from handgrad.verify.compare import OpCase
from handgrad.verify.inputs import randn
from handgrad.verify.known import KnownFailure, first_order_samples
from handgrad.verify.transforms import first_order


def _conv_inputs(n: int, c_in: int, height: int, width: int, c_out: int, kernel: int, groups: int = 1,
                 bias: bool = True):
    def make(dtype, g):
        return dict(input=randn(n, c_in, height, width, dtype=dtype, generator=g),
                    weight=randn(c_out, c_in // groups, kernel, kernel, dtype=dtype, generator=g),
                    bias=randn(c_out, dtype=dtype, generator=g) if bias else None)
    return make


CONV = first_order("Conv2d")

CASES: list[OpCase] = [
    OpCase("conv2d(3x3)", F.conv2d, torch_F.conv2d, _conv_inputs(2, 3, 6, 6, 3, 3), opt_out=CONV),
    OpCase("conv2d(stride=2, padding=1, odd 7x8)", F.conv2d, torch_F.conv2d, _conv_inputs(2, 3, 7, 8, 3, 3),
           dict(stride=2, padding=1), opt_out=CONV),
    OpCase("conv2d(dilation=2, padding=2)", F.conv2d, torch_F.conv2d, _conv_inputs(2, 2, 7, 7, 3, 3),
           dict(dilation=2, padding=2), opt_out=CONV),
    OpCase("conv2d(groups=3, no bias)", F.conv2d, torch_F.conv2d, _conv_inputs(2, 6, 5, 5, 6, 3, groups=3, bias=False),
           dict(groups=3), opt_out=CONV),
    OpCase("conv2d(groups=2, stride=(2,1), padding=(1,0), dilation=(1,2))", F.conv2d, torch_F.conv2d,
           _conv_inputs(2, 4, 5, 7, 4, 3, groups=2), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2),
           opt_out=CONV),
    OpCase("conv2d(5x5, 1 channel, odd 9x11)", F.conv2d, torch_F.conv2d, _conv_inputs(2, 1, 9, 11, 2, 5), opt_out=CONV),
    OpCase("conv2d(padding='same')", F.conv2d, torch_F.conv2d, _conv_inputs(2, 2, 5, 5, 3, 3), dict(padding="same"),
           opt_out=CONV),
]

TORCH_OPS: dict[str, tuple[str, ...]] = {"conv2d": ("nn.functional.conv2d",)}
TORCH_MODULES: tuple[str, ...] = ("Conv2d",)
KNOWN_FAILURES: list[KnownFailure] = [
    KnownFailure("conv2d", "samples", r"padding='same' with kernel .* needs uneven padding", 4,
                 "padding='same' with an even kernel span needs uneven padding, not implemented"),
    *first_order_samples("conv2d", "Conv2d", gradgradcheck=3, jvp=3),
]
