"""Rows of the fused ops (linear_activation, max_pool2d_relu, mlp, mlp_loss), each against the composition of
plain torch ops it replaces. They have no torch namesake, so no torch samples."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as torch_F

import handgrad.functional as F
from handgrad.functional.fused import linear_activation, mlp
from handgrad.functional.mlp_loss import mlp_loss
from handgrad.verify.compare import Inputs, OpCase
from handgrad.verify.inputs import class_indices, linear_inputs, pool_inputs, randn
from handgrad.verify.known import KnownFailure

# The plain torch ops each fused activation stands for (applied after torch_F.linear).
TORCH_ACTIVATIONS: dict[str | None, Callable] = {
    "sigmoid": lambda z, negative_slope: torch.sigmoid(z),
    "tanh": lambda z, negative_slope: torch.tanh(z),
    "relu": lambda z, negative_slope: torch_F.relu(z),
    "leaky_relu": lambda z, negative_slope: torch_F.leaky_relu(z, negative_slope),
    "softmax": lambda z, negative_slope: torch_F.softmax(z, dim=-1),
    None: lambda z, negative_slope: z,
}


def linear_activation_reference(input, weight, bias, activation, negative_slope=0.01):
    return TORCH_ACTIVATIONS[activation](torch_F.linear(input, weight, bias), negative_slope)


def max_pool2d_relu_reference(input, **kwargs):
    return torch_F.max_pool2d(torch_F.relu(input), **kwargs)  # the usual order: ReLU, then pooling


def _layers(params: dict) -> tuple[list, list]:
    """weight0, bias0, weight1, ... (keyword arguments, so the table can name each) -> (weights, biases)."""
    depth = len(params) // 2
    return [params[f"weight{i}"] for i in range(depth)], [params[f"bias{i}"] for i in range(depth)]


def mlp_by_name(input, activation, output_activation=None, negative_slope=0.01, **params):
    """``mlp`` with its parameters passed one by one as weight0, bias0, weight1, bias1, ..."""
    weights, biases = _layers(params)
    return mlp(input, weights, biases, activation, output_activation, negative_slope)


def mlp_reference(input, activation, output_activation=None, negative_slope=0.01, **params):
    """The same network from plain torch ops, layer by layer."""
    weights, biases = _layers(params)
    a = input
    for i, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        f = output_activation if i == len(weights) - 1 else activation
        a = TORCH_ACTIVATIONS[f](torch_F.linear(a, weight, bias), negative_slope)
    return a


def mlp_loss_by_name(input, target, activation, output_activation=None, loss="cross_entropy", reduction="mean",
                     negative_slope=0.01, **params):
    """The loss of ``mlp_loss`` (not its detached output), parameters passed as weight0, bias0, ..."""
    weights, biases = _layers(params)
    value, _ = mlp_loss(input, target, weights, biases, activation, output_activation, loss, reduction, negative_slope)
    return value


def mlp_loss_reference(input, target, activation, output_activation=None, loss="cross_entropy", reduction="mean",
                       negative_slope=0.01, **params):
    """torch's loss of the plain-torch network."""
    output = mlp_reference(input, activation, output_activation, negative_slope, **params)
    torch_loss = torch_F.mse_loss if loss == "mse" else torch_F.cross_entropy
    return torch_loss(output, target, reduction=reduction)


def _mlp_inputs(*widths: int, bias: bool | list[bool] = True, target: str | None = None):
    """Inputs for an MLP of the given widths (input first), 7 rows; ``bias`` per layer or for all;
    ``target``: None, "values" (7, widths[-1]) for mse, or "classes" (7,) for cross-entropy."""
    has_bias = bias if isinstance(bias, list) else [bias] * (len(widths) - 1)

    def make(dtype, g):
        inputs: Inputs = dict(input=randn(7, widths[0], dtype=dtype, generator=g))
        if target == "values":
            inputs["target"] = randn(7, widths[-1], dtype=dtype, generator=g)
        elif target == "classes":
            inputs["target"] = class_indices(7, widths[-1], g)
        for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            inputs[f"weight{i}"] = randn(d_out, d_in, dtype=dtype, generator=g, scale=d_in**-0.5)
            inputs[f"bias{i}"] = randn(d_out, dtype=dtype, generator=g) if has_bias[i] else None
        return inputs

    return make



