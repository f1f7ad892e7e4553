"""Rows of the losses (mse_loss, cross_entropy) and their torch samples."""

from __future__ import annotations

import torch.nn.functional as torch_F

import handgrad.functional as F
from handgrad.verify.compare import OpCase
from handgrad.verify.inputs import class_indices, randn
from handgrad.verify.known import KnownFailure, first_order_samples
from handgrad.verify.transforms import first_order


def _mse_inputs(dtype, g):
    return dict(input=randn(6, 4, dtype=dtype, generator=g), target=randn(6, 4, dtype=dtype, generator=g))


def _cross_entropy_inputs(dtype, g):
    return dict(input=randn(8, 5, dtype=dtype, generator=g, scale=2.0), target=class_indices(8, 5, g))


MSE = first_order("MSELoss")
CROSS_ENTROPY = first_order(
    "CrossEntropy", vmap_grad="vmap: the wrapper's class-index check branches on the target's values (R7)")

CASES: list[OpCase] = [
    OpCase("mse_loss(mean)", F.mse_loss, torch_F.mse_loss, _mse_inputs, opt_out=MSE),
    OpCase("mse_loss(sum)", F.mse_loss, torch_F.mse_loss, _mse_inputs, dict(reduction="sum"), opt_out=MSE),
    OpCase("mse_loss(none)", F.mse_loss, torch_F.mse_loss, _mse_inputs, dict(reduction="none"), opt_out=MSE),
    OpCase("cross_entropy(mean)", F.cross_entropy, torch_F.cross_entropy, _cross_entropy_inputs,
           opt_out=CROSS_ENTROPY),
    OpCase("cross_entropy(sum)", F.cross_entropy, torch_F.cross_entropy, _cross_entropy_inputs, dict(reduction="sum"),
           opt_out=CROSS_ENTROPY),
    OpCase("cross_entropy(none)", F.cross_entropy, torch_F.cross_entropy, _cross_entropy_inputs,
           dict(reduction="none"), opt_out=CROSS_ENTROPY),
]

TORCH_OPS: dict[str, tuple[str, ...]] = {
    "mse_loss": ("nn.functional.mse_loss",),
    "cross_entropy": ("nn.functional.cross_entropy",),
}
TORCH_MODULES: tuple[str, ...] = ("MSELoss", "CrossEntropyLoss")
PROBABILITIES = "probability (floating) targets are not implemented"
K_DIMENSIONAL = "K-dimensional logits (N, C, d1, ...) are not implemented"
KNOWN_FAILURES: list[KnownFailure] = [
    *first_order_samples("mse_loss", "MSELoss", gradgradcheck=3, jvp=3),
    KnownFailure("cross_entropy", "samples", r"target must hold integer class indices", 8, PROBABILITIES),
    KnownFailure("cross_entropy", "samples", r"expected logits of shape \(N, C\) or \(C,\)", 12, K_DIMENSIONAL),
    KnownFailure("cross_entropy", "samples", r"unexpected keyword argument '(weight|ignore_index)'", 14,
                 "weight= and ignore_index= are not implemented"),
    *first_order_samples("cross_entropy", "CrossEntropy", gradgradcheck=1, jvp=1),
    *(KnownFailure("cross_entropy", check, r"target must hold integer class indices", 1, PROBABILITIES)
      for check in ("gradgradcheck", "vmap_grad", "jvp")),
    *(KnownFailure("cross_entropy", check, r"expected logits of shape \(N, C\) or \(C,\)", 1, K_DIMENSIONAL)
      for check in ("gradgradcheck", "vmap_grad", "jvp")),
    KnownFailure("CrossEntropyLoss", "samples", r"supports reduction only", 312,
                 "weight, ignore_index and label_smoothing are not implemented"),
    KnownFailure("CrossEntropyLoss", "samples", r"expected logits of shape \(N, C\) or \(C,\)", 72, K_DIMENSIONAL),
    KnownFailure("CrossEntropyLoss", "samples", r"target must hold integer class indices", 12, PROBABILITIES),
]
