"""Rows of dropout and the channel dropouts, and their torch samples (OpInfo nn.functional.dropout,
dropout2d, dropout3d, and a stand-in for dropout1d; nn.Dropout* inputs made from them, torch having no
ModuleInfo for these: verify/samples.py, module_samples.py)."""

from __future__ import annotations

import torch.nn.functional as torch_F

import handgrad.functional as F
from handgrad.verify.compare import OpCase
from handgrad.verify.inputs import elementwise_inputs, randn, seeded
from handgrad.verify.known import KnownFailure


def _channel_inputs(*shape: int):
    def make(dtype, g):
        return dict(input=randn(*shape, dtype=dtype, generator=g, scale=2.0))
    return make


# The same seed draws the same mask in both (bernoulli_(1 - p) on the global generator, over the shape torch
# draws in); under vmap each sample draws its own (randomness="different"), again the same in both.
CASES: list[OpCase] = [
    OpCase("dropout(p=0.3, seeded)", seeded(F.dropout), seeded(torch_F.dropout), elementwise_inputs, dict(p=0.3),
           randomness="different"),
    OpCase("dropout1d(N C L, p=0.4, seeded)", seeded(F.dropout1d), seeded(torch_F.dropout1d), _channel_inputs(4, 6, 5),
           dict(p=0.4), randomness="different"),
    OpCase("dropout2d(N C H W, p=0.3, seeded)", seeded(F.dropout2d), seeded(torch_F.dropout2d),
           _channel_inputs(4, 5, 3, 2), dict(p=0.3), randomness="different"),
    OpCase("dropout3d(N C D H W, p=0.5, seeded)", seeded(F.dropout3d), seeded(torch_F.dropout3d),
           _channel_inputs(3, 4, 2, 3, 2), dict(p=0.5), randomness="different"),
]

TORCH_OPS: dict[str, tuple[str, ...]] = {
    "dropout": ("nn.functional.dropout",),
    "dropout1d": ("nn.functional.dropout1d",),  # torch has no OpInfo: samples.stand_in_opinfo makes one
    "dropout2d": ("nn.functional.dropout2d",),
    "dropout3d": ("nn.functional.dropout3d",),
}
TORCH_MODULES: tuple[str, ...] = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d")
KNOWN_FAILURES: list[KnownFailure] = []
