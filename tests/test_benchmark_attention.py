"""handgrad.benchmarks.attention on short runs: its rows have their fields, the memory targets hold (saved bytes
are deterministic, unlike times), and it runs with python -m."""

from __future__ import annotations

import runpy
import sys

import pytest

from handgrad.benchmarks import attention

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rows_time_every_contender_and_check_hand_against_autograd():
    rows = attention.attention_rows(length=40, repeats=5, batch=1, heads=2, head_dim=8)
    assert [r["is_causal"] for r in rows] == [True, False]
    for r in rows:
        assert r["hand_ms"] > 0 and r["autograd_ms"] > 0 and r["torch_ms"] > 0
        assert 0 < r["ratio_low"] <= r["ratio_high"] and r["ratio"] > 0 and r["torch_ratio"] > 0
        assert r["same_results"] is True
    table = attention.markdown(rows, attention.saved_bytes_rows((16, 32), batch=1, heads=2, head_dim=8))
    assert table.splitlines()[0].startswith("| T | causal | hand ms | autograd ms | torch ms |")
    assert "| 32 |" in table


def test_saved_bytes_grow_linearly_for_hand_and_quadratically_for_autograd():
    rows = attention.saved_bytes_rows((64, 128, 256, 512), batch=1, heads=2, head_dim=32)
    hand = [r["hand_beyond_qkv"] for r in rows]
    autograd = [r["autograd_beyond_qkv"] for r in rows]
    assert hand == [64 * 2 * (32 + 1) * 4 * t for t in (1, 2, 4, 8)]  # O (T, 32) and L (T,), float32, per head
    assert all(b / a > 3.5 for a, b in zip(autograd, autograd[1:], strict=False))  # the (T, T) probabilities
    assert next(r["ratio"] for r in rows if r["length"] == 256) <= 0.5


def test_runs_as_a_module_and_prints_the_tables(monkeypatch, capsys):
    """What ``python -m handgrad.benchmarks.attention --length 32 --repeats 3 --lengths 16 32`` runs, here."""
    monkeypatch.setattr(sys, "argv", ["attention", "--length", "32", "--repeats", "3", "--lengths", "16", "32"])
    monkeypatch.delitem(sys.modules, "handgrad.benchmarks.attention")  # run as __main__, not the imported module
    with pytest.raises(SystemExit) as exit:
        runpy.run_module("handgrad.benchmarks.attention", run_name="__main__")
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert "batch 4, 4 heads, head dim 32; forward + backward, medians of 3 interleaved calls" in out
    assert "| 32 | yes |" in out and "| 16 |" in out
