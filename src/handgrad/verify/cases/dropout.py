"""Rows of dropout, and its torch samples (OpInfo nn.functional.dropout; nn.Dropout, made from them)."""

from __future__ import annotations

import torch.nn.functional as torch_F

import handgrad.functional as F
from handgrad.verify.compare import OpCase
from handgrad.verify.inputs import elementwise_inputs, seeded
from handgrad.verify.known import KnownFailure

CASES: list[OpCase] = [
    # The same seed draws the same mask in both (bernoulli_(1 - p) on the global generator, as torch does);
    # under vmap each sample draws its own (randomness="different"), again the same in both.
    OpCase("dropout(p=0.3, seeded)", seeded(F.dropout), seeded(torch_F.dropout), elementwise_inputs, dict(p=0.3),
           randomness="different"),
]

TORCH_OPS: dict[str, tuple[str, ...]] = {"dropout": ("nn.functional.dropout",)}
TORCH_MODULES: tuple[str, ...] = ("Dropout",)
KNOWN_FAILURES: list[KnownFailure] = []
