"""Proof that a hand-written backward equals autograd's: one helper, one table of ops.

``compare(hand, reference, inputs)`` runs an op and its torch reference on identical
copies of the inputs, pushes the same random upstream gradient through both, and returns
the outputs and every input's gradient side by side. ``OP_CASES`` is the table of every
op in ``handgrad.functional`` with its torch reference and a generator of inputs; the
tests and ``scripts/check_grads.py`` both read it.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, cast

import torch
import torch.nn.functional as torch_F

import handgrad.functional as F
from handgrad.functional.fused import linear_activation, mlp
from handgrad.functional.mlp_loss import mlp_loss

Inputs = dict[str, object]


@dataclass(frozen=True)
class OpCase:
    """One row of the verification table.

    ``make_inputs(dtype, generator)`` returns the op's keyword arguments; floating-point
    tensors among them are leaves with ``requires_grad=True``. ``kwargs`` holds the
    non-tensor arguments shared by both ops.
    """

    name: str
    hand: Callable
    reference: Callable
    make_inputs: Callable[[torch.dtype, torch.Generator], Inputs]
    kwargs: dict = field(default_factory=dict)

    def inputs(self, dtype: torch.dtype = torch.float64, seed: int = 0) -> Inputs:
        return self.make_inputs(dtype, torch.Generator().manual_seed(seed))


@dataclass
class Comparison:
    """Outputs and gradients of the hand-written op and its reference, by input name."""

    output: torch.Tensor
    expected_output: torch.Tensor
    grads: dict[str, torch.Tensor | None]
    expected_grads: dict[str, torch.Tensor | None]

    def assert_close(self, **tolerances) -> None:
        torch.testing.assert_close(self.output, self.expected_output, **tolerances)
        assert self.grads.keys() == self.expected_grads.keys()
        for name, expected in self.expected_grads.items():
            actual = self.grads[name]
            if expected is None or actual is None:
                assert actual is None and expected is None, f"grad of {name!r}: {actual} vs {expected}"
                continue
            torch.testing.assert_close(actual, expected, msg=gradient_message(name), **tolerances)

    def max_errors(self) -> tuple[float, float]:
        """(max absolute error, max error relative to the reference's largest magnitude) over all gradients."""
        abs_err = rel_err = 0.0
        for name, expected in self.expected_grads.items():
            actual = self.grads[name]
            if expected is None or actual is None:
                continue
            err = (actual - expected).abs().max().item()
            abs_err = max(abs_err, err)
            rel_err = max(rel_err, err / max(expected.abs().max().item(), torch.finfo(expected.dtype).tiny))
        return abs_err, rel_err


def gradient_message(name: str) -> Callable[[str], str]:
    """assert_close's message for the gradient of input ``name``."""
    return lambda message: f"gradient of {name!r}: {message}"


def fresh_copies(inputs: Inputs) -> Inputs:
    """Detached copies of the inputs, keeping each tensor's requires_grad and layout (strides)."""
    copies = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            copy = torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=value.device)
            copy.copy_(value.detach())
            value = copy.requires_grad_(value.requires_grad)
        copies[name] = value
    return copies


def compare(hand: Callable, reference: Callable, inputs: Inputs, kwargs: dict | None = None,
            seed: int = 0) -> Comparison:
    """Run ``hand`` and ``reference`` on copies of ``inputs`` and backpropagate one random upstream gradient."""
    kwargs = kwargs or {}
    runs = []
    for fn in (hand, reference):
        args = fresh_copies(inputs)
        output = fn(**args, **kwargs)
        # seed + 1: the inputs were drawn from ``seed``; an upstream gradient from the same stream
        # would be a copy of them and could make some gradients vanish (batch norm's, for one).
        generator = torch.Generator(device=output.device).manual_seed(seed + 1)
        grad_output = torch.randn(output.shape, dtype=output.dtype, device=output.device, generator=generator)
        leaves = {n: v for n, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad}
        if leaves:
            output.backward(grad_output)
        runs.append((output.detach(), {n: v.grad for n, v in leaves.items()}))
    (output, grads), (expected_output, expected_grads) = runs
    return Comparison(output, expected_output, grads, expected_grads)