CASES: list[OpCase] = [
    *(OpCase(f"linear_activation({name})", linear_activation, linear_activation_reference, linear_inputs,
             dict(activation=activation))
      for name, activation in [("sigmoid", "sigmoid"), ("tanh", "tanh"), ("relu", "relu"), ("softmax", "softmax"),
                               ("identity", None)]),
    OpCase("linear_activation(leaky_relu)", linear_activation, linear_activation_reference, linear_inputs,
           dict(activation="leaky_relu", negative_slope=0.2)),
    OpCase("max_pool2d_relu(2x2)", F.max_pool2d_relu, max_pool2d_relu_reference, pool_inputs(2, 3, 8, 8),
           dict(kernel_size=2)),
    OpCase("max_pool2d_relu(3x3, stride=2, padding=1, odd 7x9)", F.max_pool2d_relu, max_pool2d_relu_reference,
           pool_inputs(2, 3, 7, 9), dict(kernel_size=3, stride=2, padding=1)),
    OpCase("max_pool2d_relu(3x3, stride=1)", F.max_pool2d_relu, max_pool2d_relu_reference, pool_inputs(2, 3, 6, 7),
           dict(kernel_size=3, stride=1)),
    OpCase("mlp(sigmoid, out=sigmoid)", mlp_by_name, mlp_reference, _mlp_inputs(5, 4, 3),
           dict(activation="sigmoid", output_activation="sigmoid")),
    OpCase("mlp(relu, out=None)", mlp_by_name, mlp_reference, _mlp_inputs(5, 6, 4, 3), dict(activation="relu")),
    OpCase("mlp(tanh, out=softmax)", mlp_by_name, mlp_reference, _mlp_inputs(5, 6, 4, 3),
           dict(activation="tanh", output_activation="softmax")),
    OpCase("mlp(leaky_relu, no hidden bias)", mlp_by_name, mlp_reference,
           _mlp_inputs(5, 6, 4, 3, bias=[True, False, True]), dict(activation="leaky_relu", negative_slope=0.2)),
    OpCase("mlp(one layer, sigmoid)", mlp_by_name, mlp_reference, _mlp_inputs(5, 3),
           dict(activation="relu", output_activation="sigmoid")),
    OpCase("mlp_loss(mse, sigmoid)", mlp_loss_by_name, mlp_loss_reference, _mlp_inputs(5, 4, 3, target="values"),
           dict(activation="sigmoid", output_activation="sigmoid", loss="mse")),
    OpCase("mlp_loss(mse, sum, relu)", mlp_loss_by_name, mlp_loss_reference,
           _mlp_inputs(5, 6, 4, 3, target="values"), dict(activation="relu", loss="mse", reduction="sum")),
    OpCase("mlp_loss(mse, leaky_relu, out=None)", mlp_loss_by_name, mlp_loss_reference,
           _mlp_inputs(5, 6, 3, target="values"), dict(activation="leaky_relu", loss="mse", negative_slope=0.2)),
    OpCase("mlp_loss(mse, tanh, out=softmax)", mlp_loss_by_name, mlp_loss_reference,
           _mlp_inputs(5, 6, 4, 3, target="values"), dict(activation="tanh", output_activation="softmax", loss="mse")),
    OpCase("mlp_loss(cross_entropy, relu)", mlp_loss_by_name, mlp_loss_reference,
           _mlp_inputs(5, 6, 4, 3, target="classes"), dict(activation="relu", loss="cross_entropy")),
    OpCase("mlp_loss(cross_entropy, sum, tanh)", mlp_loss_by_name, mlp_loss_reference,
           _mlp_inputs(5, 4, 3, bias=[False, True], target="classes"),
           dict(activation="tanh", loss="cross_entropy", reduction="sum")),
]

# handgrad's own ops: no torch namesake, so no OpInfo or ModuleInfo samples
TORCH_OPS: dict[str, tuple[str, ...]] = {}
TORCH_MODULES: tuple[str, ...] = ()
KNOWN_FAILURES: list[KnownFailure] = []
