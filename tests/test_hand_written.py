"""Every op's output comes from its hand-written Function, and no backward, no jvp and no backward of a
backward (double backward) leans on PyTorch's own derivative machinery (autograd.grad, torch.func, aten
*_backward ops, torch.nn.grad)."""

from __future__ import annotations

import ast
import pathlib

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.utils._python_dispatch import TorchDispatchMode

import handgrad.functional
from handgrad.verify import OP_CASES, fresh_copies
from handgrad.verify.transforms import positional

# The rows whose Function has a jvp, and whose backward may be differentiated again (the others refuse both)
WITH_JVP = [case for case in OP_CASES if "jvp" not in case.opt_out]
TWICE_DIFFERENTIABLE = [case for case in OP_CASES if "penalty" not in case.opt_out]

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


def jvp_ops(fn, inputs, kwargs) -> list[str]:
    """The aten ops that run while ``fn`` is called on dual tensors (forward-mode AD: the jvps run then)."""
    f, primals = positional(fn, inputs, kwargs)
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, torch.ones_like(p)) for p in primals]
        with RecordAtenOps() as recorder:
            f(*duals)
    return recorder.names


def double_backward_ops(fn, inputs, kwargs) -> list[str]:
    """The aten ops that run while a gradient penalty of ``fn``, built with create_graph=True, is differentiated."""
    f, primals = positional(fn, inputs, kwargs)
    xs = [p.requires_grad_() for p in primals]
    grads = torch.autograd.grad(f(*xs).sum(), xs, create_graph=True, allow_unused=True)
    penalty = sum((g * g).sum() for g in grads if g is not None)
    with RecordAtenOps() as recorder:
        if isinstance(penalty, torch.Tensor) and penalty.requires_grad:
            torch.autograd.grad(penalty, xs, allow_unused=True)
    return recorder.names


@pytest.mark.parametrize("case", WITH_JVP, ids=lambda c: c.name)
def test_jvp_dispatches_no_aten_backward_op(case):
    names = jvp_ops(case.hand, case.inputs(torch.float64), case.kwargs)
    assert names, "the recorder saw no ops: the check would be vacuous"
    assert not [n for n in names if "backward" in n], names


@pytest.mark.parametrize("case", TWICE_DIFFERENTIABLE, ids=lambda c: c.name)
def test_double_backward_dispatches_no_aten_backward_op(case):
    names = double_backward_ops(case.hand, case.inputs(torch.float64), case.kwargs)
    assert not [n for n in names if "backward" in n], names


def test_recorder_catches_autograd_derivative_ops():
    """The checks above can fail: torch's own sigmoid backs up through aten::sigmoid_backward, in a backward,
    in a jvp and in a double backward."""
    x = torch.randn(4, requires_grad=True)
    assert "aten::sigmoid_backward" in backward_ops(torch.sigmoid, {"input": x}, {})
    assert "aten::sigmoid_backward" in jvp_ops(torch.sigmoid, {"input": x}, {})
    assert "aten::sigmoid_backward" in double_backward_ops(torch.sigmoid, {"input": x}, {})


def forbid_derivative_helpers(monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("a hand-written backward or jvp called a PyTorch derivative helper")

    for module, name in [(torch.autograd, "grad"), (torch.func, "vjp"), (torch.func, "grad"), (torch.func, "jacrev"),
                         (torch.func, "jvp"), (torch.func, "jacfwd"), (torch.autograd.functional, "vjp"),
                         (torch.autograd.functional, "jacobian"), (torch.autograd.functional, "jvp")]:
        monkeypatch.setattr(module, name, forbidden)


@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.name)
def test_backward_calls_no_autograd_grad_or_func(case, monkeypatch):
    inputs, kwargs = case.inputs(torch.float64), case.kwargs
    output = case.hand(**inputs, **kwargs)
    forbid_derivative_helpers(monkeypatch)
    output.backward(torch.ones_like(output))


@pytest.mark.parametrize("case", WITH_JVP, ids=lambda c: c.name)
def test_jvp_calls_no_autograd_grad_or_func(case, monkeypatch):
    f, primals = positional(case.hand, case.inputs(torch.float64), case.kwargs)
    forbid_derivative_helpers(monkeypatch)
    with fwAD.dual_level():
        output = f(*[fwAD.make_dual(p, torch.ones_like(p)) for p in primals])
        assert fwAD.unpack_dual(output).tangent is not None


@pytest.mark.parametrize("case", TWICE_DIFFERENTIABLE, ids=lambda c: c.name)
def test_double_backward_calls_no_autograd_grad_or_func(case, monkeypatch):
    f, primals = positional(case.hand, case.inputs(torch.float64), case.kwargs)
    xs = [p.requires_grad_() for p in primals]
    grads = torch.autograd.grad(f(*xs).sum(), xs, create_graph=True, allow_unused=True)
    penalty = sum((g * g).sum() for g in grads if g is not None)
    forbid_derivative_helpers(monkeypatch)
    if isinstance(penalty, torch.Tensor) and penalty.requires_grad:
        penalty.backward()


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
