"""scripts/check_grads.py: the table's columns, for a converted op and a first-order one, and its verdicts."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys

from conftest import REPO
from test_function import FirstOrderSquare  # a Function not yet written to rules R1-R8

from handgrad.verify import OP_CASES, OpCase
from handgrad.verify.inputs import elementwise_inputs
from handgrad.verify.transforms import first_order

spec = importlib.util.spec_from_file_location("check_grads", REPO / "scripts" / "check_grads.py")
check_grads = sys.modules["check_grads"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_grads)

CASES = {case.name: case for case in OP_CASES}


FIRST_ORDER_ROW = OpCase("square(first order)", lambda input: FirstOrderSquare.call(input), lambda input: input * input,
                         elementwise_inputs, opt_out=first_order("FirstOrderSquare"))


def test_prints_every_column_for_a_converted_op_and_a_first_order_one(monkeypatch, capsys):
    monkeypatch.setattr(check_grads, "OP_CASES", [CASES["relu"], FIRST_ORDER_ROW])
    monkeypatch.setattr(sys, "argv", ["check_grads.py", "--only", "relu", "square"])
    assert check_grads.main() == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("| fp64 gradcheck | gradgradcheck | vmap per-sample grads | jvp | "
                             "torch samples matched/total |")
    assert lines[2].startswith("| relu |") and lines[2].endswith("| pass | pass | pass | 82/82 |")
    assert lines[3].startswith("| square(first order) |")
    assert lines[3].endswith("| first order only | pass | first order only | — |")
    assert "first order only (opted out, tested to fail): FirstOrderSquare (once_differentiable, no jvp yet)" in lines


def test_an_opt_out_that_passes_is_a_failure():
    stale = dataclasses.replace(CASES["relu"], opt_out={"jvp": "first order only: ReLU has no jvp yet"})
    assert check_grads.transform_cell(stale, "jvp") == ("pass (stale opt-out)", False)
    assert check_grads.transform_cell(FIRST_ORDER_ROW, "jvp") == ("first order only", True)
    assert check_grads.samples_cell("mlp") == ("—", True)  # a handgrad-only op: no torch samples
