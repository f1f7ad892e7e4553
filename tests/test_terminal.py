"""handgrad.terminal: the progress bar's numbers, the epoch lines, lines printed above the bar, the summary line."""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from handgrad import terminal
from handgrad.data import DataModule
from handgrad.lit_module import Classifier
from handgrad.models import MLP
from handgrad.terminal import EpochLines, ProgressBar, console_above_bar, summary, tensorboard_command

pytestmark = pytest.mark.usefixtures("one_thread")


def fit(callback: L.Callback, epochs: int = 2) -> None:
    """Spirals, 2500 training examples at batch 32: 79 optimiser steps an epoch, in chunks of 20."""
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=isinstance(callback, ProgressBar),
                        callbacks=[callback], num_sanity_val_steps=0, log_every_n_steps=1)
    data = DataModule("spirals", batch_size=32, val_size=500, chunk_size=640)
    trainer.fit(Classifier(MLP([2, 16, 3]), lr=0.1), data)


def test_the_bar_counts_optimiser_steps_and_shows_the_loss_and_validation_accuracy(capsys):
    fit(ProgressBar())
    frames = re.split(r"[\r\n]", capsys.readouterr().out)
    epoch_2 = [frame for frame in frames if frame.startswith("Epoch 2/2")]
    assert re.search(r"^Epoch 2/2: 100%\|.*\| 79/79 \[.*step/s, loss=\d\.\d{4}, val_acc=\d+\.\d\d%\]", epoch_2[-1]), \
        epoch_2[-1]
    assert any(re.search(r"\| 19/79 .*loss=\d\.\d{4}\]$", frame) for frame in frames if frame.startswith("Epoch 1/2"))
    assert "v_num" not in "".join(frames)


def test_a_run_resumed_mid_epoch_starts_its_bar_where_it_stopped(capsys):
    bar = ProgressBar()
    trainer = SimpleNamespace(is_global_zero=True, global_step=130, current_epoch=1, max_epochs=2,
                              datamodule=SimpleNamespace(steps_per_epoch=79))
    bar._trainer = trainer  # what Lightning's setup sets
    bar.on_train_start(trainer, None)  # Lightning calls no on_train_epoch_start for the epoch it resumes in
    assert (bar.train_progress_bar.desc, bar.train_progress_bar.n, bar.train_progress_bar.total) == (
        "Epoch 2/2: ", 130 - 79, 79)
    bar.train_progress_bar.close()


def test_the_bar_formats_the_metrics_it_shows():
    metrics = {"train/loss": torch.tensor(0.091534), "val/acc": torch.tensor(0.95237), "train/acc": torch.tensor(0.9)}
    trainer = SimpleNamespace(callback_metrics=metrics)
    assert ProgressBar().get_metrics(trainer, None) == {"loss": "0.0915", "val_acc": "95.24%"}
    assert ProgressBar().get_metrics(SimpleNamespace(callback_metrics={}), None) == {}


def test_without_a_terminal_each_epoch_is_one_line(capsys):
    fit(EpochLines())
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"epoch 2/2  step 158  train/loss \d\.\d{4}  train/acc \d\.\d{4}  val/loss \d\.\d{4}  "
                        r"val/acc \d\.\d{4}  \(\d+\.\d s\)", lines[1]), lines[1]


def test_lightnings_lines_and_warnings_print_above_the_bar_and_the_handlers_come_back(capsys):
    logger = logging.getLogger("lightning.pytorch")
    console = logging.StreamHandler(sys.stderr)
    logger.addHandler(console)
    try:
        with console_above_bar(quiet=("Loaded model weights",)):
            assert console not in logger.handlers and type(logger.handlers[-1]).__name__ == "_AboveBar"
            logging.getLogger("lightning.pytorch.utilities.rank_zero").info("Loaded model weights from x")  # left out
            logger.warning("a line of Lightning's")
            warnings.warn("a warning", UserWarning, stacklevel=1)
        assert logger.handlers[-1] is console
    finally:
        logger.removeHandler(console)
    err = capsys.readouterr().err
    assert "a line of Lightning's\n" in err and "UserWarning: a warning" in err and "Loaded model" not in err


def test_the_summary_line_names_the_accuracy_the_checkpoint_the_time_and_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(terminal, "tensorboard_command", lambda logdir: f"tensorboard --logdir {logdir}")
    logger = TensorBoardLogger(save_dir=str(tmp_path / "logs"), name="mnist_mlp", version=2)
    trainer = SimpleNamespace(logger=logger, ckpt_path="best.ckpt", current_epoch=3, global_step=2346)
    model = SimpleNamespace(loaded_epoch=1, loaded_step=1564)
    results = {"test/acc": 0.97104, "test/loss": 0.09501}
    assert summary(trainer, model, results, "val/acc", 17.34) == (
        f"test accuracy 97.10% (best val/acc checkpoint: epoch 2 of 3, step 1,564), test loss 0.0950; 17.3 s; "
        f"run {tmp_path}/logs/mnist_mlp/version_2; tensorboard --logdir {tmp_path}/logs")
    assert summary(trainer, model, results, None, 125.2).startswith(
        "test accuracy 97.10% (final weights: step 2,346), test loss 0.0950; 2 min 5 s; run ")
    dummy = SimpleNamespace(logger=None, ckpt_path=None, current_epoch=1, global_step=1)  # fast_dev_run
    assert summary(dummy, model, results, None, 2.0) == "test accuracy 97.10% (final weights: step 1), test loss " \
                                                        "0.0950; 2.0 s"


def test_the_tensorboard_command_names_the_executable_beside_python_when_the_shell_would_not_find_it(tmp_path,
                                                                                                     monkeypatch):
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "tensorboard").write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    assert tensorboard_command("logs") == f".venv{os.sep}bin{os.sep}tensorboard --logdir logs"
    monkeypatch.setenv("PATH", str(bin_dir))
    os.chmod(bin_dir / "tensorboard", 0o755)
    assert tensorboard_command("logs") == "tensorboard --logdir logs"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_process_age_is_known_on_linux():
    assert 0 < terminal.process_seconds() < 24 * 3600
