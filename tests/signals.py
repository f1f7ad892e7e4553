"""Callbacks that send a signal at a chosen, deterministic point of a run, or fill the disk, for the tests of
stopping and of failed writes.

In a module of its own (not a test file) so that the DDP child processes, which run the command line
again, can import it: ``--trainer.callbacks+=signals.SendSignal --trainer.callbacks.when mid_chunk ...``
with tests/ on PYTHONPATH.

CPython runs a Python signal handler in the main thread right after ``os.kill`` returns, so the
signal is received exactly at the hook that sends it:

    setup        Lightning's setup hook (start-up: data prepared, nothing trained)
    chunk        before chunk ``chunk`` of epoch ``epoch`` trains (on_train_batch_start)
    mid_chunk    while that chunk trains: sent from inside training_step, before its steps run
    validation   at the first batch of epoch ``epoch``'s validation (not the sanity check)
    save         while a checkpoint of epoch ``epoch`` is being made (on_save_checkpoint)
    test         at the first batch of the test

``target``: "self" (this process), "group" (its process group, as a terminal's Ctrl-C does), or a PID.
``rank``: the DDP rank that sends. ``times``: 2 sends a second signal right after the first.

FillDisk makes every fsync of rank ``rank`` fail as on a full disk from epoch ``epoch`` on: the checkpoint
writes fsync (handgrad.checkpoint_io), nothing else in a run does.
"""

from __future__ import annotations

import errno
import os
import signal
import sys

import lightning as L


class SendSignal(L.Callback):
    def __init__(self, signum: str = "SIGTERM", when: str = "chunk", epoch: int = 1, chunk: int = 1, rank: int = 0,
                 target: str = "self", times: int = 1):
        self.signum, self.when, self.epoch, self.chunk = getattr(signal, signum), when, epoch, chunk
        self.rank, self.target, self.times, self.sent = rank, target, times, False

    def send(self, trainer) -> None:
        if self.sent or trainer.global_rank != self.rank:
            return
        self.sent = True
        print(f"[signals] rank {trainer.global_rank} sends {self.signum.name} at {self.when} (step "
              f"{trainer.global_step})", file=sys.stderr, flush=True)
        for _ in range(self.times):
            if self.target == "group":
                os.killpg(os.getpgid(0), self.signum)
            else:
                os.kill(os.getpid() if self.target == "self" else int(self.target), self.signum)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.when == "setup":
            self.send(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) != (self.epoch, self.chunk):
            return
        if self.when == "chunk":
            self.send(trainer)
        elif self.when == "mid_chunk":  # Lightning (also its DDP wrapper) looks training_step up on the instance
            step = pl_module.training_step

            def sending_step(*args, **kwargs):
                del pl_module.training_step
                self.send(trainer)
                return step(*args, **kwargs)

            pl_module.training_step = sending_step

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.when == "validation" and not trainer.sanity_checking and trainer.current_epoch == self.epoch:
            self.send(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.when == "save" and trainer.current_epoch == self.epoch:
            self.send(trainer)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.when == "test":
            self.send(trainer)


class FillDisk(L.Callback):
    def __init__(self, epoch: int = 1, rank: int = 0):
        self.epoch, self.rank = epoch, rank

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if (trainer.current_epoch, trainer.global_rank) == (self.epoch, self.rank):
            def full(fd: int) -> None:
                raise OSError(errno.ENOSPC, "No space left on device")

            os.fsync = full
