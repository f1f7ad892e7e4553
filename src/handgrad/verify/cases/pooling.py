"""Rows of max_pool2d and avg_pool2d, and their torch samples (max_pool2d_relu's rows: cases/fused.py)."""

from __future__ import annotations

import torch.nn.functional as torch_F

import handgrad.functional as F
from handgrad.verify.compare import OpCase
from handgrad.verify.inputs import pool_inputs
from handgrad.verify.known import KnownFailure

CASES: list[OpCase] = [
    OpCase("max_pool2d(2x2)", F.max_pool2d, torch_F.max_pool2d, pool_inputs(2, 3, 8, 8), dict(kernel_size=2)),
    OpCase("max_pool2d(3x3, stride=2, padding=1, odd 7x9)", F.max_pool2d, torch_F.max_pool2d, pool_inputs(2, 3, 7, 9),
           dict(kernel_size=3, stride=2, padding=1)),
    OpCase("max_pool2d(3x3, stride=1)", F.max_pool2d, torch_F.max_pool2d, pool_inputs(2, 3, 6, 7),
           dict(kernel_size=3, stride=1)),
    OpCase("max_pool2d((3,2), stride=(2,1), padding=(1,0), ceil_mode)", F.max_pool2d, torch_F.max_pool2d,
           pool_inputs(2, 3, 8, 7), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), ceil_mode=True)),
    OpCase("max_pool2d(2x2, dilation=2, padding=1)", F.max_pool2d, torch_F.max_pool2d, pool_inputs(2, 3, 7, 7),
           dict(kernel_size=2, dilation=2, padding=1)),
    OpCase("avg_pool2d(2x2, odd 7x7)", F.avg_pool2d, torch_F.avg_pool2d, pool_inputs(2, 3, 7, 7), dict(kernel_size=2)),
    OpCase("avg_pool2d(3x3, stride=2, padding=1)", F.avg_pool2d, torch_F.avg_pool2d, pool_inputs(2, 3, 7, 8),
           dict(kernel_size=3, stride=2, padding=1)),
    OpCase("avg_pool2d(3x3, stride=2, padding=1, ceil_mode, count_include_pad=False)", F.avg_pool2d,
           torch_F.avg_pool2d, pool_inputs(2, 3, 8, 8),
           dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    OpCase("avg_pool2d((2,3), stride=1, divisor_override=4)", F.avg_pool2d, torch_F.avg_pool2d, pool_inputs(2, 3, 6, 6),
           dict(kernel_size=(2, 3), stride=1, divisor_override=4)),
    OpCase("avg_pool2d(3x3, stride=(1,), padding=(1,), divisor_override=-2)", F.avg_pool2d, torch_F.avg_pool2d,
           pool_inputs(2, 3, 6, 5), dict(kernel_size=3, stride=(1,), padding=(1,), divisor_override=-2)),
]

TORCH_OPS: dict[str, tuple[str, ...]] = {
    "max_pool2d": ("nn.functional.max_pool2d",),
    "avg_pool2d": ("nn.functional.avg_pool2d",),
}
TORCH_MODULES: tuple[str, ...] = ("MaxPool2d", "AvgPool2d")
KNOWN_FAILURES: list[KnownFailure] = []
