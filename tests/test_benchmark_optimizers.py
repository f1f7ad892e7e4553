"""handgrad.benchmarks.optimizers on short runs: its rows have their fields, and it runs with python -m."""

from __future__ import annotations

import runpy
import sys

import pytest
import torch

from handgrad.benchmarks import optimizers

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rows_time_both_contenders_and_check_they_walk_the_same_path():
    rows = optimizers.optimizer_rows(("Adam", "AdamW", "SGD"), repeats=10, sizes=(20, 8, 3))
    assert [r["optimizer"] for r in rows] == ["Adam", "AdamW", "SGD"]
    for r in rows:
        assert r["parameters"] == 20 * 8 + 8 + 8 * 3 + 3 and r["repeats"] == 10
        assert r["handgrad_us"] > 0 and r["torch_foreach_us"] > 0 and 0 < r["ratio_low"] <= r["ratio_high"]
        assert r["same_path"] is True
    table = optimizers.markdown(rows)
    assert table.splitlines()[0].startswith("| optimizer | handgrad us / step | torch foreach us / step |")
    assert "| SGD (lr=0.01, momentum=0.9) |" in table


def test_mlp_parameters_are_laid_out_as_nn_linear_with_random_gradients():
    params = optimizers.mlp_parameters()
    assert [tuple(w.shape) for w in params] == [(256, 784), (256,), (256, 256), (256,), (10, 256), (10,)]
    assert all(w.grad is not None and w.grad.shape == w.shape for w in params)
    assert torch.equal(params[0], optimizers.mlp_parameters()[0])  # seeded


def test_runs_as_a_module_and_prints_the_table(monkeypatch, capsys):
    """What ``python -m handgrad.benchmarks.optimizers --repeats 5`` runs, in this process."""
    monkeypatch.setattr(sys, "argv", ["optimizers", "--repeats", "5"])
    monkeypatch.delitem(sys.modules, "handgrad.benchmarks.optimizers")  # run as __main__, not the imported module
    with pytest.raises(SystemExit) as exit:
        runpy.run_module("handgrad.benchmarks.optimizers", run_name="__main__")
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert "784-256-256-10 MLP (269,322 parameters), medians of 5 interleaved steps" in out
    assert "| Adam |" in out and "| AdamW |" in out
