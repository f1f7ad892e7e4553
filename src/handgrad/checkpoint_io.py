"""Checkpoints written atomically, and a failed write said in one line on every rank.

    AtomicCheckpointIO    torch.save into a temporary file beside the checkpoint, flush and fsync, rename
    Trainer               Lightning's Trainer whose save_checkpoint reports a failed write on every rank
    CheckpointWriteError  what a failed write raises: the file, the reason, what was kept and the fix

Lightning's own writer (TorchCheckpointIO through fsspec) puts its temporary file in $TMPDIR and
moves it into place without fsync; when $TMPDIR is on another filesystem the move becomes a copy
onto the old file, so a kill or a full disk during it leaves a truncated checkpoint where the last
good one was. Here the temporary file lives in the checkpoint's own folder, so the rename is atomic:
a kill at any moment (SIGKILL, power cut, a second Ctrl-C) leaves the previous file or the new one,
never part of one. A write that fails removes its temporary file; the next save into the folder
removes any that a kill left behind.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import io
import os
import tempfile
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Trainer as LightningTrainer

from handgrad.stopping import release_children

SAVE_DIR_HINT = "--trainer.logger.init_args.save_dir DIR"


def write_advice(code: int | None) -> str:
    """How to get past a failed write, by its errno."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"free space on that disk, or pass {SAVE_DIR_HINT} on another one"
    return f"make the folder writable, or pass {SAVE_DIR_HINT} with a folder you can write to"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the file it would have replaced is as it was."""

    def __init__(self, code: int | None, reason: str, path: str, existed: bool):
        super().__init__(code, reason, path)
        self.line = (f"cannot write the checkpoint {path}: {reason}; "
                     + (f"the previous {os.path.basename(path)} is as it was" if existed else "nothing was written")
                     + f"; {write_advice(code)}")

    def __str__(self) -> str:
        return self.line


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint so that a kill at any moment leaves the old file or the new one, never a partial one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # in memory first: torch's zip writer reports a full disk as a RuntimeError
        existed = os.path.isfile(path)
        try:
            os.makedirs(folder, exist_ok=True)
            for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(os.path.basename(path))}.*.tmp")):
                os.unlink(stale)  # left by a process killed while it wrote
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
        except OSError as err:
            raise CheckpointWriteError(err.errno, err.strerror or str(err), path, existed) from err
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600; a checkpoint is as readable as any file
            with os.fdopen(fd, "wb") as file:
                file.write(buffer.getbuffer())
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)  # atomic within one filesystem
        except BaseException as err:  # also KeyboardInterrupt (a second Ctrl-C): no partial file stays
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(err, OSError):
                raise CheckpointWriteError(err.errno, err.strerror or str(err), path, existed) from err
            raise
        with contextlib.suppress(OSError):  # the rename itself survives a power cut once the folder is synced
            folder_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(folder_fd)
            finally:
                os.close(folder_fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Trainer(LightningTrainer):
    """Lightning's Trainer, whose ``save_checkpoint`` raises CheckpointWriteError on every rank when the
    write failed. Under DDP only rank 0 writes; on its own its error would leave the other ranks waiting
    in the barrier that follows, then failing with a connection error. Here rank 0 joins that barrier
    anyway and broadcasts the failure (one more collective a save), so every rank stops with the same line."""

    released_children: list = []  # rank 0's DDP processes, taken out of Lightning's watch after a failed write

    def save_checkpoint(self, filepath: Any, weights_only: bool | None = None, storage_options: Any = None) -> None:
        failure: tuple[int | None, str] | None = None
        try:
            super().save_checkpoint(filepath, weights_only, storage_options)
        except CheckpointWriteError as err:
            if self.world_size == 1:
                raise
            failure = (err.errno, err.line)
            self.released_children = release_children(self)  # before any rank can exit with status 2
            self.strategy.barrier("Trainer.save_checkpoint")  # the one the failed write skipped
        if self.world_size > 1:
            failure = self.strategy.broadcast(failure)
            if failure is not None:
                error = CheckpointWriteError(failure[0], "", os.fspath(filepath), True)
                error.line = failure[1]
                raise error
