"""handgrad.checkpoint_io: a checkpoint is replaced whole or not at all, whatever stops its write (SIGKILL
between the write and the rename, a full disk, a second Ctrl-C), and a failed write says so in one line,
in a run too (exit status 2, the previous last.ckpt as it was)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import lightning as L
import pytest
import torch
from runs import LAST, STEPS_PER_EPOCH, fit, last_checkpoint

from handgrad.checkpoint_io import AtomicCheckpointIO, CheckpointWriteError


def save(path, value: int) -> None:
    AtomicCheckpointIO().save_checkpoint({"value": torch.tensor(value)}, path)


def load(path) -> int:
    return int(torch.load(path, weights_only=True)["value"])


def test_a_checkpoint_is_written_whole_with_the_usual_file_mode(tmp_path):
    save(tmp_path / "new" / "last.ckpt", 1)  # the folder is made
    save(tmp_path / "new" / "last.ckpt", 2)
    mask = os.umask(0)
    os.umask(mask)
    path = tmp_path / "new" / "last.ckpt"
    assert load(path) == 2 and os.stat(path).st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file stays


def test_a_temporary_file_left_by_a_killed_write_goes_at_the_next_save(tmp_path):
    (tmp_path / ".last.ckpt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".other.ckpt.abc.tmp").write_bytes(b"another file's")
    save(tmp_path / "last.ckpt", 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.ckpt.abc.tmp", "last.ckpt"]


@pytest.mark.parametrize("failure, code", [(OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC),
                                           (OSError(errno.EROFS, "Read-only file system"), errno.EROFS)])
def test_a_failed_write_says_so_in_one_line_and_keeps_the_previous_file(failure, code, tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    save(path, 1)
    before = path.read_bytes()

    def fail(fd):
        raise failure

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(CheckpointWriteError) as raised:
        save(path, 2)
    advice = "free space on that disk, or pass --trainer.logger.init_args.save_dir DIR on another one" \
        if code == errno.ENOSPC else "make the folder writable, or pass --trainer.logger.init_args.save_dir DIR " \
                                     "with a folder you can write to"
    assert str(raised.value) == f"cannot write the checkpoint {path}: {failure.strerror}; the previous last.ckpt is " \
                                f"as it was; {advice}"
    assert raised.value.errno == code
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_folder_that_cannot_be_made_is_named(tmp_path):
    (tmp_path / "logs").write_text("a file where the folder should be")
    with pytest.raises(CheckpointWriteError, match=r"cannot write the checkpoint .*logs/last.ckpt: .*; nothing was "
                                                   r"written; make the folder writable"):
        save(tmp_path / "logs" / "last.ckpt", 1)


def test_a_ctrl_c_during_the_write_removes_its_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    save(path, 1)

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save(path, 2)
    assert load(path) == 1 and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize("killed_in", ["fsync", "replace"])
def test_a_sigkill_at_any_moment_of_the_write_leaves_the_previous_file(killed_in, tmp_path):
    path = tmp_path / "last.ckpt"
    save(path, 1)
    before = path.read_bytes()
    script = ("import os, signal, sys, torch\n"
              "from handgrad.checkpoint_io import AtomicCheckpointIO\n"
              f"os.{killed_in} = lambda *args: os.kill(os.getpid(), signal.SIGKILL)\n"
              "AtomicCheckpointIO().save_checkpoint({'value': torch.arange(10**6)}, sys.argv[1])\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert path.read_bytes() == before  # whole, and the old one
    assert len(list(tmp_path.glob(".last.ckpt.*.tmp"))) == 1  # the killed write's, removed by the next save
    save(path, 3)
    assert load(path) == 3 and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


class DiskFillsUp(L.Callback):
    """From epoch ``epoch`` on, every fsync fails as on a full disk (the checkpoint writes fsync; nothing else does)."""

    def __init__(self, monkeypatch, epoch: int):
        self.monkeypatch, self.epoch = monkeypatch, epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            def full(fd):
                raise OSError(errno.ENOSPC, "No space left on device")

            self.monkeypatch.setattr(os, "fsync", full)


def test_a_full_disk_during_a_run_stops_it_with_one_line_and_keeps_the_last_good_checkpoint(
        tmp_path, monkeypatch, capsys, one_thread):
    with monkeypatch.context() as patched:
        assert fit(tmp_path, patched, "--trainer.max_epochs", "3", callbacks=(DiskFillsUp(patched, epoch=1),)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the checkpoint logs/spirals/version_0/checkpoints/") and \
        err.endswith(": No space left on device; the previous last.ckpt is as it was; free space on that disk, or "
                     "pass --trainer.logger.init_args.save_dir DIR on another one\n") or \
        err.endswith("nothing was written; free space on that disk, or pass --trainer.logger.init_args.save_dir DIR "
                     "on another one\n"), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert last_checkpoint(tmp_path)["global_step"] == STEPS_PER_EPOCH  # epoch 1's, whole
    assert not list(tmp_path.joinpath(*LAST[:-1]).glob(".*.tmp"))
