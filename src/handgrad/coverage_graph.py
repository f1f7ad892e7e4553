"""Which gradients handgrad's hand-written backwards compute, and which autograd's built-in nodes compute.

    with handgrad.coverage(model) as report:          # around a forward and its backward
        loss = handgrad.functional.cross_entropy(model(x), y)
        loss.backward()
    print(report)                                     # per module and per op: hand / autograd / bookkeeping

    report = handgrad.coverage.of(loss, model)        # on a loss computed already: its graph from loss.grad_fn

Every node the backward runs is of one of three kinds:
- hand: the backward of a Function defined in ``handgrad.functional`` (the node's ``_forward_cls``).
- autograd: any other node that computes derivative arithmetic: torch's built-in nodes (AddmmBackward0,
  GeluBackward0, ...) and custom Functions defined outside handgrad (named with their module).
- bookkeeping: AccumulateGrad and the nodes of ops that only rearrange elements (views, reshapes,
  transposes, slices, concatenation, copies, dtype casts): each gradient element they pass on is one
  element they received, or zero. ExpandBackward0 sums over the broadcast dimensions: arithmetic.
share = hand / (hand + autograd): bookkeeping nodes are counted apart, never in the share.

How the context manager observes, through autograd's graph API:
- Which nodes ran: a TorchFunctionMode sees each ``Tensor.backward``, ``torch.autograd.backward`` and
  ``torch.autograd.grad`` call in the block, puts a pre-hook on every node reachable from the call's roots
  and keeps the nodes whose pre-hook fired. A node the engine skips (on no path to the call's ``inputs=``)
  is not counted, nor one no backward reaches (an output the loss does not use).
- Which module created a node: autograd numbers the nodes it creates, in order, per thread
  (``node._sequence_nr()``). Forward pre- and post-hooks on each of the model's modules record the numbers
  handed out while that module ran; a node belongs to the innermost such window, AccumulateGrad to the
  module holding the parameter. Other nodes are "(outside any module)", or "(created before coverage)".

``coverage.of(loss, model)`` has not seen the forward. It walks the graph from ``loss.grad_fn``: exactly
the nodes ``loss.backward()`` without ``inputs=`` runs, since autograd creates a node only for an op with
an input that requires grad (so every node leads to a leaf) and the engine runs every node it reaches.
A node is attributed to the module whose parameters it reads (directly or through bookkeeping nodes);
the others are "(forward not observed)".
"""

from __future__ import annotations

import bisect
import os.path
from collections.abc import Callable, Iterator
from types import TracebackType

import torch
from torch.overrides import TorchFunctionMode

import handgrad.nn
from handgrad.coverage_report import (
    AUTOGRAD,
    BEFORE,
    BOOKKEEPING,
    HAND,
    NOT_OBSERVED,
    OUTSIDE,
    CoverageError,
    CoverageReport,
    NodeRecord,
)

__all__ = ["CoverageError", "CoverageReport", "NodeRecord", "coverage"]

# --------------------------------------------------------------------------- the counting rule

# Ops whose backward passes each gradient element on unchanged (or cast) or as a zero; trailing digits dropped.
BOOKKEEPING_OPS = frozenset({
    "AccumulateGrad", "AliasBackward", "CatBackward", "CloneBackward", "CopyBackwards", "PermuteBackward",
    "SelectBackward", "SliceBackward", "SplitBackward", "SplitWithSizesBackward", "SqueezeBackward",
    "StackBackward", "TBackward", "ToCopyBackward", "TransposeBackward", "UnbindBackward", "UnsafeViewBackward",
    "UnsqueezeBackward", "ViewAsComplexBackward", "ViewAsRealBackward", "ViewBackward", "_ReshapeAliasBackward",
})

# torch's node -> the handgrad function whose hand-written backward computes the same gradient
HANDGRAD_FUNCTIONS = {
    "AddmmBackward0": "linear", "MmBackward0": "linear", "SigmoidBackward0": "sigmoid", "TanhBackward0": "tanh",
    "ReluBackward0": "relu", "LeakyReluBackward0": "leaky_relu", "SoftmaxBackward0": "softmax",
    "LogSoftmaxBackward0": "log_softmax", "NllLossBackward0": "cross_entropy", "MseLossBackward0": "mse_loss",
    "ConvolutionBackward0": "conv2d", "MaxPool2DWithIndicesBackward0": "max_pool2d", "AvgPool2DBackward0": "avg_pool2d",
    "NativeBatchNormBackward0": "batch_norm", "CudnnBatchNormBackward0": "batch_norm",
    "NativeLayerNormBackward0": "layer_norm", "NativeDropoutBackward0": "dropout",
    "BinaryCrossEntropyBackward0": "binary_cross_entropy",
    "BinaryCrossEntropyWithLogitsBackward0": "binary_cross_entropy_with_logits",
    "SmoothL1LossBackward0": "smooth_l1_loss", "HuberLossBackward0": "huber_loss",
}


