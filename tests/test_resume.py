"""Reproducibility and resuming, through handgrad.cli: the same seed gives the same run; a run
stopped after an epoch, or by Ctrl-C in the middle of one, and resumed with --ckpt_path last ends
with the weights, optimiser state and metrics of a run that never stopped."""

from __future__ import annotations

import os
import signal

import lightning as L
import pytest
import torch
from test_cli import SPIRALS, events, scalars

from handgrad import cli

# 2500 spirals at batch 32: 79 steps an epoch, in 4 chunks of 19-20 steps (chunk_size 640).
# Dropout and momentum make the random state and the optimiser state part of what must be restored.
RUN = ["--config", SPIRALS, "--data.chunk_size", "640", "--model.momentum", "0.9",
       "--model.net.init_args.dropout", "0.1", "--trainer.enable_model_summary", "false"]
STEPS_PER_EPOCH = 79
pytestmark = pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")


@pytest.fixture
def sigint_handler():
    """Lightning ignores SIGINT after it handled a KeyboardInterrupt; give the test process its handler back."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def fit(workdir, monkeypatch, *args: str) -> int:
    workdir.mkdir(exist_ok=True)
    monkeypatch.chdir(workdir)
    return cli.main([*RUN, *args])


def last_checkpoint(workdir) -> dict:
    return torch.load(workdir / "logs" / "spirals" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)


def assert_same_state(resumed: dict, uninterrupted: dict) -> None:
    """Bit for bit: the weights, SGD's momentum buffers, the step count and the random state."""
    assert resumed["global_step"] == uninterrupted["global_step"] and resumed["epoch"] == uninterrupted["epoch"]
    for name, value in uninterrupted["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], value), name
    momentum = [s["momentum_buffer"] for s in uninterrupted["optimizer_states"][0]["state"].values()]
    resumed_momentum = [s["momentum_buffer"] for s in resumed["optimizer_states"][0]["state"].values()]
    assert len(momentum) == 4 and all(map(torch.equal, resumed_momentum, momentum))
    assert torch.equal(resumed["torch_rng_state"], uninterrupted["torch_rng_state"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, one_thread_module) -> tuple[dict, dict]:
    """Three epochs without a stop: (last.ckpt, {tag: [(step, value)]} of the TensorBoard scalars)."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert fit(workdir, monkeypatch, "--trainer.max_epochs", "3") == 0
    log = events(workdir / "logs" / "spirals" / "version_0")
    return last_checkpoint(workdir), {tag: scalars(log, tag) for tag in ("train/loss", "val/acc", "test/acc")}


@pytest.fixture(scope="module")
def one_thread_module():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_same_seed_and_config_give_the_same_run(tmp_path, monkeypatch, uninterrupted):
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3") == 0
    log = events(tmp_path / "logs" / "spirals" / "version_0")
    checkpoint, metrics = uninterrupted
    for tag, values in metrics.items():
        assert scalars(log, tag) == values, tag  # every logged value, exactly
    assert_same_state(last_checkpoint(tmp_path), checkpoint)


def test_resuming_after_an_epoch_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch, uninterrupted):
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "1") == 0
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3", "--ckpt_path", "last") == 0
    checkpoint, metrics = uninterrupted
    assert_same_state(last_checkpoint(tmp_path), checkpoint)
    log = events(tmp_path / "logs" / "spirals" / "version_0")
    assert scalars(log, "train/loss") == metrics["train/loss"]  # epoch 1 from the first run, 2-3 from the second
    assert scalars(log, "val/acc") == metrics["val/acc"]


class CtrlC(L.Callback):
    """Sends this process a SIGINT, as Ctrl-C in a terminal does, when chunk ``chunk`` of epoch ``epoch`` starts."""

    def __init__(self, epoch: int, chunk: int):
        self.epoch, self.chunk = epoch, chunk

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.chunk):
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_saves_a_checkpoint_after_the_chunk_and_the_resumed_run_ends_as_if_never_stopped(
        tmp_path, monkeypatch, capsys, sigint_handler, uninterrupted):
    build = cli.build

    def build_with_ctrl_c(args):
        run = build(args)
        run.trainer.callbacks.append(CtrlC(epoch=1, chunk=1))  # in epoch 2, during its second chunk
        return run

    with monkeypatch.context() as patched:
        patched.setattr(cli, "build", build_with_ctrl_c)
        with pytest.raises(SystemExit) as stopped:  # Lightning exits with 1 after a KeyboardInterrupt
            fit(tmp_path, patched, "--trainer.max_epochs", "3")
    assert stopped.value.code == 1
    step = STEPS_PER_EPOCH + 39  # the chunk ran to its end: chunks of 20 and 19 steps
    err = capsys.readouterr().err
    assert err.endswith(
        f"interrupted after optimiser step {step} (epoch 2): saved logs/spirals/version_0/checkpoints/last.ckpt; "
        "resume with --ckpt_path last\n")
    assert "weights_only" not in err  # Lightning's notice when a checkpoint is saved without saying what it holds
    assert last_checkpoint(tmp_path)["global_step"] == step

    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3", "--ckpt_path", "last") == 0
    checkpoint, metrics = uninterrupted
    assert_same_state(last_checkpoint(tmp_path), checkpoint)
    log = events(tmp_path / "logs" / "spirals" / "version_0")
    assert scalars(log, "train/loss") == metrics["train/loss"]  # no chunk trained twice, none skipped


def test_resuming_in_float64_keeps_every_bit(tmp_path, monkeypatch, one_thread):
    """Lightning restores a checkpoint before it converts the module to "64-true": Classifier.setup
    converts it first, or the float64 weights would be rounded to float32 on the way in."""
    run = ["--trainer.precision", "64-true", "--data.val_size", "2943"]  # 57 training examples
    assert fit(tmp_path / "once", monkeypatch, *run, "--trainer.max_epochs", "3") == 0
    assert fit(tmp_path / "twice", monkeypatch, *run, "--trainer.max_epochs", "1") == 0
    assert fit(tmp_path / "twice", monkeypatch, *run, "--trainer.max_epochs", "3", "--ckpt_path", "last") == 0
    once, twice = last_checkpoint(tmp_path / "once"), last_checkpoint(tmp_path / "twice")
    assert once["state_dict"]["net.layers.0.weight"].dtype == torch.float64
    assert_same_state(twice, once)
