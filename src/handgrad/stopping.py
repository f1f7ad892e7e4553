"""Ctrl-C (SIGINT) and SIGTERM stop a run gracefully, on one process and under DDP; SLURM's requeue signal too.

    GracefulStop      the signal handlers, and the points at which every rank agrees to stop
    Stopped           the exception that ends the run there; handgrad.cli exits with 128 + the signal (130, 143)
    SignalConnector   Lightning's signal handling without its SIGTERM handler; SLURM's requeue deferred to a chunk end
    release_children  rank 0 takes Lightning's child processes out of its watch, to wait for them itself

The handler only records the signal: no collective, no I/O, nothing that could run in the middle of
an all-reduce of handgrad.steps.sharded_steps. The record is read at fixed points of every rank's
sequence of collectives and all-reduced (MAX), so all ranks stop at the same one: before each chunk
(the chunk in progress and its logging finish; a signal during validation lets the validation and the
epoch's checkpoints finish too), at the start and the end of training, and at the end of the test.
handgrad.checkpointing.LatestCheckpoint then saves last.ckpt on every rank's behalf.

On one process, outside training (start-up, the test), nothing is half done and Stopped is raised
at once; so it is on rank 0 before the processes have joined (its children are then killed: they
have trained nothing). A second signal acts at once: Ctrl-C raises KeyboardInterrupt in the
middle of what runs, SIGTERM terminates the process; the last.ckpt written
before stays as it was (handgrad.checkpoint_io writes atomically).

Lightning's own SIGTERM handler is left out (SignalConnector): it runs a broadcast inside the handler,
which under DDP interleaves with the all-reduces of a step and hangs, forwards the signal to the
child processes, and raises on each rank at its own point. Its requeue (SLURM, SIGUSR1 under
``#SBATCH --signal``) is kept, moved to the next chunk end on every rank.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from typing import Any

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.rank_zero import _get_rank
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector


class Stopped(BaseException):
    """A SIGINT or SIGTERM stopped the run, at a point every rank agreed on; ``stage`` says where.

    A BaseException, as KeyboardInterrupt is, so that no ``except Exception`` on the way swallows it;
    not a KeyboardInterrupt, whose branch in Lightning ignores SIGINT for good and exits with status 1."""

    def __init__(self, signum: int, stage: str):
        super().__init__(f"stopped by {signal.Signals(signum).name} during {stage}")
        self.signum, self.stage = signum, stage

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # what a shell reports for a process the signal ended: 130, 143


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class GracefulStop(Callback):
    """Records SIGINT / SIGTERM (and SLURM's requeue signal), and stops every rank at the same place."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0  # the stop signal received (0: none; a second one replaces it as it acts)
        self.requeue = 0  # SLURM's requeue signal, received and not yet acted on
        self.stage = "start-up"  # start-up, training, the test
        self.deferred = False  # in training (and after the test): record only, stop at the next agreed point
        self.children: list[subprocess.Popen] = []  # rank 0's DDP processes, once released
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Take SIGINT and SIGTERM over (handlers live in the main thread; elsewhere nothing changes)."""
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handler) for signum in self.SIGNALS}

    def uninstall(self) -> None:
        self._restore()
        self._previous = {}

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum:  # a second one: at once
            self.signum = signum
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        if not self.deferred and not _distributed() and (_get_rank() or 0) == 0:
            raise Stopped(signum, self.stage)  # one process outside training, or rank 0 before the ranks joined

    def request_requeue(self, signum: int, frame: Any) -> None:
        """SLURM's requeue signal: acted on at the next agreed point in training."""
        self.requeue = signum

    # ----------------------------------------------------------------------- the agreed points

    def _agreed(self, trainer) -> tuple[int, int]:
        if trainer.world_size == 1:
            return self.signum, self.requeue
        flags = torch.tensor([self.signum, self.requeue], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)  # one collective, the same place
        return int(flags[0]), int(flags[1])

    def _stop_if_requested(self, trainer, requeue: bool = True) -> None:
        signum, requeue_signum = self._agreed(trainer)
        if requeue and requeue_signum and not signum:
            self.requeue = 0
            trainer._signal_connector.requeue(requeue_signum)  # every rank: its checkpoint is a collective
        if signum:
            self.signum = signum
            if trainer.is_global_zero:
                self.children = release_children(trainer)
            if trainer.world_size > 1:
                torch.distributed.barrier()  # no rank exits (with 143) before rank 0 has released its children
            raise Stopped(signum, self.stage)

    def on_train_start(self, trainer, pl_module) -> None:
        self.deferred = True
        self._stop_if_requested(trainer)  # received during start-up (under DDP; on one process it raised)
        self.stage = "training"

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._stop_if_requested(trainer)  # between two chunks: not in on_train_batch_end, which logs the chunk

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop_if_requested(trainer, requeue=False)  # received in the last validation: before the test
        self.deferred, self.requeue, self.stage = False, 0, "the test"

    def on_test_end(self, trainer, pl_module) -> None:
        # Under DDP the ranks may have unequal numbers of test batches: one point, after the last of them.
        self._stop_if_requested(trainer, requeue=False)
        self.deferred = True  # the run is complete: a signal from here on changes nothing

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.deferred = False


class SignalConnector(_SignalConnector):
    """Lightning's (2.6) signal connector without its SIGTERM handler (GracefulStop's stays in place),
    SLURM's requeue signal recorded by GracefulStop and acted on (``requeue``) at the next chunk end."""

    def __init__(self, trainer, stop: GracefulStop):
        super().__init__(trainer)
        self.stop = stop

    def register_signal_handlers(self) -> None:
        self.received_sigterm = False  # stays False: Lightning's loops never raise its SIGTERMException
        self._original_handlers = self._get_current_signal_handlers()  # teardown puts GracefulStop's back
        environment = self.trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue and environment.requeue_signal:
            self._register_signal(environment.requeue_signal, self.stop.request_requeue)

    def requeue(self, signum: int) -> None:
        """Lightning's SLURM requeue: save hpc_ckpt_<n>.ckpt, and on rank 0 run ``scontrol requeue``."""
        self._slurm_sigusr_handler_fn(signum, None)  # type: ignore[arg-type]  # the frame is not read


def release_children(trainer) -> list[subprocess.Popen]:
    """Rank 0's DDP child processes, taken out of Lightning's watch: its observer thread (every 5 s) kills
    every process as soon as one child has exited with a non-zero status, as each does after a stop."""
    procs = getattr(trainer.strategy.launcher, "procs", None)
    if not procs:
        return []
    children = list(procs)
    procs.clear()  # the list the observer polls: empty, it finds nothing to watch and ends
    return children


def wait_for(children: list[subprocess.Popen], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for ``children`` to exit; kill those still running."""
    for child in children:
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
