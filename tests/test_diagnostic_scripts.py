"""scripts/compare_batch_modes.py and scripts/gradient_flow.py on small data (their PNGs and TensorBoard
runs), handgrad.benchmarks.callback_cost, and every script run with its defaults leaving the tracked files alone."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict

import lightning as L
import pytest
from conftest import REPO
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from handgrad.benchmarks import callback_cost

pytestmark = pytest.mark.usefixtures("one_thread")


def script(name: str):
    """scripts/<name>.py as a module (registered in sys.modules, as its dataclasses need)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare_batch_modes, gradient_flow = script("compare_batch_modes"), script("gradient_flow")


def scalars(run_dir, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- compare_batch_modes


@pytest.mark.parametrize("data", ["quick", "mnist"])
def test_compare_batch_modes_writes_its_png_and_a_run_per_regime(data, tmp_path, mnist_root, capsys):
    out, logdir = tmp_path / "docs" / "batch_modes.png", tmp_path / "logs"
    data_args = ["--quick", "--examples", "90"] if data == "quick" else ["--data-root", mnist_root, "--examples", "64"]
    assert compare_batch_modes.main([*data_args, "--epochs", "2", "--out", str(out), "--logdir", str(logdir)]) == 0
    assert is_png(out)

    runs = {regime: scalars(logdir / regime, "train/loss") for regime in ("full-batch", "mini-batch", "stochastic")}
    n = 90 if data == "quick" else 64
    assert {run[0] for run in runs.values()} == {runs["full-batch"][0]}  # the same initial weights: one loss at 0
    assert all(run[-1][0] == 2 * n for run in runs.values())  # the same number of examples seen
    assert len(runs["stochastic"]) > len(runs["mini-batch"]) > len(runs["full-batch"]) == 3  # start + 2 updates

    table = capsys.readouterr().out
    assert f"| full-batch | {n} | 0.5 | 2 |" in table and f"| stochastic | 1 | 0.01 | {2 * n} |" in table


def test_compare_batch_modes_replaces_its_previous_runs(tmp_path):
    args = ["--quick", "--examples", "30", "--epochs", "1", "--out", str(tmp_path / "a.png"),
            "--logdir", str(tmp_path / "logs")]
    compare_batch_modes.main(args)
    compare_batch_modes.main(args)
    assert len(list((tmp_path / "logs" / "mini-batch").glob("events.out.tfevents.*"))) == 1


def test_measurement_points_are_log_spaced_and_at_every_epoch_end():
    points = compare_batch_modes.measurement_points(total_updates=2000, updates_per_epoch=500)
    assert {1, 10, 100, 1000, 500, 1500, 2000} <= points and max(points) == 2000
    assert len(points & set(range(100, 1000)) - {500}) == 12  # a dozen a decade, and the epoch end 500


# --------------------------------------------------------------------------- gradient_flow


@pytest.mark.parametrize("data", ["quick", "mnist"])
def test_gradient_flow_writes_its_png_and_a_run_per_network(data, tmp_path, mnist_root):
    out, logdir = tmp_path / "gradient_flow.png", tmp_path / "logs"
    data_args = ["--quick"] if data == "quick" else ["--data-root", mnist_root, "--examples", "150", "--probe", "100"]
    assert gradient_flow.main([*data_args, "--log-every", "10", "--out", str(out), "--logdir", str(logdir)]) == 0
    assert is_png(out)

    steps = 60 if data == "quick" else 15  # 600 or 150 examples in batches of 10
    at_init = {}
    for activation in ("sigmoid", "relu"):
        norms = [scalars(logdir / activation, f"grad/layers.{layer}/norm") for layer in range(7)]  # 6 hidden + output
        assert all(run[0][0] == 0 and run[-1][0] == steps for run in norms)
        at_init[activation] = [run[0][1] for run in norms]
    # Nielsen ch. 5, measured: in the sigmoid net the first layer's gradient is orders of magnitude below
    # the last layer's; with ReLU far less so.
    ratio = {activation: norms[0] / norms[-1] for activation, norms in at_init.items()}
    assert ratio["sigmoid"] < 1e-2 and ratio["sigmoid"] < ratio["relu"] / 10


# --------------------------------------------------------------------------- callback_cost


def test_callback_cost_prints_each_callbacks_share_of_a_fit(capsys):
    callback_cost.main(["--configs", "spirals", "--epochs", "1"])  # spirals.yaml: GradientCheck, GradientFlow
    row = r"\| spirals \| 1 \| 79 \| [\d.]+ s \| 500 \| [\d.]+% \| [\d.]+% \| off \|"
    assert re.search(row, capsys.readouterr().out)


def test_time_hooks_times_the_hooks_a_callback_defines_and_no_other():
    class Slow(L.Callback):
        def on_train_start(self, trainer, pl_module):
            time.sleep(0.05)

    seconds, callback = defaultdict(float), Slow()
    callback_cost.time_hooks(callback, seconds)
    callback.on_train_start(None, None)
    callback.on_train_end(None, None)  # Lightning's empty hook: left as it is
    assert 0.05 <= seconds["Slow"] < 1
    assert "on_train_start" in vars(callback) and "on_train_end" not in vars(callback)


def test_callback_cost_names_an_unknown_config_and_the_known_ones(capsys):
    with pytest.raises(SystemExit):
        callback_cost.main(["--configs", "nope"])
    assert re.search(r"argument --configs: invalid choice: 'nope' \(choose from .*'mnist_mlp'", capsys.readouterr().err)


# --------------------------------------------------------------------------- every script, with its defaults

DEFAULT_RUNS = [  # each script as a user first runs it (small data where its defaults would read MNIST)
    ["scripts/train.py", "--config", "spirals", "--trainer.max_epochs", "1"],
    ["scripts/compare_batch_modes.py", "--quick"],
    ["scripts/gradient_flow.py", "--quick"],
    ["scripts/check_grads.py", "--only", "linear"],
    ["scripts/callback_cost.py", "--configs", "spirals", "--epochs", "1"],
    ["scripts/benchmark.py", "--quick", "--groups", "steps", "--only", "10", "--repeats", "2"],
]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_scripts_leave_every_tracked_file_as_it_was(tmp_path):
    """In a copy of the repository's tracked files (a git repository of its own), each script run with its
    defaults writes under logs/ (ignored) only: git status stays clean, the figures in docs/ included."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    copy = tmp_path / "repo"
    for name in filter(None, tracked.split("\0")):
        if (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "copy"]):
        subprocess.run(git + command, cwd=copy, check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(copy / "src"), "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen([sys.executable, *args], cwd=copy, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for args in DEFAULT_RUNS]  # side by side
    for args, process in zip(DEFAULT_RUNS, runs, strict=True):
        _, err = process.communicate(timeout=900)  # six at once: generous, for a loaded machine
        assert process.returncode == 0, (args, err[-2000:])
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=copy, capture_output=True,
                            text=True, check=True).stdout
    assert status == "", status
    assert (copy / "logs" / "compare_batch_modes" / "batch_modes.png").is_file()
    assert (copy / "logs" / "gradient_flow" / "gradient_flow.png").is_file()
