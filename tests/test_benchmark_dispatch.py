"""handgrad.benchmarks.dispatch on a short run: a row per way in and per check, and it runs with python -m."""

from __future__ import annotations

import runpy
import sys

import pytest
import torch

from handgrad.benchmarks import dispatch

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_empty_function_is_an_identity_by_every_way_in():
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dispatch.Empty.call, (x,), check_forward_ad=True)
    for call in dispatch.contenders().values():
        call()


def test_runs_as_a_module_and_prints_the_table(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["dispatch", "--repeats", "1", "--number", "10"])
    monkeypatch.delitem(sys.modules, "handgrad.benchmarks.dispatch")  # run as __main__, not the imported module
    with pytest.raises(SystemExit) as exit:
        runpy.run_module("handgrad.benchmarks.dispatch", run_name="__main__")
    assert exit.value.code == 0
    table = capsys.readouterr().out.splitlines()
    assert "| call | us |" in table and len([line for line in table if line.startswith("| ")]) == 9
