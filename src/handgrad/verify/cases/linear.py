"""Rows of linear, and its torch samples (OpInfo nn.functional.linear, ModuleInfo nn.Linear)."""

from __future__ import annotations

import torch.nn.functional as torch_F

import handgrad.functional as F
from handgrad.verify.compare import OpCase
from handgrad.verify.inputs import linear_inputs
from handgrad.verify.known import KnownFailure

CASES: list[OpCase] = [
    OpCase("linear", F.linear, torch_F.linear, linear_inputs),
]

TORCH_OPS: dict[str, tuple[str, ...]] = {"linear": ("nn.functional.linear",)}  # handgrad op -> OpInfo full names
TORCH_MODULES: tuple[str, ...] = ("Linear",)  # handgrad.nn classes, run on their torch namesake's ModuleInfo
KNOWN_FAILURES: list[KnownFailure] = []
