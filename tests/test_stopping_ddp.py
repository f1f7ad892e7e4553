"""SIGTERM and SIGINT under Lightning's DDP, 2 CPU processes (gloo): whichever process gets the signal, both
finish the chunk, stop at the same place, save one last.ckpt (with each rank's random state), exit with
128 + the signal and never hang; the resumed DDP run ends bit for bit as the uninterrupted one, dropout
included.

Each run is the real script in a session of its own (a signal to the process group, as a terminal's
Ctrl-C sends, stays inside it) with a deadline: past it, every process of the session gets SIGABRT
(with PYTHONFAULTHANDLER, each prints its Python stack), then SIGKILL. About 12 s a run on the 2-core
dev machine (the seven scenarios together about 3 minutes): a SIGTERM to one rank in the middle of a
chunk, a Ctrl-C to the group, a SIGTERM in start-up, in validation, to the group in the middle of a
chunk and in the test (each stop in training resumed and compared bit for bit), and a full disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from runs import assert_same_state
from test_cli import REPO, SPIRALS

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

# 1000 training examples at batch 7 (3 + 4 rows a rank): 143 steps an epoch, in chunks ending at steps 35, 71, 107
# and 143. Momentum 0.9 (the config) and dropout make each rank's random state part of what a resume restores.
RUN = ["--config", SPIRALS, "--data.val_size", "2000", "--data.batch_size", "7", "--data.chunk_size", "280",
       "--data.eval_batch_size", "250", "--model.net.init_args.dropout", "0.1", "--trainer.max_epochs", "3",
       "--trainer.enable_model_summary", "false", "--trainer.strategy", "ddp", "--trainer.devices", "2",
       "--trainer.accelerator", "cpu"]
EPOCH = 143
LAST = "logs/spirals/version_0/checkpoints/last.ckpt"


def ddp(workdir, *args: str, deadline: float = 240.0) -> subprocess.CompletedProcess:
    """The script on 2 processes in its own session; fails, with every process's stack, if it outlives the deadline."""
    workdir.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONFAULTHANDLER": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(REPO / "scripts" / "train.py"), *RUN, *args]
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGABRT)
        time.sleep(3)
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"hung for {deadline:.0f} s; the stacks:\n{err[-8000:]}")
    for _ in range(60):  # rank 0 has exited; no process of the run may stay behind it
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"processes of the run were still there 30 s after rank 0 exited:\n{err[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def send(signum: str, when: str, rank: int = 0, target: str = "self", epoch: int = 1, chunk: int = 1) -> list[str]:
    return ["--trainer.callbacks+=signals.SendSignal", "--trainer.callbacks.signum", signum, "--trainer.callbacks.when",
            when, "--trainer.callbacks.rank", str(rank), "--trainer.callbacks.target", target,
            "--trainer.callbacks.epoch", str(epoch), "--trainer.callbacks.chunk", str(chunk)]


def checkpoint(workdir) -> dict:
    return torch.load(workdir / LAST, weights_only=False)


@pytest.fixture(scope="module")
def uninterrupted_ddp(tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("ddp_uninterrupted")
    done = ddp(workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    return checkpoint(workdir)


def assert_stopped(done, signum: int, step: int, workdir) -> None:
    """Exit status 128 + signum; rank 0's one stop line; last.ckpt at ``step`` with both ranks' random states."""
    assert done.returncode == 128 + signum, done.stderr[-3000:]
    name = signal.Signals(signum).name
    epoch, steps = divmod(step, EPOCH)
    where = f"the end of epoch {epoch}" if steps == 0 else f"epoch {epoch + 1}, {steps} of {EPOCH} steps into it"
    line = f"stopped by {name} after optimiser step {step} ({where}): saved {LAST}; resume with --ckpt_path last\n"
    assert done.stderr.count("stopped by") == 1 and line in done.stderr, done.stderr[-3000:]
    stopped = checkpoint(workdir)
    assert stopped["global_step"] == step and len(stopped["torch_rng_states_by_rank"]) == 2


def assert_resumes_exactly(workdir, uninterrupted_ddp) -> None:
    done = ddp(workdir, "--ckpt_path", "last")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_state(checkpoint(workdir), uninterrupted_ddp)


def test_sigterm_to_one_rank_in_the_middle_of_a_chunk(tmp_path, uninterrupted_ddp):
    """Rank 1 alone: Lightning's handler would broadcast from inside it, between two all-reduces, and hang."""
    done = ddp(tmp_path, *send("SIGTERM", "mid_chunk", rank=1))
    assert_stopped(done, signal.SIGTERM, EPOCH + 71, tmp_path)  # the chunk in progress finished on both ranks
    assert_resumes_exactly(tmp_path, uninterrupted_ddp)


def test_ctrl_c_to_the_process_group_between_chunks(tmp_path):
    """A terminal's Ctrl-C: every process gets a SIGINT (resuming from such a stop: the tests below)."""
    done = ddp(tmp_path, *send("SIGINT", "chunk", target="group"))
    assert_stopped(done, signal.SIGINT, EPOCH + 35, tmp_path)


def test_sigterm_to_rank_0_in_validation_lets_the_epoch_finish(tmp_path, uninterrupted_ddp):
    done = ddp(tmp_path, *send("SIGTERM", "validation"))
    assert_stopped(done, signal.SIGTERM, 2 * EPOCH, tmp_path)
    assert_resumes_exactly(tmp_path, uninterrupted_ddp)


def test_sigterm_to_the_group_in_the_middle_of_a_chunk(tmp_path, uninterrupted_ddp):
    done = ddp(tmp_path, *send("SIGTERM", "mid_chunk", target="group"))
    assert_stopped(done, signal.SIGTERM, EPOCH + 71, tmp_path)
    assert_resumes_exactly(tmp_path, uninterrupted_ddp)


def test_sigterm_to_rank_1_in_start_up_stops_both_before_training(tmp_path):
    done = ddp(tmp_path, *send("SIGTERM", "setup", rank=1))
    assert done.returncode == 143, done.stderr[-3000:]
    assert "stopped by SIGTERM during start-up, before training began; nothing was saved\n" in done.stderr
    assert not (tmp_path / LAST).exists()


def test_sigterm_to_the_group_in_the_test_keeps_the_trained_last_ckpt(tmp_path, uninterrupted_ddp):
    done = ddp(tmp_path, *send("SIGTERM", "test", target="group"))
    assert done.returncode == 143, done.stderr[-3000:]
    assert f"stopped by SIGTERM during the test, after training had finished ({LAST} holds it)" in done.stderr
    assert_same_state(checkpoint(tmp_path), uninterrupted_ddp)


def test_a_failed_checkpoint_write_stops_both_ranks_with_one_line(tmp_path):
    """Only rank 0 writes; its failure reaches rank 1 too (no connection error, no traceback)."""
    done = ddp(tmp_path, "--trainer.callbacks+=signals.FillDisk")
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.count("error: ") == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "error: cannot write the checkpoint logs/spirals/version_0/checkpoints/" in done.stderr
    assert checkpoint(tmp_path)["global_step"] == EPOCH  # epoch 1's, whole
