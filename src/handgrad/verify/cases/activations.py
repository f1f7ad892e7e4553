"""Rows of the activations (sigmoid, tanh, relu, leaky_relu, softplus, softmax, log_softmax) and their torch
samples."""

from __future__ import annotations

import torch
import torch.nn.functional as torch_F

import handgrad.functional as F
from handgrad.verify.compare import OpCase
from handgrad.verify.inputs import elementwise_inputs, kinked_inputs
from handgrad.verify.known import KnownFailure

CASES: list[OpCase] = [
    OpCase("sigmoid", F.sigmoid, torch.sigmoid, elementwise_inputs),
    OpCase("tanh", F.tanh, torch.tanh, elementwise_inputs),
    OpCase("relu", F.relu, torch_F.relu, kinked_inputs),
    OpCase("leaky_relu", F.leaky_relu, torch_F.leaky_relu, kinked_inputs, dict(negative_slope=0.2)),
    OpCase("softplus", F.softplus, torch_F.softplus, elementwise_inputs),
    OpCase("softplus(beta=2, threshold=3)", F.softplus, torch_F.softplus, elementwise_inputs,
           dict(beta=2.0, threshold=3.0)),  # some of the inputs (scale 2) lie past the threshold: y = x there
    OpCase("softmax(dim=1)", F.softmax, torch_F.softmax, elementwise_inputs, dict(dim=1)),
    OpCase("softmax(dim=0)", F.softmax, torch_F.softmax, elementwise_inputs, dict(dim=0)),
    OpCase("log_softmax(dim=1)", F.log_softmax, torch_F.log_softmax, elementwise_inputs, dict(dim=1)),
    OpCase("log_softmax(dim=0)", F.log_softmax, torch_F.log_softmax, elementwise_inputs, dict(dim=0)),
]

TORCH_OPS: dict[str, tuple[str, ...]] = {
    "sigmoid": ("sigmoid",),  # aliases: nn.functional.sigmoid, special.expit
    "tanh": ("tanh",),
    "relu": ("nn.functional.relu",),
    "leaky_relu": ("nn.functional.leaky_relu",),
    "softplus": ("nn.functional.softplus",),
    "softmax": ("softmax", "softmax.with_dtype"),
    "log_softmax": ("log_softmax", "log_softmax.with_dtype"),
}
TORCH_MODULES: tuple[str, ...] = ("Sigmoid", "Tanh", "ReLU", "LeakyReLU", "Softplus", "Softmax", "LogSoftmax")
KNOWN_FAILURES: list[KnownFailure] = []
