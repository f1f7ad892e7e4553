"""Proof that a hand-written backward equals autograd's: one helper, one table of ops.

``compare(hand, reference, inputs)`` runs an op and its torch reference on identical
copies of the inputs, pushes the same random upstream gradient through both, and returns
the outputs and every input's gradient side by side. ``OP_CASES`` is the table of every
op in ``handgrad.functional`` with its torch reference and a generator of inputs; the
tests and ``scripts/check_grads.py`` both read it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as torch_F

import handgrad.functional as F
from handgrad.functional.attention import attention
from handgrad.functional.attention_tiles import BLOCK, draw_seed, dropout_multipliers, grouped_heads
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

# --------------------------------------------------------------------------- the table: sequence ops


def _embedding_inputs(num_embeddings: int, dim: int, *index_shape: int, padding_idx: int | None = None,
                      row_norm: float | None = None):
    """Indices (*index_shape) drawn from a small vocabulary, so that some repeat; with ``padding_idx``, the first
    two positions use it; with ``row_norm``, every weight row scaled to that norm (2-norm)."""
    def make(dtype, g):
        indices = torch.randint(num_embeddings, index_shape, generator=g)
        if padding_idx is not None:
            indices.view(-1)[:2] = padding_idx % num_embeddings
        weight = torch.randn(num_embeddings, dim, dtype=dtype, generator=g)
        if row_norm is not None:
            weight = weight * (row_norm / weight.norm(dim=1, keepdim=True))
        return dict(input=indices, weight=weight.requires_grad_())
    return make


def _attention_inputs(query: tuple[int, ...], key: tuple[int, ...], value_dim: int | None = None,
                      mask: str | None = None, mask_shape: tuple[int, ...] | None = None):
    """query (*query), key (*key), value like key with the last dim ``value_dim``; ``mask``: "bool" (True:
    attend; row 1 attends nothing) or "float" (differentiable; row 1 all -inf), of ``mask_shape``."""
    def make(dtype, g):
        value = (*key[:-1], value_dim or key[-1])
        inputs: Inputs = dict(query=randn(*query, dtype=dtype, generator=g), key=randn(*key, dtype=dtype, generator=g),
                              value=randn(*value, dtype=dtype, generator=g))
        if mask == "bool":
            keep = torch.rand(mask_shape or (query[-2], key[-2]), generator=g) > 0.3
            keep[..., 1, :] = False
            inputs["attn_mask"] = keep
        elif mask == "float":
            bias = torch.randn(mask_shape or (query[-2], key[-2]), dtype=dtype, generator=g)
            bias[..., 1, :] = -math.inf
            inputs["attn_mask"] = bias.requires_grad_()
        return inputs
    return make


def tiled_attention(block: int) -> Callable:
    """handgrad's attention cut into tiles of ``block`` keys (and queries, when causal): small inputs, many tiles."""
    def fn(**kwargs):
        return attention(**kwargs, block=block)
    return fn


def tiled_reference(block: int) -> Callable:
    """attention_dropout_reference for the hand-written op cut into tiles of ``block``."""
    def fn(**kwargs):
        return attention_dropout_reference(**kwargs, block=block)
    return fn


def seeded_keywords(fn: Callable, seed: int = 0) -> Callable:
    """``seeded`` for an op called with keywords only (query=, key=, value=)."""
    def wrapped(**kwargs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return fn(**kwargs)
    return wrapped


def attention_dropout_reference(query, key, value, dropout_p, is_causal=False, scale=None, enable_gqa=False,
                                block=BLOCK):
    """softmax(Q K^T scale + causal mask) V from torch's ops, dropping exactly the weights the hand-written op
    drops: its seed is the same draw from the global stream (call both under ``seeded_keywords``)."""
    grouped = False
    if enable_gqa:  # the hand-written op's grouping, so that the masks have its shape
        query, key, value, _, grouped = grouped_heads(query, key, value, None)
    L, S = query.size(-2), key.size(-2)
    batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    multipliers = dropout_multipliers(draw_seed(), dropout_p, batch, L, S, query.dtype, is_causal, block)
    scores = query @ key.mT * (1 / math.sqrt(query.size(-1)) if scale is None else scale)
    if is_causal:
        scores = scores.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(), -math.inf)
    output = (torch.softmax(scores, -1) * multipliers.to(query.dtype)) @ value
    return output.flatten(-4, -3) if grouped else output