def gradcheck(hand: Callable, inputs: Inputs, kwargs: dict | None = None) -> bool:
    """torch.autograd.gradcheck of ``hand`` (finite differences vs its backward), in the inputs' dtype."""
    kwargs = kwargs or {}
    names = [n for n, v in inputs.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    fixed = {n: v for n, v in inputs.items() if n not in names}

    def fn(*tensors):
        return hand(**dict(zip(names, tensors, strict=True)), **fixed, **kwargs)

    return torch.autograd.gradcheck(fn, tuple(cast(torch.Tensor, inputs[n]) for n in names))


# --------------------------------------------------------------------------- input generators


def randn(*shape: int, dtype: torch.dtype, generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, dtype=dtype, generator=generator) * scale).requires_grad_()


def away_from_zero(*shape: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """Random values with |x| >= 0.1, so finite differences never straddle a kink at 0."""
    x = torch.randn(shape, dtype=dtype, generator=generator)
    return (x + 0.1 * x.sign()).requires_grad_()


def class_indices(n: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(num_classes, (n,), generator=generator)


def _linear_inputs(dtype, g):
    return dict(input=randn(7, 5, dtype=dtype, generator=g), weight=randn(3, 5, dtype=dtype, generator=g),
                bias=randn(3, dtype=dtype, generator=g))


def _elementwise_inputs(dtype, g):
    return dict(input=randn(6, 9, dtype=dtype, generator=g, scale=2.0))


def _kinked_inputs(dtype, g):
    return dict(input=away_from_zero(6, 9, dtype=dtype, generator=g))


def _mse_inputs(dtype, g):
    return dict(input=randn(6, 4, dtype=dtype, generator=g), target=randn(6, 4, dtype=dtype, generator=g))


def _cross_entropy_inputs(dtype, g):
    return dict(input=randn(8, 5, dtype=dtype, generator=g, scale=2.0), target=class_indices(8, 5, g))


# --------------------------------------------------------------------------- the table: MLP ops

MLP_CASES: list[OpCase] = [
    OpCase("linear", F.linear, torch_F.linear, _linear_inputs),
    OpCase("sigmoid", F.sigmoid, torch.sigmoid, _elementwise_inputs),
    OpCase("tanh", F.tanh, torch.tanh, _elementwise_inputs),
    OpCase("relu", F.relu, torch_F.relu, _kinked_inputs),
    OpCase("leaky_relu", F.leaky_relu, torch_F.leaky_relu, _kinked_inputs, dict(negative_slope=0.2)),
    OpCase("softmax(dim=1)", F.softmax, torch_F.softmax, _elementwise_inputs, dict(dim=1)),
    OpCase("softmax(dim=0)", F.softmax, torch_F.softmax, _elementwise_inputs, dict(dim=0)),
    OpCase("log_softmax(dim=1)", F.log_softmax, torch_F.log_softmax, _elementwise_inputs, dict(dim=1)),
    OpCase("log_softmax(dim=0)", F.log_softmax, torch_F.log_softmax, _elementwise_inputs, dict(dim=0)),
    OpCase("mse_loss(mean)", F.mse_loss, torch_F.mse_loss, _mse_inputs),
    OpCase("mse_loss(sum)", F.mse_loss, torch_F.mse_loss, _mse_inputs, dict(reduction="sum")),
    OpCase("mse_loss(none)", F.mse_loss, torch_F.mse_loss, _mse_inputs, dict(reduction="none")),
    OpCase("cross_entropy(mean)", F.cross_entropy, torch_F.cross_entropy, _cross_entropy_inputs),
    OpCase("cross_entropy(sum)", F.cross_entropy, torch_F.cross_entropy, _cross_entropy_inputs, dict(reduction="sum")),
    OpCase("cross_entropy(none)", F.cross_entropy, torch_F.cross_entropy, _cross_entropy_inputs,
           dict(reduction="none")),
]

# --------------------------------------------------------------------------- the table: CNN and regularisation ops


def distinct(*shape: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """Shuffled values 0.05 apart: no two inputs tie for a window's maximum, even after a finite-difference step."""
    n = torch.Size(shape).numel()
    values = (torch.randperm(n, generator=generator).to(dtype) - n / 2) * 0.05
    return values.reshape(shape).requires_grad_()


def _conv_inputs(n: int, c_in: int, height: int, width: int, c_out: int, kernel: int, groups: int = 1,
                 bias: bool = True):
    def make(dtype, g):
        return dict(input=randn(n, c_in, height, width, dtype=dtype, generator=g),
                    weight=randn(c_out, c_in // groups, kernel, kernel, dtype=dtype, generator=g),
                    bias=randn(c_out, dtype=dtype, generator=g) if bias else None)
    return make


def _pool_inputs(n: int, c: int, height: int, width: int):
    def make(dtype, g):
        return dict(input=distinct(n, c, height, width, dtype=dtype, generator=g))
    return make


def _norm_inputs(*shape: int, affine: bool = True, normalized_ndim: int | None = None):
    """Input of ``shape``; with ``normalized_ndim`` (layer norm) weight and bias over the last dims, else
    (batch norm) per channel, with running statistics (not differentiated)."""
    def make(dtype, g):
        params = shape[-normalized_ndim:] if normalized_ndim else shape[1:2]
        # Uniform on [-1, 3), not randn: compare() draws grad_output with randn from the same seed, and a grad_output
        # affine in the input lies in the null space of the normalisation's backward (grad_input would be ~0).
        inputs = dict(input=(4 * torch.rand(shape, dtype=dtype, generator=g) - 1).requires_grad_(),
                      weight=randn(*params, dtype=dtype, generator=g) if affine else None,
                      bias=randn(*params, dtype=dtype, generator=g) if affine else None)
        if not normalized_ndim:
            inputs["running_mean"] = torch.randn(shape[1], dtype=dtype, generator=g)
            inputs["running_var"] = torch.rand(shape[1], dtype=dtype, generator=g) + 0.5
        return inputs
    return make


def seeded(dropout: Callable, seed: int = 0) -> Callable:
    """``dropout`` with the global generator reseeded on each call, so every call drops the same
    elements (gradcheck calls it many times); the caller's generator state is left as it was."""
    def fn(input, **kwargs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return dropout(input, **kwargs)
    return fn


CNN_CASES: list[OpCase] = [
    OpCase("conv2d(3x3)", F.conv2d, torch_F.conv2d, _conv_inputs(2, 3, 6, 6, 3, 3)),
    OpCase("conv2d(stride=2, padding=1, odd 7x8)", F.conv2d, torch_F.conv2d, _conv_inputs(2, 3, 7, 8, 3, 3),
           dict(stride=2, padding=1)),
    OpCase("conv2d(dilation=2, padding=2)", F.conv2d, torch_F.conv2d, _conv_inputs(2, 2, 7, 7, 3, 3),
           dict(dilation=2, padding=2)),
    OpCase("conv2d(groups=3, no bias)", F.conv2d, torch_F.conv2d, _conv_inputs(2, 6, 5, 5, 6, 3, groups=3, bias=False),
           dict(groups=3)),
    OpCase("conv2d(groups=2, stride=(2,1), padding=(1,0), dilation=(1,2))", F.conv2d, torch_F.conv2d,
           _conv_inputs(2, 4, 5, 7, 4, 3, groups=2), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)),
    OpCase("conv2d(5x5, 1 channel, odd 9x11)", F.conv2d, torch_F.conv2d, _conv_inputs(2, 1, 9, 11, 2, 5)),
    OpCase("conv2d(padding='same')", F.conv2d, torch_F.conv2d, _conv_inputs(2, 2, 5, 5, 3, 3), dict(padding="same")),
    OpCase("max_pool2d(2x2)", F.max_pool2d, torch_F.max_pool2d, _pool_inputs(2, 3, 8, 8), dict(kernel_size=2)),
    OpCase("max_pool2d(3x3, stride=2, padding=1, odd 7x9)", F.max_pool2d, torch_F.max_pool2d, _pool_inputs(2, 3, 7, 9),
           dict(kernel_size=3, stride=2, padding=1)),
    OpCase("max_pool2d(3x3, stride=1)", F.max_pool2d, torch_F.max_pool2d, _pool_inputs(2, 3, 6, 7),
           dict(kernel_size=3, stride=1)),
    OpCase("max_pool2d((3,2), stride=(2,1), padding=(1,0), ceil_mode)", F.max_pool2d, torch_F.max_pool2d,
           _pool_inputs(2, 3, 8, 7), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), ceil_mode=True)),
    OpCase("max_pool2d(2x2, dilation=2, padding=1)", F.max_pool2d, torch_F.max_pool2d, _pool_inputs(2, 3, 7, 7),
           dict(kernel_size=2, dilation=2, padding=1)),
    OpCase("avg_pool2d(2x2, odd 7x7)", F.avg_pool2d, torch_F.avg_pool2d, _pool_inputs(2, 3, 7, 7), dict(kernel_size=2)),
    OpCase("avg_pool2d(3x3, stride=2, padding=1)", F.avg_pool2d, torch_F.avg_pool2d, _pool_inputs(2, 3, 7, 8),
           dict(kernel_size=3, stride=2, padding=1)),
    OpCase("avg_pool2d(3x3, stride=2, padding=1, ceil_mode, count_include_pad=False)", F.avg_pool2d,
           torch_F.avg_pool2d, _pool_inputs(2, 3, 8, 8),
           dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    OpCase("avg_pool2d((2,3), stride=1, divisor_override=4)", F.avg_pool2d, torch_F.avg_pool2d,
           _pool_inputs(2, 3, 6, 6),
           dict(kernel_size=(2, 3), stride=1, divisor_override=4)),
    OpCase("batch_norm(train, N C)", F.batch_norm, torch_F.batch_norm, _norm_inputs(8, 3), dict(training=True)),
    OpCase("batch_norm(train, N C H W)", F.batch_norm, torch_F.batch_norm, _norm_inputs(2, 3, 4, 5),
           dict(training=True)),
    OpCase("batch_norm(train, N C L, no affine)", F.batch_norm, torch_F.batch_norm, _norm_inputs(4, 3, 5, affine=False),
           dict(training=True)),
    OpCase("batch_norm(train, N C H W, no affine, momentum=0.5)", F.batch_norm, torch_F.batch_norm,
           _norm_inputs(2, 3, 4, 5, affine=False), dict(training=True, momentum=0.5)),
    OpCase("batch_norm(eval, N C)", F.batch_norm, torch_F.batch_norm, _norm_inputs(8, 3), dict(training=False)),
    OpCase("batch_norm(eval, N C H W)", F.batch_norm, torch_F.batch_norm, _norm_inputs(2, 3, 4, 5),
           dict(training=False)),
    OpCase("batch_norm(eval, N C H W, no affine)", F.batch_norm, torch_F.batch_norm,
           _norm_inputs(2, 3, 4, 5, affine=False), dict(training=False)),
    OpCase("layer_norm(last dim)", F.layer_norm, torch_F.layer_norm, _norm_inputs(3, 4, 5, normalized_ndim=1),
           dict(normalized_shape=(5,))),
    OpCase("layer_norm(last 2 dims)", F.layer_norm, torch_F.layer_norm, _norm_inputs(3, 4, 5, normalized_ndim=2),
           dict(normalized_shape=(4, 5))),
    OpCase("layer_norm(last 2 dims, no affine)", F.layer_norm, torch_F.layer_norm,
           _norm_inputs(3, 4, 5, affine=False, normalized_ndim=2), dict(normalized_shape=(4, 5))),
    # The same seed draws the same mask in both (bernoulli_(1 - p) on the global generator, as torch does).
    OpCase("dropout(p=0.3, seeded)", seeded(F.dropout), seeded(torch_F.dropout), _elementwise_inputs, dict(p=0.3)),
]

# --------------------------------------------------------------------------- the table: fused ops

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


FUSED_CASES: list[OpCase] = [
    *(OpCase(f"linear_activation({name})", linear_activation, linear_activation_reference, _linear_inputs,
             dict(activation=activation))
      for name, activation in [("sigmoid", "sigmoid"), ("tanh", "tanh"), ("relu", "relu"), ("softmax", "softmax"),
                               ("identity", None)]),
    OpCase("linear_activation(leaky_relu)", linear_activation, linear_activation_reference, _linear_inputs,
           dict(activation="leaky_relu", negative_slope=0.2)),
    OpCase("max_pool2d_relu(2x2)", F.max_pool2d_relu, max_pool2d_relu_reference, _pool_inputs(2, 3, 8, 8),
           dict(kernel_size=2)),
    OpCase("max_pool2d_relu(3x3, stride=2, padding=1, odd 7x9)", F.max_pool2d_relu, max_pool2d_relu_reference,
           _pool_inputs(2, 3, 7, 9), dict(kernel_size=3, stride=2, padding=1)),
    OpCase("max_pool2d_relu(3x3, stride=1)", F.max_pool2d_relu, max_pool2d_relu_reference, _pool_inputs(2, 3, 6, 7),
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
    OpCase("mlp_loss(cross_entropy, relu)", mlp_loss_by_name, mlp_loss_reference,
           _mlp_inputs(5, 6, 4, 3, target="classes"), dict(activation="relu", loss="cross_entropy")),
    OpCase("mlp_loss(cross_entropy, sum, tanh)", mlp_loss_by_name, mlp_loss_reference,
           _mlp_inputs(5, 4, 3, bias=[False, True], target="classes"),
           dict(activation="tanh", loss="cross_entropy", reduction="sum")),
]

OP_CASES: list[OpCase] = MLP_CASES + CNN_CASES + FUSED_CASES

# --------------------------------------------------------------------------- the table: recurrent layers

class RecurrentOps(NamedTuple):
    hand: Callable        # handgrad's op over a sequence
    torch: Callable       # torch's (what torch.nn's layer calls)
    hand_cell: Callable   # handgrad's one-step op
    torch_cell: Callable  # torch's
    gates: int            # gate blocks per cell: weight_ih is (gates * hidden, input_size)


RECURRENT_OPS = {
    "rnn_tanh": RecurrentOps(F.rnn_tanh, torch.rnn_tanh, F.rnn_tanh_cell, torch.rnn_tanh_cell, 1),
    "rnn_relu": RecurrentOps(F.rnn_relu, torch.rnn_relu, F.rnn_relu_cell, torch.rnn_relu_cell, 1),
    "lstm": RecurrentOps(F.lstm, torch.lstm, F.lstm_cell, torch.lstm_cell, 4),
    "gru": RecurrentOps(F.gru, torch.gru, F.gru_cell, torch.gru_cell, 3),
}
PARAMETER_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def flat_parameters(params: dict, num_layers: int, bidirectional: bool) -> list[torch.Tensor]:
    """weight_ih_l0, weight_hh_l0, bias_ih_l0, ..., weight_hr_l1_reverse (torch.nn's names, as keyword
    arguments, so the table names each gradient) -> the flat list in torch.nn's ``_flat_weights`` order."""
    suffixes = ("", "_reverse") if bidirectional else ("",)
    return [params[key] for layer in range(num_layers) for suffix in suffixes
            for key in (f"{name}_l{layer}{suffix}" for name in PARAMETER_NAMES) if key in params]


def recurrent_by_name(input, h_0=None, c_0=None, kind="lstm", returns="output", num_layers=1, bidirectional=False,
                      batch_first=False, dropout=0.0, train=False, reference=False, **params):
    """One of (output, h_n, c_n) of handgrad's recurrent op (or torch's, with ``reference``), ``returns`` naming
    it; missing initial states are zeros, unbatched (T, H_in) input is unsqueezed for torch's ops."""
    hand, theirs = RECURRENT_OPS[kind].hand, RECURRENT_OPS[kind].torch
    flat = flat_parameters(params, num_layers, bidirectional)
    has_biases = "bias_ih_l0" in params
    batched = input.dim() == 3
    size = {"h_0": flat[-1].shape[0] if "weight_hr_l0" in params else flat[1].shape[1], "c_0": flat[1].shape[0] // 4}
    batch = (input.shape[0 if batch_first else 1],) if batched else ()
    states = [s if s is not None else torch.zeros(num_layers * (1 + bidirectional), *batch, size[n], dtype=input.dtype)
              for n, s in (("h_0", h_0), ("c_0", c_0))[:1 + (kind == "lstm")]]
    if reference and not batched:
        input, states = input.unsqueeze(1 - batch_first), [s.unsqueeze(1) for s in states]
    fn = theirs if reference else hand
    with warnings.catch_warnings():  # torch's CPU LSTM with projections notes that it leaves oneDNN
        warnings.filterwarnings("ignore", "LSTM with projections is not supported with oneDNN")
        outputs = fn(input, states if kind == "lstm" else states[0], flat, has_biases, num_layers, dropout, train,
                     bidirectional, batch_first)
    chosen = outputs[("output", "h_n", "c_n").index(returns)]
    if reference and not batched:
        chosen = chosen.squeeze(1 - batch_first if returns == "output" else 1)
    return chosen


def recurrent_reference(input, **kwargs):
    """torch's own op (torch.rnn_tanh, torch.rnn_relu, torch.lstm, torch.gru: what torch.nn's layers call)."""
    return recurrent_by_name(input, reference=True, **kwargs)


def cell_by_name(input, hx, cx=None, kind="lstm", returns="h", reference=False, **params):
    """h' (or c', ``returns``) of handgrad's cell op, or of torch's with ``reference`` (unbatched input unsqueezed)."""
    cell = RECURRENT_OPS[kind].torch_cell if reference else RECURRENT_OPS[kind].hand_cell
    state = (hx, cx) if kind == "lstm" else hx
    batched = input.dim() == 2
    if reference and not batched:
        input, state = input[None], (hx[None], cx[None]) if kind == "lstm" else hx[None]
    result = cell(input, state, params["weight_ih"], params["weight_hh"], params.get("bias_ih"), params.get("bias_hh"))
    chosen = result[("h", "c").index(returns)] if kind == "lstm" else result
    return chosen if batched or not reference else chosen[0]


def _recurrent_inputs(kind: str, num_layers: int = 1, bidirectional: bool = False, bias: bool = True,
                      batch_first: bool = False, batched: bool = True, initial: bool = True, proj_size: int = 0,
                      length: int = 3, batch: int = 2, input_size: int = 3, hidden: int = 4):
    """A sequence, initial states (or None) and every parameter, named and shaped as torch.nn's layer holds them."""
    gates, directions = RECURRENT_OPS[kind].gates, 1 + bidirectional
    out = proj_size or hidden

    def make(dtype, g):
        shape = ((batch, length) if batch_first else (length, batch)) if batched else (length,)
        inputs: Inputs = dict(input=randn(*shape, input_size, dtype=dtype, generator=g))
        lead = (num_layers * directions, *((batch,) if batched else ()))
        inputs["h_0"] = randn(*lead, out, dtype=dtype, generator=g) if initial else None
        if kind == "lstm":
            inputs["c_0"] = randn(*lead, hidden, dtype=dtype, generator=g) if initial else None
        for layer in range(num_layers):
            for suffix in ("", "_reverse")[:directions]:
                d_in = input_size if layer == 0 else directions * out
                sizes = dict(weight_ih=(gates * hidden, d_in), weight_hh=(gates * hidden, out),
                             bias_ih=(gates * hidden,), bias_hh=(gates * hidden,), weight_hr=(out, hidden))
                for name, size in sizes.items():
                    if (name.startswith("bias") and not bias) or (name == "weight_hr" and not proj_size):
                        continue
                    inputs[f"{name}_l{layer}{suffix}"] = randn(*size, dtype=dtype, generator=g, scale=0.5)
        return inputs
    return make


def _cell_inputs(kind: str, bias: bool = True, batched: bool = True, batch: int = 3, input_size: int = 3,
                 hidden: int = 4):
    gates = RECURRENT_OPS[kind].gates

    def make(dtype, g):
        lead = (batch,) if batched else ()
        inputs: Inputs = dict(input=randn(*lead, input_size, dtype=dtype, generator=g),
                              hx=randn(*lead, hidden, dtype=dtype, generator=g))
        if kind == "lstm":
            inputs["cx"] = randn(*lead, hidden, dtype=dtype, generator=g)
        sizes = dict(weight_ih=(gates * hidden, input_size), weight_hh=(gates * hidden, hidden),
                     **(dict(bias_ih=(gates * hidden,), bias_hh=(gates * hidden,)) if bias else {}))
        inputs.update({name: randn(*size, dtype=dtype, generator=g, scale=0.5) for name, size in sizes.items()})
        return inputs
    return make


def _recurrent_cases(kind: str) -> list[OpCase]:
    """Rows that between them take every option: layers 1-2, bidirectional, batch_first, bias, h_0 given or
    not, unbatched, dropout (seeded), and every output (output, h_n, c_n); tests/test_functional_recurrent.py
    runs every combination."""
    last_state = "c_n" if kind == "lstm" else "h_n"
    rows: list[tuple[str, dict, dict]] = [
        ("", dict(), {}),
        ("2 layers, bidirectional", dict(num_layers=2, bidirectional=True), dict(returns="h_n")),
        ("batch_first, no bias, no h_0", dict(batch_first=True, bias=False, initial=False), {}),
        ("unbatched, bidirectional", dict(batched=False, bidirectional=True), dict(returns=last_state)),
        ("2 layers, batch_first, bidirectional, no h_0", dict(num_layers=2, batch_first=True, bidirectional=True,
                                                              initial=False), dict(returns=last_state)),
    ]
    cases = [OpCase(f"{kind}({label or '1 layer'})", recurrent_by_name, recurrent_reference,
                    _recurrent_inputs(kind, **options), dict(kind=kind, **kwargs, **{
                        k: options[k] for k in ("num_layers", "bidirectional", "batch_first") if k in options}))
             for label, options, kwargs in rows]
    cases.append(OpCase(f"{kind}(3 layers, dropout=0.4, training, seeded)", seeded(recurrent_by_name),
                        seeded(recurrent_reference), _recurrent_inputs(kind, num_layers=3),
                        dict(kind=kind, num_layers=3, dropout=0.4, train=True)))
    cases += [OpCase(f"{kind}_cell{label}", cell_by_name, functools.partial(cell_by_name, reference=True),
                     _cell_inputs(kind, **options), dict(kind=kind, **kwargs))
              for label, options, kwargs in [("", {}, {}), ("(unbatched, no bias)", dict(batched=False, bias=False),
                                                            dict(returns="c") if kind == "lstm" else {})]]
    return cases


RECURRENT_CASES: list[OpCase] = [
    *(case for kind in RECURRENT_OPS for case in _recurrent_cases(kind)),
    OpCase("lstm(proj_size=2, 2 layers, bidirectional)", recurrent_by_name, recurrent_reference,
           _recurrent_inputs("lstm", num_layers=2, bidirectional=True, proj_size=2),
           dict(kind="lstm", num_layers=2, bidirectional=True)),
    OpCase("lstm(proj_size=2, unbatched, no h_0) -> h_n", recurrent_by_name, recurrent_reference,
           _recurrent_inputs("lstm", batched=False, initial=False, proj_size=2), dict(kind="lstm", returns="h_n")),
]

OP_CASES += RECURRENT_CASES
