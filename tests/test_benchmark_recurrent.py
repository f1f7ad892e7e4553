"""handgrad.benchmarks.recurrent on tiny sizes: its rows have their fields, its three contenders compute the
same thing, its byte count sees what autograd saves, and it runs with python -m."""

from __future__ import annotations

import runpy
import sys

import pytest
import torch

from handgrad.benchmarks import recurrent

TINY = dict(length=5, batch=3, input_size=4, hidden=6)


def test_rows_time_three_contenders():
    rows = recurrent.recurrent_rows(("lstm", "gru"), repeats=3, sizes=TINY)
    assert [r["kind"] for r in rows] == ["lstm", "gru"]
    for r in rows:
        assert r["length"] == 5 and r["repeats"] == 3
        assert all(r[f"{n}_ms"] > 0 and r[f"{n}_saved_mb"] > 0 for n in ("handgrad", "autograd", "native"))
        assert r["ratio_autograd"] > 0 and r["ratio_native"] > 0
    table = recurrent.markdown(rows)
    assert table.splitlines()[0].startswith("| layer | handgrad ms | autograd ms | native ms | handgrad / autograd |")
    assert "| LSTM |" in table and "| GRU |" in table


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_the_contenders_compute_the_same_output_and_gradients(kind):
    c = recurrent.contenders(kind, TINY)
    outputs, grads = [], []
    for name in ("handgrad", "autograd", "native"):
        output = c.forward(name)
        outputs.append(output.detach())
        grads.append(torch.autograd.grad(output.sum(), c.leaves))
    for other in (1, 2):
        torch.testing.assert_close(outputs[0], outputs[other])
        for a, b in zip(grads[0], grads[other], strict=True):
            torch.testing.assert_close(a, b)


def test_saved_bytes_counts_each_storage_once_and_leaves_out_the_leaves():
    x = torch.randn(10, requires_grad=True)
    y = torch.randn(10)
    assert recurrent.saved_bytes(lambda: (x * y).exp(), [x]) == 2 * 10 * 4  # y (mul), exp's output; not x


def test_runs_as_a_module_and_prints_the_table(monkeypatch, capsys):
    """What ``python -m handgrad.benchmarks.recurrent --repeats 2 --length 4 ...`` runs, in this process."""
    monkeypatch.setattr(sys, "argv", ["recurrent", "--repeats", "2", "--length", "4", "--batch", "2",
                                      "--input-size", "3", "--hidden", "5", "--kinds", "gru"])
    monkeypatch.delitem(sys.modules, "handgrad.benchmarks.recurrent")  # run as __main__, not the imported module
    with pytest.raises(SystemExit) as exit:
        runpy.run_module("handgrad.benchmarks.recurrent", run_name="__main__")
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert "forward + backward of one layer, T=4, batch 2, input 3, hidden 5, float32; medians of 2" in out
    assert "| GRU |" in out and "| LSTM |" not in out
