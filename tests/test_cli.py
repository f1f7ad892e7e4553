"""handgrad.cli end to end: configs, what a run prints and logs, resuming, and one-line refusals of bad input."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
import torchvision
from conftest import REPO
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from handgrad import cli
from handgrad.configfiles import config_dir
from handgrad.data import DataModule
from handgrad.lit_module import Classifier
from handgrad.lm_module import LanguageModel
from handgrad.text_data import TokenDataModule

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
SPIRALS = str(REPO / "configs" / "spirals.yaml")
NIELSEN = str(REPO / "configs" / "nielsen_ch1.yaml")
STEPS_PER_EPOCH = 79  # spirals: ceil(2500 / 32)


@pytest.fixture
def workdir(tmp_path, monkeypatch, one_thread):
    """Run in an empty folder, so logs/ lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def events(run_dir) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    return accumulator.Reload()


def scalars(accumulator: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    """(step, value) in the order of the steps: a resumed run writes a second event file, and TensorBoard reads
    the files in the order of their names (time, host, process, a counter), not always the order written."""
    return sorted(((e.step, e.value) for e in accumulator.Scalars(tag)), key=lambda point: point[0])


# --------------------------------------------------------------------------- configs


def test_the_default_config_is_mnist_mlp(workdir, mnist_root):
    assert config_dir() == REPO / "configs"  # in a clone, the configs users see are the ones shipped
    assert cli.build(["--data.root", mnist_root, "--data.download", "false"]).trainer.logger.name == "mnist_mlp"
    assert cli.config_name(["--config", "configs/nielsen_ch1.yaml", "--model.lr", "1"]) == "nielsen_ch1"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses_and_instantiates(config, mnist_root, workdir):
    text = config.read_text()
    assert text.startswith("#"), f"{config.name} should open with a comment saying what it shows"
    if cli.trains_language_model(["--config", str(config)]):  # text or generated problems: no files to point at
        run = cli.build(["--config", str(config)])
        assert isinstance(run.model, LanguageModel) and isinstance(run.datamodule, TokenDataModule)
    else:
        run = cli.build(["--config", str(config), "--data.root", mnist_root, "--data.download", "false"])
        assert isinstance(run.model, Classifier) and isinstance(run.datamodule, DataModule)
    assert run.trainer.max_epochs >= 1 and run.trainer.logger.name == config.stem


# --------------------------------------------------------------------------- fitting


def test_fit_on_spirals_logs_every_tag_to_tensorboard(workdir, capsys):
    assert cli.main(["--config", SPIRALS, "--trainer.max_epochs", "3", "--model.histogram_every_n_steps", "100"]) == 0
    run = workdir / "logs" / "spirals" / "version_0"
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    log = events(run)
    assert {"train/loss", "train/acc", "train/lr", "train/epoch", "val/loss", "val/acc", "test/acc"} <= set(
        log.Tags()["scalars"])
    assert {"weights/layers.0.weight", "grad/layers.0.weight", "weights/layers.1.bias"} <= set(
        log.Tags()["histograms"])
    assert "_hparams_/session_start_info" in log.PluginTagToContent("hparams")  # the HPARAMS tab
    losses = scalars(log, "train/loss")
    assert [step for step, _ in losses][-1] == 3 * STEPS_PER_EPOCH  # x-axis: optimiser steps
    assert losses[-1][1] < losses[0][1]
    assert scalars(log, "test/acc")[-1][1] > 0.6  # chance: 1/3
    out = capsys.readouterr().out  # stdout, not a terminal here: a line per epoch, then the summary
    assert [line.split("  ")[0] for line in out.splitlines()[:3]] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert SUMMARY.fullmatch(out.splitlines()[3]) and len(out.splitlines()) == 4, out


def test_fit_on_mnist_idx_files(workdir, mnist_root):
    args = ["--config", NIELSEN, "--data.root", mnist_root, "--data.download", "false", "--data.val_size", "50",
            "--trainer.max_epochs", "4"]
    assert cli.main(args) == 0
    log = events(workdir / "logs" / "nielsen_ch1" / "version_0")
    losses = scalars(log, "train/loss")
    assert len(losses) == 4 and losses[-1][1] < losses[0][1]
    assert scalars(log, "test/acc")[-1][1] > 0.5  # chance: 0.1


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_resume_from_last_continues_at_the_saved_epoch(workdir):
    assert cli.main(["--config", SPIRALS, "--trainer.max_epochs", "1"]) == 0
    assert cli.main(["--config", SPIRALS, "--trainer.max_epochs", "2", "--ckpt_path", "last"]) == 0
    run = workdir / "logs" / "spirals" / "version_0"
    assert not (workdir / "logs" / "spirals" / "version_1").exists()  # the same run folder goes on
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 2 * STEPS_PER_EPOCH
    # Epoch 1 ran once: the resumed run logged only epoch 2's step, and its test at its own checkpoint's step.
    log = events(run)
    assert [step for step, _ in scalars(log, "train/loss")] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    best = [int(m[1]) for m in map(re.compile(r"step(\d+)\.ckpt").search, map(str, run.glob("checkpoints/*")))
            if m]
    assert [step for step, _ in scalars(log, "test/acc")] == [STEPS_PER_EPOCH, max(best)]
    assert "hp_metric" not in log.Tags()["scalars"]


# --------------------------------------------------------------------------- bad input: one line, no traceback


def no_network(self):
    raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: <urlopen error [Errno -3] no network>")


@pytest.mark.parametrize("args, expected", [
    (["--data.batch_size", "0"], "error: data.batch_size=0 is not a positive integer or 'full'; use e.g."),
    (["--data.batch_size", "-3"], "error: data.batch_size=-3 is not a positive integer or 'full'"),
    (["--data.batch_size", "fulll"], "error: data.batch_size='fulll' is not a positive integer or 'full'"),
    (["--data.dataset", "cifar10"], "error: data.dataset='cifar10' is unknown; choose one of 'mnist'"),
    (["--model.net.init_args.activation", "relux"], "error: MLP: unknown activation 'relux'; choose one of"),
    (["--model.loss", "hinge"], "error: model.loss='hinge' is unknown; choose one of 'cross_entropy', 'mse'"),
    (["--model.lr", "0"], "error: model.lr=0.0 must be > 0"),
    (["--model.lr", "-0.5"], "error: model.lr=-0.5 must be > 0"),
    (["--model.lr", "fast"], 'error: Parser key "model.lr": Expected a <class \'float\'>. Got value: fast'),
    (["--ckpt_path", "last"], "error: --ckpt_path last: no logs/spirals/version_*/checkpoints/last.ckpt yet"),
])
def test_bad_input_stops_with_one_line(args, expected, workdir, capsys):
    assert cli.main(["--config", SPIRALS, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1, err
    assert not (workdir / "logs").exists()  # stopped before any training


def test_missing_data_names_the_path_and_layout(workdir, capsys):
    assert cli.main(["--config", NIELSEN, "--data.root", "nowhere", "--data.download", "false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.root='nowhere' has no mnist files and data.download is false") and (
        "nowhere/MNIST/raw/train-images-idx3-ubyte" in err and err.count("\n") == 1)


def test_failed_download_says_why_and_how_to_work_offline(workdir, capsys, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    assert cli.main(["--config", NIELSEN, "--data.root", "empty"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not download mnist (Error downloading train-images-idx3-ubyte.gz: <urlopen "
                          "error [Errno -3] no network>); nothing was written. Offline, put train-images-idx3-ubyte")
    assert "into empty/MNIST/raw/ and pass --data.download false" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (workdir / "empty").exists()


# --------------------------------------------------------------------------- the script itself


# "test accuracy 88.20% (best val/acc checkpoint: epoch 2 of 3, step 158), test loss 0.3082; 4.2 s;
#  run logs/spirals/version_0; .venv/bin/tensorboard --logdir logs"
SUMMARY = re.compile(r"test accuracy \d+\.\d\d% \(best val/acc checkpoint: epoch \d+ of \d+, step [\d,]+\), test loss "
                     r"\d\.\d{4}; \d+\.\d s; run logs/\w+/version_\d+; \S*tensorboard --logdir logs")


def script(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_smoke_fast_dev_run(tmp_path):
    """The real script in a fresh process: one chunk each of fit, validation and test."""
    done = script("--config", SPIRALS, "--trainer.fast_dev_run", "true", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("test accuracy ") and "(final weights: step 1)" in done.stdout
    assert "Traceback" not in done.stderr


def test_a_run_piped_to_a_file_prints_epoch_lines_and_one_summary_line(tmp_path):
    """stdout not a terminal (``| tee run.log``): a line per epoch and the summary, nothing else; Lightning's
    lines go to stderr, without its advert and the two lines about loading the tested checkpoint."""
    done = script("--config", "spirals", "--trainer.max_epochs", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch 1/2  step 79  train/loss ") and lines[1].startswith(
        "epoch 2/2  step 158  train/loss ") and " val/acc 0." in lines[1]
    assert SUMMARY.fullmatch(lines[2]) and "; run logs/spirals/version_0; " in lines[2], lines[2]
    assert "GPU available" in done.stderr
    for unwanted in ("Tip:", "Restoring states", "Loaded model weights", "weights_only", "Warning", "Traceback"):
        assert unwanted not in done.stderr, unwanted


def test_an_offline_download_is_the_runs_only_output_and_leaves_nothing(tmp_path):
    """In a fresh process (where Lightning prints its banner on stderr): the error comes before it, alone."""
    run = ("import sys, torchvision\n"
           "def offline(self):\n"
           "    raise RuntimeError('Error downloading train-images-idx3-ubyte.gz:\\nTried https://mirror.example/, '\n"
           "                       'got:\\n<urlopen error [Errno -2] Name or service not known>\\n' + 'x' * 300)\n"
           "torchvision.datasets.MNIST.download = offline\n"
           "from handgrad.cli import main\n"
           "sys.exit(main(['--data.root', 'new/data']))\n")
    done = subprocess.run([sys.executable, "-c", run], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: could not download mnist (Error downloading train-images-idx3-ubyte.gz: "
                                  "Tried https://mirror.example/, got: <urlopen error [Errno -2] Name or service "
                                  "not known> " + "x" * 300 + "); nothing was written.")
    assert done.stderr.count("\n") == 1, done.stderr
    assert list(tmp_path.iterdir()) == []  # no new/, no new/data/MNIST/raw/


def test_cli_bad_value_prints_one_line_and_exits_2(tmp_path):
    done = script("--config", SPIRALS, "--model.lr", "0", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr == "error: model.lr=0.0 must be > 0; use e.g. --model.lr 0.1\n"


def test_print_config_without_arguments_shows_the_default_config(workdir, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["--print_config"])
    assert exit.value.code == 0
    printed = capsys.readouterr().out
    assert "- 512" in printed and "name: mnist_mlp" in printed
