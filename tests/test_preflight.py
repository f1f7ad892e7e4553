"""handgrad.preflight and the other one-line refusals around a run: every damaged, foreign or mismatched
checkpoint, every run folder that cannot be written (logs/ a file, read-only, a full disk for the
logs), numbers that are not finite in a YAML file, a run that would train nothing, and a config file
that is empty or not YAML. Each: exit status 2, one line naming the file or value, what is wrong and
the fix, and nothing written."""

from __future__ import annotations

import errno
import os
import shutil

import lightning as L
import pytest
import torch
from runs import LAST, STEPS_PER_EPOCH, fit, last_checkpoint
from tensorboard.summary.writer import record_writer
from test_cli import NIELSEN, SPIRALS

from handgrad import cli

pytestmark = [pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty"),
              pytest.mark.usefixtures("one_thread")]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, bytes]:
    """One epoch of the reference run and of a narrower network: the bytes of their last.ckpt files."""
    workdir = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert fit(workdir / "ours", monkeypatch, "--trainer.max_epochs", "1") == 0
        assert fit(workdir / "narrow", monkeypatch, "--trainer.max_epochs", "1",
                   "--model.net.init_args.sizes", "[2, 50, 3]") == 0
    return {name: workdir.joinpath(name, *LAST).read_bytes() for name in ("ours", "narrow")}


class NotWeights:
    """An object torch.save pickles, which a weights-only load refuses."""


@pytest.mark.parametrize("case, expected", [
    ("empty", "is empty (0 bytes): its write was cut short; start afresh without --ckpt_path"),
    ("truncated", "is not a checkpoint (5,000 bytes that are not a torch zip archive: cut short, or another kind of "
                  "file); start afresh without --ckpt_path"),
    ("text", "is not a checkpoint (23 bytes that are not a torch zip archive: cut short, or another kind of file)"),
    ("foreign", "is not a training checkpoint of handgrad (no pytorch-lightning_version, state_dict, loops, "
                "optimizer_states, global_step); pass a last.ckpt or epoch*.ckpt from a run's checkpoints/ folder"),
    ("tensor", "is not a training checkpoint of handgrad (a Tensor); pass a last.ckpt"),
    ("object", "cannot be read (UnpicklingError: Weights only load failed."),
    ("narrow", "holds another network: net.layers.0.weight is (50, 2) there and (100, 2) here (its model.net sizes "
               "[2, 50, 3], this run's [2, 100, 3]); pass the model settings it was trained with (the config.yaml of "
               "its run), or start afresh without --ckpt_path"),
])
def test_a_damaged_foreign_or_mismatched_checkpoint_is_refused_in_one_line(case, expected, trained, tmp_path,
                                                                           monkeypatch, capsys):
    path = tmp_path / "given" / f"{case}.ckpt"
    path.parent.mkdir()
    if case in ("empty", "truncated", "narrow"):
        path.write_bytes({"empty": b"", "truncated": trained["ours"][:5000], "narrow": trained["narrow"]}[case])
    elif case == "text":
        path.write_text("this is not a model :-)")
    else:
        torch.save({"foreign": {"a": 1}, "tensor": torch.zeros(3), "object": NotWeights()}[case], path)
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "2", "--ckpt_path", str(path)) == 2
    assert one_line_error(capsys).startswith(f"error: --ckpt_path {path} {expected}")
    assert not (tmp_path / "logs").exists()


def test_a_damaged_last_ckpt_points_at_the_checkpoint_beside_it(trained, tmp_path, monkeypatch, capsys):
    folder = tmp_path.joinpath(*LAST[:-1])
    folder.mkdir(parents=True)
    (folder / "epoch000-step79.ckpt").write_bytes(trained["ours"])
    (folder / "last.ckpt").write_bytes(trained["ours"][:-100])
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "2", "--ckpt_path", "last") == 2
    assert one_line_error(capsys).endswith("pass another checkpoint, e.g. --ckpt_path "
                                           f"{folder.relative_to(tmp_path)}/epoch000-step79.ckpt, or start afresh "
                                           "without --ckpt_path")


def test_a_checkpoint_of_another_dataset_is_refused(trained, tmp_path, monkeypatch, capsys, mnist_root):
    run = ["--config", NIELSEN, "--data.root", mnist_root, "--data.download", "false", "--data.val_size", "50",
           "--trainer.max_epochs", "1"]
    monkeypatch.chdir(tmp_path)
    assert cli.main(run) == 0
    capsys.readouterr()
    path = "logs/nielsen_ch1/version_0/checkpoints/last.ckpt"
    assert cli.main(["--config", SPIRALS, "--ckpt_path", path]) == 2
    assert one_line_error(capsys).startswith(
        f"error: --ckpt_path {path} stopped at the end of epoch 1 with data.dataset='mnist'; this run has "
        "data.dataset='spirals', which changes the data order (the split and each epoch's shuffle); pass "
        "--data.dataset mnist, or --restart_epoch true to train epoch 2 afresh from its first chunk")


