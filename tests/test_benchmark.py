"""handgrad.benchmarks (scripts/benchmark.py) on tiny sizes: every row group runs, and the table and the JSON
have their fields."""

from __future__ import annotations

import json

import pytest

from handgrad.benchmarks.end_to_end import E2E_CONTENDERS
from handgrad.benchmarks.networks import BACKENDS
from handgrad.benchmarks.suite import main
from handgrad.benchmarks.timing import paired_ratio

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_quick_run_writes_every_row_group(tmp_path, mnist_root, capsys):
    assert main(["--quick", "--only", "10", "--data-root", mnist_root, "--e2e-examples", "40",
                           "--e2e-repeats", "1", "--out-dir", str(tmp_path), "--name", "quick"]) == 0
    saved = json.loads((tmp_path / "quick.json").read_text())
    assert saved["meta"]["args"]["quick"] is True

    # row groups 1 and 2: every backend of the nielsen_ch1 row, timed against autograd
    rows = saved["step_rows"]
    assert [r["backend"] for r in rows] == list(BACKENDS)
    assert all(r["batch"] == 10 and r["step_us"] > 0 and r["ratio"] > 0 for r in rows)
    assert rows[0]["ratio"] == 1.0 and rows[0]["saved_bytes"] > 0  # autograd against itself
    assert {r["backend"] for r in rows if r["saved_bytes"] is None} == {"no_autograd", "fused_step"}  # no graph

    # row group 3: Lightning against the loops, at batch 10 and 1, on the same weights
    ends = saved["end_to_end_rows"]
    assert [(r["batch"], r["contender"]) for r in ends] == [(b, c) for b in (10, 1) for c in E2E_CONTENDERS]
    assert all(r["examples"] == 40 and r["us_per_example"] > 0 and r["timed_epochs"] == 1 for r in ends)
    assert all(r["same_weights_as_bare_epoch"] for r in ends if r["contender"] == "lightning")

    # row group 5: attention, LSTM and GRU, Adam and AdamW, each against its autograd or torch.optim contender
    layers = saved["layer_rows"]
    assert [r["length"] for r in layers["attention_memory"]] == [64, 128]
    assert [r["kind"] for r in layers["recurrent"]] == ["lstm", "gru"]
    assert [r["optimizer"] for r in layers["optimizers"]] == ["Adam", "AdamW"]
    assert all(r["ratio"] > 0 for group in ("attention", "optimizers") for r in layers[group])
    assert all(r["ratio_autograd"] > 0 and r["ratio_native"] > 0 for r in layers["recurrent"])

    table = capsys.readouterr().out
    assert "Attention, forward + backward" in table and "Optimiser step on the 784-256-256-10" in table
    assert "| nielsen_ch1 784-30-10 sigmoid, mse | 10 | cpu | fp32 | fused_step |" in table
    assert "| batch | examples an epoch | contender | us / example | Lightning / this |" in table
    assert table.count("| 40 | ") == 2 * len(E2E_CONTENDERS)


def test_without_mnist_the_end_to_end_rows_are_skipped(tmp_path, capsys):
    assert main(["--groups", "end_to_end", "--data-root", str(tmp_path / "nothing"),
                           "--out-dir", str(tmp_path), "--name", "none"]) == 0
    assert json.loads((tmp_path / "none.json").read_text())["end_to_end_rows"] == []
    assert "row group 3 skipped: MNIST not readable" in capsys.readouterr().err


def test_paired_ratio_is_the_median_of_the_repeat_by_repeat_ratios_with_its_block_spread():
    hand = [2.0, 2.0, 3.0, 3.0, 6.0, 6.0, 2.0, 2.0, 4.0, 4.0]
    other = [1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]  # ratios 2 2 3 3 3 3 1 1 2 2
    assert paired_ratio(hand, other) == (2.0, 1.0, 3.0)
    assert paired_ratio([1.0], [4.0]) == (0.25, 0.25, 0.25)  # fewer repeats than blocks: the empty ones drop out
