"""SIGTERM and SIGINT on one process (handgrad.stopping), sent at chosen points (tests/signals.py): the run
finishes the chunk in progress (or the validation, or the checkpoint being written), saves last.ckpt,
says where it is and how to resume, and exits with 128 + the signal; the resumed run ends bit for bit
as the uninterrupted one (conftest.uninterrupted). A second signal acts at once and leaves the last.ckpt
written before, as SIGKILL does. SLURM's requeue signal still saves Lightning's hpc checkpoint and requeues the job.
Under DDP: test_stopping_ddp.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from runs import LAST, RUN, STEPS_PER_EPOCH, assert_same_state, fit, last_checkpoint, logged
from signals import SendSignal

from handgrad import cli

pytestmark = [pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty"),
              pytest.mark.usefixtures("signal_handlers", "one_thread")]
RESUME = "resume with --ckpt_path last\n"


def stopped_at(step: int) -> str:
    epoch, steps = divmod(step, STEPS_PER_EPOCH)
    where = f"the end of epoch {epoch}" if steps == 0 else f"epoch {epoch + 1}, {steps} of 79 steps into it"
    return f"after optimiser step {step} ({where}): saved {'/'.join(LAST)}; {RESUME}"


@pytest.mark.parametrize("name, when, step", [
    ("SIGTERM", "chunk", STEPS_PER_EPOCH + 19),  # before the second chunk of epoch 2
    ("SIGTERM", "mid_chunk", STEPS_PER_EPOCH + 39),  # during it: the chunk finishes
    ("SIGTERM", "validation", 2 * STEPS_PER_EPOCH),  # the validation and the epoch's checkpoints finish
    ("SIGTERM", "save", 2 * STEPS_PER_EPOCH),  # the checkpoint being written finishes
    ("SIGINT", "chunk", STEPS_PER_EPOCH + 19),
    ("SIGINT", "validation", 2 * STEPS_PER_EPOCH),
])
def test_a_signal_in_training_saves_the_chunk_end_and_the_resumed_run_ends_as_if_never_stopped(
        name, when, step, tmp_path, monkeypatch, capsys, uninterrupted):
    send = SendSignal(name, when, epoch=1, chunk=1)
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3", "--data.eval_batch_size", "100",
               callbacks=(send,)) == 128 + getattr(signal, name)
    assert capsys.readouterr().err.endswith(f"stopped by {name} {stopped_at(step)}")
    assert last_checkpoint(tmp_path)["global_step"] == step

    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3", "--data.eval_batch_size", "100",
               "--ckpt_path", "last") == 0
    checkpoint, metrics = uninterrupted
    assert_same_state(last_checkpoint(tmp_path), checkpoint)
    assert logged(tmp_path)["train/loss"] == metrics["train/loss"]  # no chunk trained twice, none skipped


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_in_start_up_stops_before_training_and_saves_nothing(name, tmp_path, monkeypatch, capsys):
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3", callbacks=(SendSignal(name, "setup"),)) == \
        128 + getattr(signal, name)
    assert capsys.readouterr().err.endswith(f"stopped by {name} during start-up, before training began; nothing was "
                                            "saved\n")
    assert not tmp_path.joinpath(*LAST).exists()


def test_a_signal_before_the_trainer_exists_stops_the_run_too(tmp_path, monkeypatch, capsys):
    check = cli.check_config_file

    def check_then_signal(path):
        check(path)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(cli, "check_config_file", check_then_signal)
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3") == 143
    assert capsys.readouterr().err == "stopped by SIGTERM during start-up, before training began; nothing was saved\n"
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_in_the_test_keeps_the_trained_weights_in_last_ckpt(name, tmp_path, monkeypatch, capsys,
                                                                     uninterrupted):
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3", callbacks=(SendSignal(name, "test"),)) == \
        128 + getattr(signal, name)
    assert capsys.readouterr().err.endswith(
        f"stopped by {name} during the test, after training had finished ({'/'.join(LAST)} holds it); to test, run "
        "the same command with --ckpt_path last\n")
    assert_same_state(last_checkpoint(tmp_path), uninterrupted[0])  # not the best checkpoint's weights
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3", "--ckpt_path", "last") == 0  # the test alone
    assert logged(tmp_path)["test/acc"] == uninterrupted[1]["test/acc"]


@pytest.mark.parametrize("when", ["mid_chunk", "save"])
def test_a_second_ctrl_c_stops_at_once_and_leaves_the_last_checkpoint_as_it_was(when, tmp_path, monkeypatch, capsys):
    send = SendSignal("SIGINT", when, epoch=1, chunk=1, times=2)
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3", callbacks=(send,)) == 130
    assert capsys.readouterr().err.endswith(
        f"stopped at once by SIGINT, the second stop signal; the last.ckpt saved before it (if any) is as it was; "
        f"{RESUME}")
    assert last_checkpoint(tmp_path)["global_step"] == STEPS_PER_EPOCH  # epoch 1's
    assert not list(tmp_path.joinpath(*LAST[:-1]).glob(".*.tmp"))


def test_a_second_sigterm_terminates_at_once_and_leaves_the_last_checkpoint_as_it_was(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *RUN, "--trainer.max_epochs", "3",
                           "--trainer.callbacks+=signals.SendSignal", "--trainer.callbacks.when", "mid_chunk",
                           "--trainer.callbacks.times", "2"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == -signal.SIGTERM, done.stderr[-3000:]  # what a shell shows as 143
    assert last_checkpoint(tmp_path)["global_step"] == STEPS_PER_EPOCH
    assert not list(tmp_path.joinpath(*LAST[:-1]).glob(".*.tmp"))


def test_after_a_sigkill_the_run_resumes_from_the_last_epoch_exactly(tmp_path, monkeypatch, uninterrupted):
    """SIGKILL cannot be handled: last.ckpt is the one of the latest epoch, whole, and the resume is exact."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *RUN, "--trainer.max_epochs", "3",
                           "--trainer.callbacks+=signals.SendSignal", "--trainer.callbacks.signum", "SIGKILL",
                           "--trainer.callbacks.when", "mid_chunk"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert last_checkpoint(tmp_path)["global_step"] == STEPS_PER_EPOCH
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3", "--ckpt_path", "last") == 0
    assert_same_state(last_checkpoint(tmp_path), uninterrupted[0])