def op_and_kind(node: torch.autograd.graph.Node) -> tuple[str, str]:
    """The node's op name (its class name) and kind: HAND, AUTOGRAD or BOOKKEEPING."""
    name = type(node).__name__
    forward_cls = getattr(node, "_forward_cls", None)
    if forward_cls is not None:  # a custom Function's backward
        if forward_cls.__module__.startswith("handgrad.functional."):
            return name, HAND
        return f"{forward_cls.__module__}.{name}", AUTOGRAD  # hand-written, but not by handgrad
    return name, BOOKKEEPING if name.rstrip("0123456789") in BOOKKEEPING_OPS else AUTOGRAD


def handgrad_twin(op: str, module: torch.nn.Module | None) -> str | None:
    """What to use instead of a torch node: the handgrad.nn twin of the torch.nn module that created it,
    else the handgrad.functional twin of its op; None where handgrad has neither."""
    if module is not None and type(module).__module__.startswith("torch.nn."):
        if type(module).__name__ in handgrad.nn.HAND_WRITTEN:
            return f"handgrad.nn.{type(module).__name__}"
    function = HANDGRAD_FUNCTIONS.get(op)
    return None if function is None else f"handgrad.functional.{function}"


# --------------------------------------------------------------------------- the graph


def reachable(roots: list[torch.autograd.graph.Node]) -> Iterator[torch.autograd.graph.Node]:
    """Every node reachable from ``roots`` through ``next_functions``, each once."""
    seen: set[torch.autograd.graph.Node] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        yield node
        stack.extend(child for child, _ in node.next_functions if child is not None)


def root_nodes(value) -> list[torch.autograd.graph.Node]:
    """The grad_fn of every tensor (and the node of every GradientEdge) in ``value``, a tensor or a sequence."""
    if isinstance(value, torch.Tensor):
        return [] if value.grad_fn is None else [value.grad_fn]
    if isinstance(value, torch.autograd.graph.GradientEdge):
        return [value.node]
    if isinstance(value, list | tuple):
        return [node for item in value for node in root_nodes(item)]
    return []


class ModuleIndex:
    """The model's modules by name, and the module holding each parameter."""

    def __init__(self, model: torch.nn.Module | None):
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"handgrad.coverage: model must be a torch.nn.Module or None, got {type(model).__name__}; "
                            "pass the network whose modules the report should name")
        self.modules = dict(model.named_modules()) if model is not None else {}
        self.owner: dict[int, str] = {}  # a parameter shared by several modules belongs to the first
        for name, module in self.modules.items():
            for param in module.parameters(recurse=False):
                self.owner.setdefault(id(param), name)

    def types(self) -> dict[str, str]:
        return {name: type(module).__name__ for name, module in self.modules.items()}

    def leaf_owner(self, node: torch.autograd.graph.Node) -> str:
        """The module holding the leaf an AccumulateGrad node writes to; OUTSIDE for a leaf of no module."""
        return self.owner.get(id(getattr(node, "variable", None)), OUTSIDE)


# --------------------------------------------------------------------------- the context manager


