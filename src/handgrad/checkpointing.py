"""A run's state on disk: the latest checkpoint, Ctrl-C between two chunks, and finding a run to resume.

    LatestCheckpoint       checkpoints/last.ckpt after every epoch and at Ctrl-C (--ckpt_path last)
    StopOnInterrupt        the first Ctrl-C ends training after the chunk in progress
    find_last_checkpoint   the newest logs/<config>/version_N/checkpoints/last.ckpt

handgrad.cli adds the two callbacks to every run; --checkpoint.* configures the third checkpoint
callback, which keeps the best checkpoint by val/acc for the test.
"""

from __future__ import annotations

import glob
import os
import signal
import threading
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from handgrad.errors import ConfigError
from handgrad.terminal import say


class LatestCheckpoint(ModelCheckpoint):
    """checkpoints/last.ckpt: the run's latest state, written after every epoch and at Ctrl-C.

    Lightning 2.6's ``ModelCheckpoint(save_last=True)`` writes last.ckpt only when it also saves a
    top-k checkpoint, i.e. when val/acc improved, so after an epoch that did not improve it would
    hold an older state than the run's. This second ModelCheckpoint (no monitor: every epoch,
    after validation) keeps the latest one for --ckpt_path last; --checkpoint.* keeps the best.
    On a KeyboardInterrupt (see StopOnInterrupt) it saves the state between two chunks. On any
    other exception it saves nothing (unlike ModelCheckpoint(save_on_exception=True)): a
    DivergenceError leaves the last good state in place.
    """

    def __init__(self) -> None:
        super().__init__(filename=self.CHECKPOINT_NAME_LAST, monitor=None, save_top_k=1, enable_version_counter=False)
        self.training = False

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self.training = True  # from here on the state is the run's (a resumed one's is restored by now)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt) or not self.training or self.dirpath is None:
            return  # a Ctrl-C during start-up keeps the last.ckpt there is
        path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
        trainer.save_checkpoint(path, weights_only=False)  # the whole state; None would log a notice about it
        if trainer.is_global_zero:
            say(f"interrupted after optimiser step {trainer.global_step} (epoch {trainer.current_epoch + 1}): "
                f"saved {path}; resume with --ckpt_path last")


class StopOnInterrupt(Callback):
    """Ctrl-C ends training after the chunk in progress; LatestCheckpoint saves last.ckpt there.

    The first Ctrl-C (SIGINT) only sets a flag. When the chunk in progress (at most data.chunk_size
    examples) has been trained and logged, the flag is read before the next one starts, under DDP
    agreed by all ranks (one all-reduce a chunk, so that they stop at the same place), and
    KeyboardInterrupt is raised, which Lightning handles as any Ctrl-C ("Detected
    KeyboardInterrupt, attempting graceful shutdown"): it calls the callbacks' on_exception, then
    exits with status 1. Taken between chunks, the checkpoint's weights, optimiser state, step
    count, random state and the data loader's place in the epoch agree, so the resumed run goes
    on as if it had never stopped. A second Ctrl-C interrupts at once (mid-chunk: the checkpoint
    then holds part of a chunk's steps, which the resumed run takes again).
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None  # the SIGINT handler to restore

    def on_train_start(self, trainer, pl_module) -> None:
        self.requested = False
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        self.requested = True
        self._restore()  # a second Ctrl-C: the usual KeyboardInterrupt, at once

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _stop_if_requested(self, trainer) -> None:
        requested = self.requested
        if trainer.world_size > 1:
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if requested:
            raise KeyboardInterrupt

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._stop_if_requested(trainer)  # not in on_train_batch_end: Lightning logs the chunk's metrics after it

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()
        self._stop_if_requested(trainer)  # pressed during the last validation: stop before the test

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):  # Lightning ignores SIGINT while it shuts down: leave it so
            self._previous = None
        self._restore()


def find_last_checkpoint(logger) -> tuple[str, int]:
    """(path of last.ckpt, version number) of the newest logs/<name>/version_N that has one.

    ``logger`` is the config's trainer.logger (class_path and init_args), before it is built."""
    if not str(getattr(logger, "class_path", "")).endswith("TensorBoardLogger"):
        raise ConfigError("--ckpt_path last needs the default TensorBoard logger; pass the checkpoint's path instead")
    run_dir = os.path.join(logger.init_args.save_dir, logger.init_args.name)
    found: dict[int, str] = {}
    for path in glob.glob(os.path.join(run_dir, "version_*", "checkpoints", "last.ckpt")):
        number = Path(path).parent.parent.name.removeprefix("version_")
        if number.isdigit():
            found[int(number)] = path
    if not found:
        raise ConfigError(f"--ckpt_path last: no {run_dir}/version_*/checkpoints/last.ckpt yet; train once without it")
    newest = max(found)
    return found[newest], newest
