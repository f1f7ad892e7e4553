"""Proof that a hand-written backward equals autograd's: one helper, one table of ops.

``compare(hand, reference, inputs)`` runs an op and its torch reference on identical
copies of the inputs, pushes the same random upstream gradient through both, and returns
the outputs and every input's gradient side by side. ``OP_CASES`` is the table of every
op in ``handgrad.functional`` with its torch reference and a generator of inputs; the
tests and ``scripts/check_grads.py`` both read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as torch_F

import handgrad.functional as F

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
            torch.testing.assert_close(actual, expected, msg=lambda m, name=name: f"gradient of {name!r}: {m}", **tolerances)

    def max_errors(self) -> tuple[float, float]:
        """(max absolute error, max error relative to the reference's largest magnitude) over all gradients."""
        abs_err = rel_err = 0.0
        for name, expected in self.expected_grads.items():
            if expected is None:
                continue
            err = (self.grads[name] - expected).abs().max().item()
            abs_err = max(abs_err, err)
            rel_err = max(rel_err, err / max(expected.abs().max().item(), torch.finfo(expected.dtype).tiny))
        return abs_err, rel_err


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


def compare(hand: Callable, reference: Callable, inputs: Inputs, kwargs: dict | None = None, seed: int = 0) -> Comparison:
    """Run ``hand`` and ``reference`` on copies of ``inputs`` and backpropagate one random upstream gradient."""
    kwargs = kwargs or {}
    runs = []
    for fn in (hand, reference):
        args = fresh_copies(inputs)
        output = fn(**args, **kwargs)
        generator = torch.Generator(device=output.device).manual_seed(seed)
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
        return hand(**dict(zip(names, tensors)), **fixed, **kwargs)

    return torch.autograd.gradcheck(fn, tuple(inputs[n] for n in names))


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

CNN_CASES: list[OpCase] = []

# --------------------------------------------------------------------------- the table: fused ops

FUSED_CASES: list[OpCase] = []

OP_CASES: list[OpCase] = MLP_CASES + CNN_CASES + FUSED_CASES
