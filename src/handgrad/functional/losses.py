"""The losses, each the hand-written twin of its torch.nn.functional namesake, grouped by kind:

    classification   cross_entropy (class indices or probabilities)          cross_entropy.py
                     nll_loss (log-probabilities, class indices)              nll_loss.py
                     (their class-index targets: weights, ignore_index,       class_targets.py)
    binary           binary_cross_entropy, binary_cross_entropy_with_logits   binary.py
    regression       mse_loss, l1_loss, smooth_l1_loss, huber_loss            regression.py
    divergence       kl_div                                                   divergence.py
    (reduction arguments and the checks they share:                           reduction.py)

Every one is twice differentiable and has a jvp (rules R1-R8 of function.py). With reduction="mean" the
cost is averaged, so every gradient that flows back from it is the average of the per-element gradients.
"""

from __future__ import annotations

from handgrad.functional.binary import (
    BinaryCrossEntropy,
    BinaryCrossEntropyWithLogits,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
)
from handgrad.functional.cross_entropy import CrossEntropy, SoftCrossEntropy, cross_entropy
from handgrad.functional.divergence import KLDiv, kl_div
from handgrad.functional.nll_loss import NLLLoss, nll_loss
from handgrad.functional.regression import (
    PointwiseLoss,
    WeightedPointwiseLoss,
    huber_loss,
    l1_loss,
    mse_loss,
    smooth_l1_loss,
)

__all__ = [
    "BinaryCrossEntropy",
    "BinaryCrossEntropyWithLogits",
    "CrossEntropy",
    "KLDiv",
    "NLLLoss",
    "PointwiseLoss",
    "SoftCrossEntropy",
    "WeightedPointwiseLoss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "huber_loss",
    "kl_div",
    "l1_loss",
    "mse_loss",
    "nll_loss",
    "smooth_l1_loss",
]
