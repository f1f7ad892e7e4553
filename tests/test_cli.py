"""scripts/train.py end to end: configs, TensorBoard tags, resuming, and one-line refusals of bad input."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch
import torchvision
from conftest import REPO
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from handgrad.data import DataModule
from handgrad.lit_module import Classifier

spec = importlib.util.spec_from_file_location("train", REPO / "scripts" / "train.py")
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)

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
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


# --------------------------------------------------------------------------- configs


def test_the_default_config_is_mnist_mlp():
    assert train.DEFAULT_CONFIG == REPO / "configs" / "mnist_mlp.yaml"
    assert train.with_default_config([]) == ["--config", str(train.DEFAULT_CONFIG)]
    assert train.config_name(["--config", "configs/nielsen_ch1.yaml", "--model.lr", "1"]) == "nielsen_ch1"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses_and_instantiates(config, mnist_root, workdir):
    text = config.read_text()
    assert text.startswith("#"), f"{config.name} should open with a comment saying what it shows"
    cli = train.build(["--config", str(config), "--data.root", mnist_root, "--data.download", "false"])
    assert isinstance(cli.model, Classifier) and isinstance(cli.datamodule, DataModule)
    assert cli.trainer.max_epochs >= 1 and cli.trainer.logger.name == config.stem


# --------------------------------------------------------------------------- fitting


def test_fit_on_spirals_logs_every_tag_to_tensorboard(workdir):
    assert train.main(["--config", SPIRALS, "--trainer.max_epochs", "3", "--model.histogram_every_n_steps", "100"]) == 0
    run = workdir / "logs" / "spirals" / "version_0"
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    log = events(run)
    assert {"train/loss", "train/acc", "train/lr", "val/loss", "val/acc", "hp_metric", "test/acc"} <= set(
        log.Tags()["scalars"])
    assert {"weights/layers.0.weight", "grads/layers.0.weight", "weights/layers.1.bias"} <= set(
        log.Tags()["histograms"])
    assert "_hparams_/session_start_info" in log.PluginTagToContent("hparams")  # the HPARAMS tab
    losses = scalars(log, "train/loss")
    assert [step for step, _ in losses][-1] == 3 * STEPS_PER_EPOCH  # x-axis: optimiser steps
    assert losses[-1][1] < losses[0][1]
    assert scalars(log, "hp_metric")[-1] == scalars(log, "val/acc")[-1]
    assert scalars(log, "test/acc")[-1][1] > 0.6  # chance: 1/3


def test_fit_on_mnist_idx_files(workdir, mnist_root):
    args = ["--config", NIELSEN, "--data.root", mnist_root, "--data.download", "false", "--data.val_size", "50",
            "--trainer.max_epochs", "4"]
    assert train.main(args) == 0
    log = events(workdir / "logs" / "nielsen_ch1" / "version_0")
    losses = scalars(log, "train/loss")
    assert len(losses) == 4 and losses[-1][1] < losses[0][1]
    assert scalars(log, "test/acc")[-1][1] > 0.5  # chance: 0.1


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_resume_from_last_continues_at_the_saved_epoch(workdir):
    assert train.main(["--config", SPIRALS, "--trainer.max_epochs", "1"]) == 0
    assert train.main(["--config", SPIRALS, "--trainer.max_epochs", "2", "--ckpt_path", "last"]) == 0
    run = workdir / "logs" / "spirals" / "version_0"
    assert not (workdir / "logs" / "spirals" / "version_1").exists()  # the same run folder goes on
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 2 * STEPS_PER_EPOCH
    # Epoch 1 ran once: the resumed run logged only epoch 2's step (and no placeholder hp_metric).
    log = events(run)
    assert [step for step, _ in scalars(log, "train/loss")] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert scalars(log, "hp_metric")[-1] == scalars(log, "val/acc")[-1]


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
    assert train.main(["--config", SPIRALS, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1, err
    assert not (workdir / "logs").exists()  # stopped before any training


def test_missing_data_names_the_path_and_layout(workdir, capsys):
    assert train.main(["--config", NIELSEN, "--data.root", "nowhere", "--data.download", "false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.root='nowhere' has no mnist files and data.download is false") and (
        "nowhere/MNIST/raw/train-images-idx3-ubyte" in err and err.count("\n") == 1)


def test_failed_download_says_how_to_place_the_files(workdir, capsys, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    assert train.main(["--config", NIELSEN, "--data.root", "empty"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not download mnist into empty/MNIST/raw") and "by hand" in err
    assert err.count("\n") == 1 and "Traceback" not in err


# --------------------------------------------------------------------------- the script itself


def script(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_smoke_fast_dev_run(tmp_path):
    """The real script in a fresh process: one chunk each of fit, validation and test."""
    done = script("--config", SPIRALS, "--trainer.fast_dev_run", "true", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "test/acc" in done.stdout and "Traceback" not in done.stderr


def test_cli_bad_value_prints_one_line_and_exits_2(tmp_path):
    done = script("--config", SPIRALS, "--model.lr", "0", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr == "error: model.lr=0.0 must be > 0; use e.g. --model.lr 0.1\n"


def test_print_config_without_arguments_shows_the_default_config(workdir, capsys):
    with pytest.raises(SystemExit) as exit:
        train.main(["--print_config"])
    assert exit.value.code == 0
    printed = capsys.readouterr().out
    assert "- 512" in printed and "name: mnist_mlp" in printed
