"""nn.Module wrappers: drop-in twins of torch.nn.

Each class subclasses its torch.nn namesake, so it has the very same constructor
arguments, parameters (names, shapes, default initialisation), buffers, ``state_dict``
keys and ``repr``. Only ``forward`` differs: it calls the hand-written function from
``handgrad.functional``. A ``state_dict`` therefore moves between a handgrad network
and its torch.nn twin unchanged.
"""

from __future__ import annotations

import torch

import handgrad.functional as F

__all__ = [
    "CrossEntropyLoss",
    "LeakyReLU",
    "Linear",
    "LogSoftmax",
    "MSELoss",
    "ReLU",
    "Sigmoid",
    "Softmax",
    "Tanh",
]

# --------------------------------------------------------------------------- layers with weights


class Linear(torch.nn.Linear):
    """y = x W^T + b with the hand-written backward of ``handgrad.functional.linear``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.weight, self.bias)


# --------------------------------------------------------------------------- activations


class Sigmoid(torch.nn.Sigmoid):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.sigmoid(input)


class Tanh(torch.nn.Tanh):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.tanh(input)


class ReLU(torch.nn.ReLU):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.relu(input)


class LeakyReLU(torch.nn.LeakyReLU):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(input, self.negative_slope)


class Softmax(torch.nn.Softmax):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.softmax(input, self.dim)


class LogSoftmax(torch.nn.LogSoftmax):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(input, self.dim)


# --------------------------------------------------------------------------- losses


class MSELoss(torch.nn.MSELoss):
    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(input, target, reduction=self.reduction)


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """Softmax cross-entropy on logits; ``weight``, ``ignore_index`` and ``label_smoothing``
    are not hand-written yet and are refused rather than silently ignored."""

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                 label_smoothing=0.0):
        if weight is not None or ignore_index != -100 or label_smoothing != 0.0:
            raise NotImplementedError(
                "handgrad.nn.CrossEntropyLoss supports reduction only; weight, ignore_index and "
                "label_smoothing are not implemented (use torch.nn.CrossEntropyLoss for those)"
            )
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(input, target, reduction=self.reduction)