class coverage:
    """``with coverage(model) as report:`` around a forward and backward; ``coverage.of(loss, model)``
    on a loss computed already. ``strict=True`` raises CoverageError, after the backward, if any
    arithmetic node is not handgrad's; the report is then in the error's ``report``."""

    CoverageError = CoverageError  # handgrad.coverage.CoverageError, as the class is what handgrad.coverage names

    def __init__(self, model: torch.nn.Module | None = None, *, strict: bool = False):
        self.index = ModuleIndex(model)
        self.strict = strict

    def __enter__(self) -> CoverageReport:
        self.report = CoverageReport(self.index.types())
        self.start = torch.autograd._get_sequence_nr()  # the number the next node created gets
        self.windows: list[list] = []  # [first number, one past the last (None while open), module, parent window]
        self.starts: list[int] = []  # each window's first number: ascending, as windows open in time order
        self.open: list[int] = []
        self.handles = []
        for name, module in self.index.modules.items():
            # prepended: a pre-hook that computes a weight (torch.nn.utils.weight_norm) runs inside the window
            self.handles.append(module.register_forward_pre_hook(self.enter_module(name), prepend=True))
            self.handles.append(module.register_forward_hook(self.exit_module(), always_call=True))
        self.observer = BackwardObserver(self.record_backward).__enter__()
        return self.report

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.observer.__exit__(exc_type, exc, traceback)
        for handle in self.handles:
            handle.remove()
        if exc_type is not None:
            return
        if self.report.backward_calls == 0:
            raise RuntimeError("handgrad.coverage: no backward ran inside the with block, so there is nothing to "
                               "report; call loss.backward() inside it, or use handgrad.coverage.of(loss, model) "
                               "on a loss computed already")
        if self.strict:
            self.report.raise_unless_hand_written()

    @classmethod
    def of(cls, loss: torch.Tensor, model: torch.nn.Module | None = None, *, strict: bool = False) -> CoverageReport:
        """The report for the nodes ``loss.backward()`` would run, walked from ``loss.grad_fn``; a node is
        attributed to the module whose parameters it reads, the rest to "(forward not observed)"."""
        if not isinstance(loss, torch.Tensor) or loss.grad_fn is None:
            got = type(loss).__name__ if not isinstance(loss, torch.Tensor) else "a tensor without grad_fn"
            raise ValueError(f"handgrad.coverage.of: loss must be a tensor with a grad_fn, got {got}; compute it "
                             "outside torch.no_grad() from parameters or inputs that require grad")
        index = ModuleIndex(model)
        report = CoverageReport(index.types(), walked=True)
        for node in reachable([loss.grad_fn]):
            op, kind = op_and_kind(node)
            module = parameter_module(node, index)
            report.add(NodeRecord(op, kind, module, node._sequence_nr(),
                                  handgrad_twin(op, index.modules.get(module)) if kind == AUTOGRAD else None))
        if strict:
            report.raise_unless_hand_written()
        return report

    # ----- forward: which module's forward is running

    def enter_module(self, name: str) -> Callable:
        def hook(module, args):
            parent = self.open[-1] if self.open else -1
            self.open.append(len(self.windows))
            self.starts.append(torch.autograd._get_sequence_nr())
            self.windows.append([self.starts[-1], None, name, parent])
        return hook

    def exit_module(self) -> Callable:
        def hook(module, args, output):
            self.windows[self.open.pop()][1] = torch.autograd._get_sequence_nr()
        return hook

    def creator(self, node: torch.autograd.graph.Node) -> str:
        """The innermost module whose forward created ``node``."""
        if type(node).__name__ == "AccumulateGrad":
            return self.index.leaf_owner(node)
        number = node._sequence_nr()
        if number < self.start:
            return BEFORE
        # the last window opened at or before the node; if it closed before, its enclosing windows
        # are the only ones that can hold the node (module windows nest)
        i = bisect.bisect_right(self.starts, number) - 1
        while i >= 0:
            _, end, name, parent = self.windows[i]
            if end is None or number < end:
                return name
            i = parent
        return OUTSIDE

    # ----- backward: which nodes ran

    def record_backward(self, executed: list[torch.autograd.graph.Node]) -> None:
        self.report.backward_calls += 1
        for node in executed:
            op, kind = op_and_kind(node)
            module = self.creator(node)
            twin = handgrad_twin(op, self.index.modules.get(module)) if kind == AUTOGRAD else None
            self.report.add(NodeRecord(op, kind, module, node._sequence_nr(), twin))


def parameter_module(node: torch.autograd.graph.Node, index: ModuleIndex) -> str:
    """The module whose parameters ``node`` reads, directly or through bookkeeping nodes (the innermost
    module holding all of them); NOT_OBSERVED for a node that reads none."""
    owners, stack = set(), [node]
    while stack:
        current = stack.pop()
        if type(current).__name__ == "AccumulateGrad":
            owners.add(index.leaf_owner(current))
            continue
        stack.extend(child for child, _ in current.next_functions
                     if child is not None and op_and_kind(child)[1] == BOOKKEEPING)
    owners.discard(OUTSIDE)
    if not owners:
        return OUTSIDE if type(node).__name__ == "AccumulateGrad" else NOT_OBSERVED
    if "" in owners:  # the model's own parameters
        return ""
    return ".".join(os.path.commonprefix([name.split(".") for name in owners]))


class BackwardObserver(TorchFunctionMode):
    """Runs each backward call in its block with a pre-hook on every node reachable from the call's roots,
    and hands ``on_backward`` the nodes whose pre-hook fired, in the order they ran."""

    BACKWARD_CALLS = (torch.Tensor.backward, torch.autograd.backward, torch.autograd.grad)

    def __init__(self, on_backward: Callable[[list[torch.autograd.graph.Node]], None]):
        super().__init__()
        self.on_backward = on_backward

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in self.BACKWARD_CALLS:
            return func(*args, **kwargs)
        roots = root_nodes(args[0] if args else kwargs.get("tensors", kwargs.get("outputs")))
        executed: list[torch.autograd.graph.Node] = []
        handles = [node.register_prehook(lambda grad_outputs, node=node: executed.append(node))
                   for node in reachable(roots)]
        try:
            result = func(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        self.on_backward(executed)
        return result
