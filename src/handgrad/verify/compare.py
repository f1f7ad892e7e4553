"""The first-order proof: an op and its torch reference on identical inputs, side by side.

``compare(hand, reference, inputs)`` runs an op and its torch reference on identical copies of the
inputs, pushes the same random upstream gradient through both, and returns the outputs and every
input's gradient side by side. ``OpCase`` is one row of the table (verify/cases/), which the tests
and ``scripts/check_grads.py`` read; verify/transforms.py holds the higher-order checks of a row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch

Inputs = dict[str, object]

# The inputs the per-sample check (transforms.per_sample_grads) stacks into a batch: the data and its
# per-sample state. Parameters (weight, bias) are shared across the samples.
PER_SAMPLE = ("input", "target", "running_mean", "running_var")


@dataclass(frozen=True)
class OpCase:
    """One row of the verification table.

    ``make_inputs(dtype, generator)`` returns the op's keyword arguments; floating-point
    tensors among them are leaves with ``requires_grad=True``. ``kwargs`` holds the
    non-tensor arguments shared by both ops.

    ``opt_out`` maps a check of verify/transforms.py (``CHECKS``) to the reason it is known to fail
    for this row; the tests expect such a check to fail (a check that starts passing fails the test,
    so the entry must go) and print the reason. ``reference_second`` replaces ``reference`` in the
    hessian check where torch's own second derivatives under torch.func are wrong.
    """

    name: str
    hand: Callable
    reference: Callable
    make_inputs: Callable[[torch.dtype, torch.Generator], Inputs]
    kwargs: dict = field(default_factory=dict)
    opt_out: dict[str, str] = field(default_factory=dict)
    per_sample: tuple[str, ...] = PER_SAMPLE  # the inputs the per-sample check batches, where present
    randomness: str = "error"  # torch.vmap's ``randomness`` for the per-sample check
    reference_second: Callable | None = None

    def inputs(self, dtype: torch.dtype = torch.float64, seed: int = 0) -> Inputs:
        return self.make_inputs(dtype, torch.Generator().manual_seed(seed))

    @property
    def op(self) -> str:
        """The handgrad op of the row: its name up to the first parenthesis ("softmax(dim=1)" -> "softmax")."""
        return self.name.split("(")[0]


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
