"""Every op's output comes from its hand-written Function, and no backward leans on PyTorch's
own derivative machinery (autograd.grad, torch.func, aten *_backward ops, torch.nn.grad)."""

from __future__ import annotations

import ast
import pathlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import handgrad.functional
from handgrad.verify import OP_CASES, fresh_copies

FUNCTIONAL_DIR = pathlib.Path(handgrad.functional.__file__).parent


class RecordAtenOps(TorchDispatchMode):
    """Records the name of every aten op dispatched while active."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


def backward_ops(fn, inputs, kwargs) -> list[str]:
    """The aten ops that run during ``fn``'s backward pass."""
    args = fresh_copies(inputs)
    output = fn(**args, **kwargs)
    grad_output = torch.ones_like(output)
    with RecordAtenOps() as recorder:
        output.backward(grad_output)
    return recorder.names


@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.name)
def test_output_comes_from_hand_written_function(case):
    output = case.hand(**case.inputs(torch.float64), **case.kwargs)
    forward_cls = getattr(type(output.grad_fn), "_forward_cls", None)
    assert forward_cls is not None, f"{case.name}: grad_fn {output.grad_fn} is not a custom autograd.Function"
    assert issubclass(forward_cls, torch.autograd.Function)
    assert forward_cls.__module__.startswith("handgrad.functional."), forward_cls.__module__


@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.name)
def test_backward_dispatches_no_aten_backward_op(case):
    names = backward_ops(case.hand, case.inputs(torch.float64), case.kwargs)
    assert names, "the recorder saw no ops: the check would be vacuous"
    assert not [n for n in names if "backward" in n], names


def test_recorder_catches_autograd_derivative_ops():
    """The check above can fail: torch's own sigmoid backs up through aten::sigmoid_backward."""
    x = torch.randn(4, requires_grad=True)
    names = backward_ops(torch.sigmoid, {"input": x}, {})
    assert "aten::sigmoid_backward" in names


@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.name)
def test_backward_calls_no_autograd_grad_or_func(case, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a hand-written backward called a PyTorch derivative helper")

    inputs, kwargs = case.inputs(torch.float64), case.kwargs
    output = case.hand(**inputs, **kwargs)
    for module, name in [(torch.autograd, "grad"), (torch.func, "vjp"), (torch.func, "grad"), (torch.func, "jacrev"),
                         (torch.autograd.functional, "vjp"), (torch.autograd.functional, "jacobian")]:
        monkeypatch.setattr(module, name, forbidden)
    output.backward(torch.ones_like(output))


FORBIDDEN_NAMES = {"grad", "vjp", "jvp", "jacrev", "jacfwd", "jacobian", "hessian", "func", "functorch"}


def derivative_helper_uses(source: str) -> list[str]:
    """Lines of ``source`` that refer to autograd.grad, torch.func, torch.nn.grad, functorch,
    or any *_backward op."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            base = _dotted(node.value)
            if (node.attr.endswith("_backward") and node.attr != "save_for_backward") or (
                node.attr in FORBIDDEN_NAMES and base in {"torch.autograd", "autograd", "torch", "torch.nn", "nn"}
            ):
                found.append(f"{node.lineno}: {_dotted(node)}")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            module = getattr(node, "module", None) or ""
            names = [a.name for a in node.names]
            if any(m.startswith(("torch.func", "functorch", "torch.nn.grad")) for m in [module, *names]) or (
                module == "torch.autograd" and "grad" in names
            ):
                found.append(f"{node.lineno}: import {module} {names}")
    return found


def test_functional_source_uses_no_derivative_helpers():
    offenders = {path.name: derivative_helper_uses(path.read_text()) for path in sorted(FUNCTIONAL_DIR.glob("*.py"))}
    assert not any(offenders.values()), offenders


@pytest.mark.parametrize("source", [
    "torch.autograd.grad(y, x)",
    "torch.ops.aten.sigmoid_backward(g, y)",
    "torch.nn.grad.conv2d_weight(x, w.shape, g)",
    "from torch.func import vjp",
    "import functorch",
    "from torch.autograd import grad",
])
def test_static_check_catches_derivative_helpers(source):
    assert derivative_helper_uses(source)


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"