def test_slurm_requeue_saves_an_hpc_checkpoint_requeues_and_the_next_sigterm_stops_gracefully(
        tmp_path, monkeypatch, capsys, uninterrupted):
    """SLURM (faked: its environment variables and an scontrol that records its arguments) sends the requeue
    signal ahead of the time limit, then SIGTERM; the requeued job resumes from the hpc checkpoint by itself."""
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.parent.mkdir()
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}")
    for key, value in dict(SLURM_NTASKS="1", SLURM_JOB_NAME="train", SLURM_JOB_ID="4242", SLURM_PROCID="0",
                           SLURM_LOCALID="0", SLURM_NODEID="0").items():
        monkeypatch.setenv(key, value)
    send = (SendSignal("SIGUSR1", "chunk", epoch=1, chunk=1), SendSignal("SIGTERM", "chunk", epoch=1, chunk=2))
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3", callbacks=send) == 143
    assert capsys.readouterr().err.endswith(f"stopped by SIGTERM {stopped_at(STEPS_PER_EPOCH + 39)}")
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert last_checkpoint(tmp_path)["global_step"] == STEPS_PER_EPOCH + 39
    hpc = torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=False)
    assert hpc["global_step"] == STEPS_PER_EPOCH + 19 and hpc["handgrad_position"]["steps"] == 19  # between chunks

    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3") == 0  # the requeued job: the same command
    resumed = torch.load(tmp_path / "logs" / "spirals" / "version_1" / "checkpoints" / "last.ckpt", weights_only=False)
    assert_same_state(resumed, uninterrupted[0])
