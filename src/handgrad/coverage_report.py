"""The report ``handgrad.coverage`` returns: each node a backward ran, counted per module and per op.

``print(report)`` shows two tables (per module, per op) and the counting rule; ``report.share``,
``report.hand``, ``report.autograd``, ``report.bookkeeping``, ``report.by_module`` and ``report.by_op``
are there for programs, and ``report.nodes`` holds one NodeRecord per node run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HAND, AUTOGRAD, BOOKKEEPING = "hand", "autograd", "bookkeeping"
KINDS = (HAND, AUTOGRAD, BOOKKEEPING)

# Where a node comes from when no module of the model created it
OUTSIDE = "(outside any module)"  # created in the with block, outside every module's forward
BEFORE = "(created before coverage)"  # created before the with block
NOT_OBSERVED = "(forward not observed)"  # coverage.of: a node that reads no parameter of the model
LABELS = (OUTSIDE, BEFORE, NOT_OBSERVED)

RULE = ("hand: the backward of a handgrad.functional Function. autograd: any other node that computes\n"
        "derivative arithmetic. bookkeeping: AccumulateGrad and the view, reshape, transpose, slice,\n"
        "concatenation, copy and cast nodes, which pass gradient elements on unchanged; not in the share.\n"
        "share = hand / (hand + autograd).")
MAX_LISTED = 10  # distinct (op, module) pairs a strict error lists


@dataclass(frozen=True)
class NodeRecord:
    """One node a backward ran."""

    op: str  # the node's class name: "AddmmBackward0", "LinearBackward" (handgrad's linear), "AccumulateGrad"
    kind: str  # HAND, AUTOGRAD or BOOKKEEPING
    module: str  # name of the module whose forward created it ("" is the model itself), or one of LABELS
    order: int  # autograd's sequence number: the order the forward created the nodes in
    twin: str | None = None  # for an AUTOGRAD node, the handgrad op to use instead, where there is one


@dataclass(frozen=True)
class Counts:
    """Nodes of each kind, and the hand-written share of the arithmetic ones (nan where there are none)."""

    hand: int = 0
    autograd: int = 0
    bookkeeping: int = 0

    @property
    def share(self) -> float:
        arithmetic = self.hand + self.autograd
        return self.hand / arithmetic if arithmetic else math.nan


class CoverageError(RuntimeError):
    """Raised by ``strict=True`` when an arithmetic node is not handgrad's; ``report`` is the whole report."""

    def __init__(self, message: str, report: CoverageReport):
        super().__init__(message)
        self.report = report