# --------------------------------------------------------------------------- run folders that cannot be written


def test_logs_being_a_file_is_named_with_the_fix(tmp_path, monkeypatch, capsys):
    (tmp_path / "logs").write_text("not a folder")
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "1") == 2
    assert one_line_error(capsys) == ("error: cannot write the run folder logs/spirals/version_0: logs is a file, "
                                      "not a folder; move it away, or pass --trainer.logger.init_args.save_dir DIR "
                                      "with another folder")


def test_a_read_only_logs_folder_is_named_with_the_fix(tmp_path, monkeypatch, capsys):
    """Root writes into folders without write permission: a read-only filesystem is played by os.makedirs."""
    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(os, "makedirs", read_only)
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "1") == 2
    assert one_line_error(capsys) == (
        "error: cannot write the run folder logs/spirals/version_0: Read-only file system (logs/spirals/version_0); "
        "make the folder writable, or pass --trainer.logger.init_args.save_dir DIR with a folder you can write to")


class LogDiskFillsUp(L.Callback):
    """From epoch 2 on, TensorBoard's event file writes fail as on a full disk (in its writer thread)."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1:
            def full(writer, data):
                raise OSError(errno.ENOSPC, "No space left on device")

            self.monkeypatch.setattr(record_writer.RecordWriter, "write", full)


def test_a_full_disk_for_the_logs_stops_the_run_in_one_line(tmp_path, monkeypatch, capsys):
    with monkeypatch.context() as patched:
        assert fit(tmp_path, patched, "--trainer.max_epochs", "3", callbacks=(LogDiskFillsUp(patched),)) == 2
    assert one_line_error(capsys) == ("error: cannot write the run's logs in logs/spirals/version_0: No space left on "
                                      "device; free space on that disk, or pass --trainer.logger.init_args.save_dir "
                                      "DIR on another one")
    assert last_checkpoint(tmp_path)["global_step"] >= STEPS_PER_EPOCH


# --------------------------------------------------------------------------- settings


def config_file(tmp_path, text: str) -> str:
    path = tmp_path / "extra.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, expected", [
    ("model:\n  lr: .inf\n", "model.lr=inf (in {path}) is not a finite number; use e.g. its default 0.1, as the "
                             "command line would require"),
    ("model:\n  weight_decay: .nan\n", "model.weight_decay=nan (in {path}) is not a finite number; use e.g. its "
                                       "default 0.0"),
    ("trainer:\n  callbacks:\n    - class_path: handgrad.callbacks.GradientCheck\n      init_args: {threshold: .nan}\n",
     "trainer.callbacks[0].init_args.threshold=nan (in {path}) is not a finite number"),
    ("", "--config {path} is empty (or only comments): a config is a mapping of trainer:, model: and data: keys"),
    ("# only a comment\n", "--config {path} is empty (or only comments)"),
    ("- a\n- list\n", "--config {path} holds a list, not a mapping of trainer:, model: and data: keys"),
    ("model: {lr: 0.1\n", "--config {path} is not valid YAML: expected ',' or '}}', but got '<stream end>' at line 2, "
                          "column 1; fix it there"),
])
def test_a_config_file_that_cannot_work_is_named(text, expected, tmp_path, monkeypatch, capsys):
    path = config_file(tmp_path, text)
    assert fit(tmp_path, monkeypatch, "--config", path) == 2
    assert one_line_error(capsys).startswith("error: " + expected.format(path=path))
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("args, expected", [
    (["--trainer.limit_train_batches", "0"], "trainer.limit_train_batches=0.0 trains nothing (it counts chunks of "
                                             "up to data.chunk_size examples), and the test would score untrained "
                                             "weights; remove it, or give a number >= 1"),
    (["--trainer.max_epochs", "0"], "trainer.max_epochs=0 trains nothing, and the test would score untrained weights"),
    (["--trainer.max_steps", "0"], "trainer.max_steps=0 trains nothing"),
    (["--restart_epoch", "true"], "--restart_epoch true restarts the epoch of the checkpoint a run resumes from; pass "
                                  "--ckpt_path too (e.g. --ckpt_path last), or leave --restart_epoch out"),
])
def test_a_run_that_would_train_nothing_says_so(args, expected, tmp_path, monkeypatch, capsys):
    assert fit(tmp_path, monkeypatch, *args) == 2
    assert one_line_error(capsys).startswith("error: " + expected)
    assert not (tmp_path / "logs").exists()


def test_resuming_a_finished_run_only_tests_it(trained, tmp_path, monkeypatch, capsys):
    """A finished run's last.ckpt with the same max_epochs is no run that trains nothing: it runs the test."""
    tmp_path.joinpath(*LAST[:-1]).mkdir(parents=True)
    tmp_path.joinpath(*LAST).write_bytes(trained["ours"])
    shutil.copy(tmp_path.joinpath(*LAST), tmp_path / "before.ckpt")
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "1", "--ckpt_path", "last") == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("test accuracy ")
