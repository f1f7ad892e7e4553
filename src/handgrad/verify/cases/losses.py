"""Rows of the losses and their torch samples (OpInfo nn.functional.<loss>, ModuleInfo nn.<Loss>).

Each row draws inputs away from the losses' kinks (|d| = 0 for l1, |d| = beta or delta) only by chance of
measure zero; probabilities lie inside (0, 1), so every finite-difference step stays in the domain.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as torch_F

import handgrad.functional as F
from handgrad.verify.compare import OpCase
from handgrad.verify.inputs import class_indices, randn
from handgrad.verify.known import KnownFailure


def _pair(dtype, g):
    return dict(input=randn(6, 4, dtype=dtype, generator=g), target=randn(6, 4, dtype=dtype, generator=g))


def _weighted_pair(dtype, g):
    return dict(_pair(dtype, g), weight=(torch.rand(6, 4, dtype=dtype, generator=g) + 0.5).requires_grad_())


def _broadcast_pair(dtype, g):
    return dict(input=randn(6, 4, dtype=dtype, generator=g), target=randn(4, dtype=dtype, generator=g))


def quietly(loss):
    """``loss`` without its warning that input and target broadcast (the row broadcasts on purpose)."""
    def fn(**kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(broadcast|different to the input size)")
            return loss(**kwargs)
    return fn


def _cross_entropy_inputs(dtype, g):
    return dict(input=randn(8, 5, dtype=dtype, generator=g, scale=2.0), target=class_indices(8, 5, g))


def _ignored_and_weighted(dtype, g):
    """Every third target ignored (torch's default ignore_index, -100), class weights in [0.5, 1.5)."""
    inputs = _cross_entropy_inputs(dtype, g)
    inputs["target"][::3] = -100
    return dict(inputs, weight=torch.rand(5, dtype=dtype, generator=g) + 0.5)


def _k_dimensional(*spatial: int):
    """Logits (3, 4, *spatial), a target (3, *spatial) with one ignored entry, class weights."""
    def make(dtype, g):
        target = torch.randint(4, (3, *spatial), generator=g)
        target[0, 0] = -100
        return dict(input=randn(3, 4, *spatial, dtype=dtype, generator=g, scale=2.0), target=target,
                    weight=torch.rand(4, dtype=dtype, generator=g) + 0.5)
    return make


def _probabilities(dtype, g):
    target = torch.softmax(torch.randn(6, 5, dtype=dtype, generator=g), 1)
    return dict(input=randn(6, 5, dtype=dtype, generator=g, scale=2.0), target=target.requires_grad_(),
                weight=(torch.rand(5, dtype=dtype, generator=g) + 0.5).requires_grad_())


def _log_probabilities(dtype, g):
    inputs = _ignored_and_weighted(dtype, g)
    return dict(inputs, input=torch.log_softmax(inputs["input"].detach(), 1).requires_grad_())


def _probability_pair(dtype, g):
    return dict(input=(torch.rand(6, 4, dtype=dtype, generator=g) * 0.9 + 0.05).requires_grad_(),
                target=torch.rand(6, 4, dtype=dtype, generator=g).requires_grad_(),
                weight=torch.rand(4, dtype=dtype, generator=g) + 0.5)


def _logits_pair(dtype, g):
    return dict(input=randn(6, 4, dtype=dtype, generator=g, scale=3.0),
                target=torch.rand(6, 4, dtype=dtype, generator=g).requires_grad_(),
                weight=torch.rand(4, dtype=dtype, generator=g) + 0.5,
                pos_weight=torch.rand(4, dtype=dtype, generator=g) * 2 + 0.5)


def _distributions(log_target: bool):
    def make(dtype, g):
        target = torch.randn(6, 5, dtype=dtype, generator=g).log_softmax(1)
        return dict(input=torch.randn(6, 5, dtype=dtype, generator=g).log_softmax(1).requires_grad_(),
                    target=(target if log_target else target.exp()).requires_grad_())
    return make


CASES: list[OpCase] = [
    OpCase("mse_loss(mean)", F.mse_loss, torch_F.mse_loss, _pair),
    OpCase("mse_loss(sum)", F.mse_loss, torch_F.mse_loss, _pair, dict(reduction="sum")),
    OpCase("mse_loss(none)", F.mse_loss, torch_F.mse_loss, _pair, dict(reduction="none")),
    OpCase("mse_loss(weight)", F.mse_loss, torch_F.mse_loss, _weighted_pair),
    OpCase("mse_loss(broadcast)", quietly(F.mse_loss), quietly(torch_F.mse_loss), _broadcast_pair),
    OpCase("cross_entropy(mean)", F.cross_entropy, torch_F.cross_entropy, _cross_entropy_inputs),
    OpCase("cross_entropy(sum)", F.cross_entropy, torch_F.cross_entropy, _cross_entropy_inputs, dict(reduction="sum")),
    OpCase("cross_entropy(none)", F.cross_entropy, torch_F.cross_entropy, _cross_entropy_inputs,
           dict(reduction="none")),
    OpCase("cross_entropy(weight, ignore_index)", F.cross_entropy, torch_F.cross_entropy, _ignored_and_weighted),
    OpCase("cross_entropy(weight, ignore_index, label_smoothing)", F.cross_entropy, torch_F.cross_entropy,
           _ignored_and_weighted, dict(label_smoothing=0.2)),
    OpCase("cross_entropy(K-dimensional, none)", F.cross_entropy, torch_F.cross_entropy, _k_dimensional(2, 3),
           dict(reduction="none", label_smoothing=0.1)),
    OpCase("cross_entropy(probabilities)", F.cross_entropy, torch_F.cross_entropy, _probabilities,
           dict(label_smoothing=0.1)),
    OpCase("nll_loss(weight, ignore_index)", F.nll_loss, torch_F.nll_loss, _log_probabilities),
    # (N, C, d): torch's nll_loss2d, which 4-d inputs take, refuses non-contiguous ones in backward
    OpCase("nll_loss(K-dimensional, sum)", F.nll_loss, torch_F.nll_loss, _k_dimensional(5), dict(reduction="sum")),
    OpCase("binary_cross_entropy(weight)", F.binary_cross_entropy, torch_F.binary_cross_entropy, _probability_pair),
    OpCase("binary_cross_entropy(none)", F.binary_cross_entropy, torch_F.binary_cross_entropy, _probability_pair,
           dict(reduction="none")),
    OpCase("binary_cross_entropy_with_logits(weight, pos_weight)", F.binary_cross_entropy_with_logits,
           torch_F.binary_cross_entropy_with_logits, _logits_pair),
    OpCase("binary_cross_entropy_with_logits(none)", F.binary_cross_entropy_with_logits,
           torch_F.binary_cross_entropy_with_logits, _pair, dict(reduction="none")),
    OpCase("l1_loss(mean)", F.l1_loss, torch_F.l1_loss, _pair),
    OpCase("l1_loss(weight, sum)", F.l1_loss, torch_F.l1_loss, _weighted_pair, dict(reduction="sum")),
    OpCase("smooth_l1_loss(beta=0.5)", F.smooth_l1_loss, torch_F.smooth_l1_loss, _pair, dict(beta=0.5)),
    OpCase("smooth_l1_loss(beta=0, none)", F.smooth_l1_loss, torch_F.smooth_l1_loss, _pair,
           dict(beta=0.0, reduction="none")),
    OpCase("huber_loss(delta=0.5)", F.huber_loss, torch_F.huber_loss, _pair, dict(delta=0.5)),
    OpCase("huber_loss(weight)", F.huber_loss, torch_F.huber_loss, _weighted_pair, dict(delta=1.5)),
    OpCase("kl_div(batchmean)", F.kl_div, torch_F.kl_div, _distributions(False), dict(reduction="batchmean")),
    OpCase("kl_div(log_target, none)", F.kl_div, torch_F.kl_div, _distributions(True),
           dict(reduction="none", log_target=True)),
]

TORCH_OPS: dict[str, tuple[str, ...]] = {
    "mse_loss": ("nn.functional.mse_loss",),
    "cross_entropy": ("nn.functional.cross_entropy",),
    "nll_loss": ("nn.functional.nll_loss",),
    "binary_cross_entropy": ("nn.functional.binary_cross_entropy",),
    "binary_cross_entropy_with_logits": ("nn.functional.binary_cross_entropy_with_logits",),
    "l1_loss": ("nn.functional.l1_loss",),
    "smooth_l1_loss": ("nn.functional.smooth_l1_loss",),
    "huber_loss": ("nn.functional.huber_loss",),
    "kl_div": ("nn.functional.kl_div",),
}
TORCH_MODULES: tuple[str, ...] = ("MSELoss", "CrossEntropyLoss", "NLLLoss", "BCELoss", "BCEWithLogitsLoss", "L1Loss",
                                  "SmoothL1Loss", "HuberLoss", "KLDivLoss")
KNOWN_FAILURES: list[KnownFailure] = []