class CoverageReport:
    def __init__(self, module_types: dict[str, str], walked: bool = False):
        self.module_types = module_types  # the model's module names, in named_modules() order -> class name
        self.walked = walked  # coverage.of: the graph walked from the loss, no backward observed
        self.nodes: list[NodeRecord] = []
        self.backward_calls = 0

    def add(self, record: NodeRecord) -> None:
        self.nodes.append(record)

    # ----- numbers

    @property
    def total(self) -> Counts:
        return count(self.nodes)

    @property
    def hand(self) -> int:
        return self.total.hand

    @property
    def autograd(self) -> int:
        return self.total.autograd

    @property
    def bookkeeping(self) -> int:
        return self.total.bookkeeping

    @property
    def share(self) -> float:
        return self.total.share

    @property
    def by_module(self) -> dict[str, Counts]:
        """Module name ("" for the model itself, or one of LABELS) -> its nodes' counts, in the model's
        module order; modules that created no node the backward ran are left out."""
        return {name: count(records) for name, records in self.grouped_by_module().items()}

    @property
    def by_op(self) -> dict[str, int]:
        """Node class name -> how many such nodes ran; hand ops first, then autograd, then bookkeeping,
        each in the order the forward created them."""
        return {op: len(records) for op, records in self.grouped_by_op().items()}

    def grouped_by_module(self) -> dict[str, list[NodeRecord]]:
        groups: dict[str, list[NodeRecord]] = {}
        for record in self.nodes:
            groups.setdefault(record.module, []).append(record)
        rank = {name: i for i, name in enumerate([*self.module_types, *LABELS])}
        return {name: groups[name] for name in sorted(groups, key=rank.__getitem__)}

    def grouped_by_op(self) -> dict[str, list[NodeRecord]]:
        groups: dict[str, list[NodeRecord]] = {}
        for record in sorted(self.nodes, key=lambda r: (KINDS.index(r.kind), r.order)):
            groups.setdefault(record.op, []).append(record)
        return groups

    def not_hand_written(self) -> list[NodeRecord]:
        """The first node of each (op, module) pair that autograd computed, in forward order."""
        pairs: dict[tuple[str, str], NodeRecord] = {}
        for record in sorted(self.nodes, key=lambda r: r.order):
            if record.kind == AUTOGRAD:
                pairs.setdefault((record.op, record.module), record)
        return list(pairs.values())

    def raise_unless_hand_written(self) -> None:
        """strict=True: CoverageError naming the first arithmetic nodes that are not handgrad's."""
        missing = self.not_hand_written()
        if not missing:
            return
        lines = [f"handgrad.coverage(strict=True): {self.autograd} of {self.hand + self.autograd} arithmetic "
                 f"gradient nodes were computed by autograd, not by handgrad (hand-written share "
                 f"{percent(self.share)}):"]
        width = max(len(r.op) for r in missing[:MAX_LISTED])
        for record in missing[:MAX_LISTED]:
            twin = f"use {record.twin}" if record.twin else "handgrad has no twin"
            lines.append(f"  {record.op:<{width}}  in {self.describe(record.module)}: {twin}")
        if len(missing) > MAX_LISTED:
            lines.append(f"  ... and {len(missing) - MAX_LISTED} more (op, module) pairs: see the error's report")
        lines.append("Replace them with their handgrad twins, or leave strict=False to get the report without this "
                     "error.")
        raise CoverageError("\n".join(lines), self)

    # ----- text

    def describe(self, module: str) -> str:
        """A module as the strict error names it: "module 'encoder.0' (Linear)", "the model (MLP)", or its label."""
        if module in LABELS:
            return module
        return f"module {module!r} ({self.module_types[module]})" if module else f"the model ({self.module_types['']})"

    def __str__(self) -> str:
        total = self.total
        calls = f"{self.backward_calls} backward{'s' if self.backward_calls != 1 else ''}"
        ran = f".of: loss.backward() runs {len(self.nodes)}" if self.walked else f": {calls} ran {len(self.nodes)}"
        head = (f"handgrad.coverage{ran} nodes: {total.hand} hand-written, {total.autograd} autograd, "
                f"{total.bookkeeping} bookkeeping; hand-written share {percent(total.share)}")
        modules = [[name or "(root)", self.module_types.get(name, ""), *numbers(counts)]
                   for name, counts in self.by_module.items()]
        modules.append(["total", "", *numbers(total)])
        rank = {name: i for i, name in enumerate([*self.module_types, *LABELS])}
        ops = []
        for op, records in self.grouped_by_op().items():
            kind = records[0].kind
            where = ", ".join(name or "(root)" for name in sorted({r.module for r in records}, key=rank.__getitem__))
            twins = ", ".join(dict.fromkeys(r.twin or "none" for r in records)) if kind == AUTOGRAD else ""
            ops.append([op, kind, str(len(records)), where, twins])
        return "\n\n".join([
            head,
            table(["module", "type", "hand", "autograd", "bookkeeping", "share"], modules, right=(2, 3, 4, 5)),
            table(["op", "kind", "nodes", "modules", "handgrad twin"], ops, right=(2,)),
            RULE,
        ])

    def __repr__(self) -> str:
        return (f"CoverageReport(hand={self.hand}, autograd={self.autograd}, bookkeeping={self.bookkeeping}, "
                f"share={self.share:.3f})")


def count(records: list[NodeRecord]) -> Counts:
    return Counts(*(sum(r.kind == kind for r in records) for kind in KINDS))


def percent(share: float) -> str:
    return "-" if math.isnan(share) else f"{share:.1%}"


def numbers(counts: Counts) -> list[str]:
    return [str(counts.hand), str(counts.autograd), str(counts.bookkeeping), percent(counts.share)]


def table(header: list[str], rows: list[list[str]], right: tuple[int, ...]) -> str:
    """Columns two spaces apart, the columns in ``right`` right-aligned; no trailing spaces."""
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]
    lines = ["  ".join(cell.rjust(width) if c in right else cell.ljust(width)
                       for c, (cell, width) in enumerate(zip(row, widths, strict=True)))
             for row in [header, *rows]]
    return "\n".join(line.rstrip() for line in lines)
