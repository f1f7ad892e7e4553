"""handgrad.second_order_figure (scripts/plot_edge_of_stability.py): the scalars it reads from a run's events,
the PNG it writes where it is told, and one-line refusals of a folder without the scalars."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from handgrad.second_order_figure import LOSS, SHARPNESS, THRESHOLD, cost_summary, cost_table, main, read_scalars

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(run, tags=(LOSS, SHARPNESS, THRESHOLD)) -> None:
    """A run's events as Lightning and SecondOrder write them: the loss every step, the sharpness every 10."""
    writer = SummaryWriter(str(run))
    for step in range(1, 51):
        if LOSS in tags:
            writer.add_scalar(LOSS, 1.0 / step, step)
        if step == 1 or step % 10 == 0:
            for tag, value in ((SHARPNESS, 0.1 * step), (THRESHOLD, 4.0)):
                if tag in tags:
                    writer.add_scalar(tag, value, step)
    writer.close()


def test_read_scalars_gives_each_tag_by_step(tmp_path):
    write_run(tmp_path / "run")
    series = read_scalars(tmp_path / "run")
    assert series[SHARPNESS] == ([1, 10, 20, 30, 40, 50], pytest.approx([0.1, 1, 2, 3, 4, 5]))
    assert series[THRESHOLD][1] == [4.0] * 6 and len(series[LOSS][0]) == 50


def test_the_figure_goes_into_the_run_folder_or_where_out_says(tmp_path):
    run = tmp_path / "logs" / "edge_of_stability" / "version_0"
    write_run(run)
    assert main([str(run)]) == run / "edge_of_stability.png"
    assert (run / "edge_of_stability.png").read_bytes()[:8] == PNG_MAGIC
    out = tmp_path / "docs" / "figure.png"
    assert main([str(run), "--out", str(out), "--title", "t"]) == out and out.read_bytes()[:8] == PNG_MAGIC


def test_a_run_without_a_threshold_is_drawn_without_its_line(tmp_path):
    write_run(tmp_path / "run", (LOSS, SHARPNESS))  # e.g. trained with Adam
    assert THRESHOLD not in read_scalars(tmp_path / "run")
    assert main([str(tmp_path / "run")]).read_bytes()[:8] == PNG_MAGIC


def test_the_newest_run_is_the_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "logs" / "edge_of_stability" / "version_3")
    assert main([]) == Path("logs", "edge_of_stability", "version_3", "edge_of_stability.png")


@pytest.mark.parametrize("make, message", [
    (lambda run: None, r"run: no such run folder; pass a folder holding events\.out\.tfevents\.\* files"),
    (lambda run: write_run(run, (THRESHOLD,)), r"run has no train/loss, second_order/sharpness scalars; train with "
                                               r"the SecondOrder callback on, e\.g\. --config edge_of_stability"),
])
def test_a_folder_without_the_scalars_is_refused_in_one_line(make, message, tmp_path, capsys):
    make(tmp_path / "run")
    with pytest.raises(ValueError, match=message):
        read_scalars(tmp_path / "run")
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert re.search(message, err)


def test_no_run_yet_is_refused_with_the_command_that_makes_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main([])
    assert "logs/edge_of_stability holds no version_* run; train first: python scripts/train.py --config " \
           "edge_of_stability" in capsys.readouterr().err


def test_cost_summary_takes_medians_and_leaves_the_callbacks_steps_out_of_the_step_time(tmp_path):
    writer, clock = SummaryWriter(str(tmp_path / "run")), 0.0
    for step in range(1, 31):
        checked = step == 1 or step % 10 == 0
        clock += 0.1 + (2.0 if checked else 0.0)  # a step takes 100 ms; the callback 2 s more
        writer.add_scalar(LOSS, 1.0, step, walltime=clock)
        if checked:
            products = 2 if step < 30 else 3
            for tag, value in ((SHARPNESS, 1.0), ("second_order/hessian_vector_products", products),
                               ("second_order/sharpness_seconds", 0.1 + 0.5 * products),
                               ("second_order/per_sample_seconds", 0.25)):
                writer.add_scalar(tag, value, step, walltime=clock)
    writer.close()
    costs = cost_summary(tmp_path / "run")
    assert costs["step"] == pytest.approx(100) and costs["per_sample"] == pytest.approx(250)
    assert costs["products"] == 2 and costs["sharpness"] == pytest.approx(1100)  # calls at steps 1, 10, 20 | 30
    assert costs["graph"] == pytest.approx(100) and costs["hvp"] == pytest.approx(500)
    table = cost_table(costs)
    assert "a sharpness estimate (2 products, median)" in table and "1100.0 ms =  11.0 steps" in table