SEQUENCE_CASES: list[OpCase] = [
    OpCase("embedding", F.embedding, torch_F.embedding, _embedding_inputs(7, 4, 3, 5)),
    OpCase("embedding(0-d index)", F.embedding, torch_F.embedding, _embedding_inputs(7, 4)),
    # Finite differences cannot check a row that max_norm rescales (torch, too, leaves the rescaling out of the
    # graph), so every row here is already within max_norm; test_functional_sequence checks rescaled rows.
    OpCase("embedding(max_norm=2, rows within it)", F.embedding, torch_F.embedding,
           _embedding_inputs(6, 3, 2, 5, row_norm=1.5), dict(max_norm=2.0)),
    OpCase("gelu(none)", F.gelu, torch_F.gelu, _elementwise_inputs),
    OpCase("gelu(tanh)", F.gelu, torch_F.gelu, _elementwise_inputs, dict(approximate="tanh")),
    OpCase("sdpa(3-D, L != S, Ev != E)", F.scaled_dot_product_attention, torch_F.scaled_dot_product_attention,
           _attention_inputs((2, 5, 4), (2, 7, 4), 6)),
    OpCase("sdpa(4-D, causal)", F.scaled_dot_product_attention, torch_F.scaled_dot_product_attention,
           _attention_inputs((2, 3, 6, 4), (2, 3, 6, 4)), dict(is_causal=True)),
    OpCase("sdpa(causal, L < S, 2-key tiles)", tiled_attention(2), torch_F.scaled_dot_product_attention,
           _attention_inputs((2, 2, 5, 4), (2, 2, 8, 4), 3), dict(is_causal=True)),
    OpCase("sdpa(causal, L > S, 3-key tiles)", tiled_attention(3), torch_F.scaled_dot_product_attention,
           _attention_inputs((2, 2, 8, 4), (2, 2, 5, 4)), dict(is_causal=True)),
    OpCase("sdpa(bool mask, a row attends nothing, 3-key tiles)", tiled_attention(3),
           torch_F.scaled_dot_product_attention, _attention_inputs((2, 3, 5, 4), (2, 3, 7, 4), mask="bool")),
    OpCase("sdpa(float mask per head, a row all -inf)", F.scaled_dot_product_attention,
           torch_F.scaled_dot_product_attention,
           _attention_inputs((2, 3, 5, 4), (2, 3, 7, 4), mask="float", mask_shape=(3, 5, 7))),
    OpCase("sdpa(scale=0.3)", F.scaled_dot_product_attention, torch_F.scaled_dot_product_attention,
           _attention_inputs((2, 5, 4), (2, 6, 4)), dict(scale=0.3)),
    OpCase("sdpa(GQA 6 query / 2 key heads, causal)", F.scaled_dot_product_attention,
           torch_F.scaled_dot_product_attention, _attention_inputs((2, 6, 5, 4), (2, 2, 5, 4)),
           dict(enable_gqa=True, is_causal=True)),
    OpCase("sdpa(GQA, float mask per query head)", F.scaled_dot_product_attention,
           torch_F.scaled_dot_product_attention,
           _attention_inputs((2, 4, 5, 4), (2, 2, 6, 4), mask="float", mask_shape=(4, 5, 6)), dict(enable_gqa=True)),
    OpCase("sdpa(5-D, query broadcast over the first dim)", F.scaled_dot_product_attention,
           torch_F.scaled_dot_product_attention, _attention_inputs((1, 2, 3, 5, 4), (2, 2, 3, 6, 4))),
    OpCase("sdpa(2-D)", F.scaled_dot_product_attention, torch_F.scaled_dot_product_attention,
           _attention_inputs((5, 4), (6, 4))),
    # The same seed draws the same masks in both: attention_dropout_reference rebuilds the hand-written op's.
    OpCase("sdpa(dropout_p=0.3, causal, 3-key tiles, seeded)", seeded_keywords(tiled_attention(3)),
           seeded_keywords(tiled_reference(3)), _attention_inputs((2, 2, 7, 4), (2, 2, 7, 4)),
           dict(dropout_p=0.3, is_causal=True)),
]

OP_CASES += SEQUENCE_CASES

# Options whose gradient torch defines to be other than the derivative: the padding row's is 0 although the
# output reads it, and scale_grad_by_freq divides each position's gradient by its index's count. Checked
# against torch (tests/test_functional_sequence.py), never against finite differences, which these fail by design.
DEFINED_GRADIENT_CASES: list[OpCase] = [
    OpCase("embedding(padding_idx=2)", F.embedding, torch_F.embedding, _embedding_inputs(7, 4, 3, 5, padding_idx=2),
           dict(padding_idx=2)),
    OpCase("embedding(padding_idx=-1)", F.embedding, torch_F.embedding,
           _embedding_inputs(7, 4, 12, padding_idx=-1), dict(padding_idx=-1)),
    OpCase("embedding(scale_grad_by_freq)", F.embedding, torch_F.embedding, _embedding_inputs(5, 3, 4, 6),
           dict(scale_grad_by_freq=True)),
    OpCase("embedding(scale_grad_by_freq, padding_idx=0)", F.embedding, torch_F.embedding,
           _embedding_inputs(5, 3, 4, 6, padding_idx=0), dict(scale_grad_by_freq=True, padding_idx=0)),
]
