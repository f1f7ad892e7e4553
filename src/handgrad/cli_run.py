"""One run of the command line once it is built: the checks, fit, test and the closing line, and how each
way a run can end becomes one line and an exit status.

    0     trained and tested: the summary line (handgrad.terminal.summary)
    2     "error: ..." (a setting, the data, a checkpoint or a run folder refused, a loss that diverged,
          a file that could not be written), before or during the run
    130   stopped by SIGINT (Ctrl-C), 143 by SIGTERM: "stopped by ...", where last.ckpt is, how to resume

Under DDP every process runs this; rank 0 prints, and waits for its child processes before it exits.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.rank_zero import _get_rank

from handgrad.checkpoint_io import CheckpointWriteError, write_advice
from handgrad.checkpointing import LatestCheckpoint, checkpoint_for_test
from handgrad.errors import ConfigError
from handgrad.hparams import write_hparams
from handgrad.lit_module import DivergenceError
from handgrad.preflight import check_resume, check_run_folder
from handgrad.stopping import GracefulStop, Stopped, release_children, wait_for
from handgrad.terminal import console_above_bar, say, summary

# The summary line names the checkpoint tested; Lightning's two lines about loading it say it again.
TEST_QUIET = ("Restoring states from the checkpoint path", "Loaded model weights from the checkpoint")
# A write that fails for these reasons is the disk's or the folder's, not the code's: one line.
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR}


def run(cli, stop: GracefulStop, started: float) -> int:
    """Check, fit, test; the exit status."""
    trainer, config = cli.trainer, cli.config
    excepthook = threading.excepthook
    threading.excepthook = _quiet_writer_errors
    try:
        resume_path = config.ckpt_path or _slurm_checkpoint(trainer)
        if resume_path:  # first: a refused resume leaves the run folder it would continue as it was
            check_resume(resume_path, cli.model, dict(cli.datamodule.hparams), config.restart_epoch)
            cli.model.restart_epoch = config.restart_epoch
        if _rank_zero():
            check_run_folder(trainer.log_dir)
        if not resume_path:  # once per run folder: a resumed run has its HPARAMS row already
            write_hparams(trainer, config)
        with console_above_bar():
            trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=config.ckpt_path)
        tested, note, best = checkpoint_for_test(trainer)
        if note and trainer.is_global_zero:
            say(note)
        with console_above_bar(quiet=TEST_QUIET):
            results = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=tested, verbose=False)
    except Stopped as stopped:
        return _stopped(trainer, stop, stopped.signum, _stop_line(trainer, stopped))
    except (KeyboardInterrupt, SystemExit):  # a second Ctrl-C: Lightning exits with 1 after it
        if not stop.signum:
            raise
        return _stopped(trainer, stop, stop.signum, f"stopped at once by {signal.Signals(stop.signum).name}, the "
                        "second stop signal; the last.ckpt saved before it (if any) is as it was; resume with "
                        "--ckpt_path last")
    except (ConfigError, DivergenceError, CheckpointWriteError) as err:
        return _failed(trainer, " ".join(str(err).split()))
    except OSError as err:
        if err.errno not in DISK_ERRORS:
            raise
        what = err.filename or f"the run's logs in {trainer.log_dir}"
        return _failed(trainer, f"cannot write {what}: {err.strerror}; {write_advice(err.errno)}")
    finally:
        threading.excepthook = excepthook
    if trainer.is_global_zero:
        monitor = next((c.monitor for c in trainer.checkpoint_callbacks if not isinstance(c, LatestCheckpoint)), None)
        print(summary(trainer, cli.model, results[0] if results else {}, monitor if best else None,
                      time.perf_counter() - started), flush=True)
    return 0


def _stopped(trainer, stop: GracefulStop, signum: int, line: str) -> int:
    if _rank_zero(trainer):
        say(line)
        children = stop.children or release_children(trainer)  # released at an agreed stop; else before the join
        try:
            wait_for(children, timeout=30.0 if stop.children else 0.0)
        except KeyboardInterrupt:  # one Ctrl-C more: do not wait
            wait_for(children, timeout=0.0)
    return 128 + signum


def _failed(trainer, line: str) -> int:
    if _rank_zero(trainer):
        say(f"error: {line}")
        wait_for(getattr(trainer, "released_children", []) or release_children(trainer), timeout=30.0)
    return 2


def _stop_line(trainer, stopped: Stopped) -> str:
    """What a stop did: where training stopped and last.ckpt, or that it had not begun / had finished."""
    name = signal.Signals(stopped.signum).name
    latest = next((c for c in trainer.checkpoint_callbacks if isinstance(c, LatestCheckpoint)), None)
    if latest is not None and latest.saved:
        module = trainer.lightning_module
        epoch, steps = module.fit_position()
        where = (f"the end of epoch {epoch}" if steps == 0 else
                 f"epoch {epoch + 1}, {steps} of {module.epoch_steps()} steps into it")
        return (f"stopped by {name} after optimiser step {trainer.global_step} ({where}): saved {latest.saved}; "
                "resume with --ckpt_path last")
    if stopped.stage == "the test":
        kept = f" ({latest.path} holds it)" if latest is not None and os.path.isfile(latest.path) else ""
        return (f"stopped by {name} during the test, after training had finished{kept}; to test, run the same command "
                "with --ckpt_path last")
    if stopped.stage == "training":  # no checkpoint folder to save into
        return f"stopped by {name} after optimiser step {trainer.global_step}; nothing was saved"
    return f"stopped by {name} during start-up, before training began; nothing was saved"


def _rank_zero(trainer=None) -> bool:
    """Whether this process speaks for the run: rank 0, also before the DDP processes have joined."""
    if trainer is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        return trainer.is_global_zero
    return (_get_rank() or 0) == 0


def _slurm_checkpoint(trainer) -> str | None:
    """The hpc_ckpt_<n>.ckpt that Lightning resumes from by itself in a requeued SLURM job (no --ckpt_path)."""
    if not SLURMEnvironment.detect():
        return None
    return trainer._checkpoint_connector._hpc_resume_path


def _quiet_writer_errors(args) -> None:
    """TensorBoard's writer thread re-raises a failed write (a full disk) on the main thread at the next write,
    where run() reports it in one line; its own traceback is left out."""
    if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
        return
    threading.__excepthook__(args)
