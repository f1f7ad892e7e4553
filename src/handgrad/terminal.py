"""What a run shows on the terminal: a progress bar with the train loss and validation accuracy,
or one line per epoch when stdout is not a terminal, and one summary line at the end.

    Epoch 2/3:  36%|███▋      | 284/782 [00:01<00:02, 238.51step/s, loss=0.0915, val_acc=95.24%]
    epoch 2/3  step 1564  train/loss 0.1043  train/acc 0.9689  val/loss 0.1017  val/acc 0.9710  (4.6 s)
    test accuracy 97.10% (best val/acc checkpoint: epoch 2 of 3, step 1,564), test loss 0.0950; 12.3 s; ...

The bar and the epoch lines go to stdout (so ``| tee run.log`` keeps the epoch lines and the
summary); Lightning's information lines, warnings, "stopped by ..." and "error: ..." go to
stderr, printed above the bar (``console_above_bar``, ``say``) rather than into its line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, _update_n
from lightning.pytorch.loggers import TensorBoardLogger

LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "")  # "" the root logger


def say(message: str) -> None:
    """One line on stderr, above a progress bar if one is on the screen (tqdm clears it, prints, redraws)."""
    Tqdm.write(message, file=sys.stderr)


class ProgressBar(TQDMProgressBar):
    """Lightning's bar, counting optimiser steps rather than chunks, with the latest train loss and
    validation accuracy in place of Lightning's v_num."""

    def get_metrics(self, trainer, pl_module) -> dict[str, int | str | float | dict[str, float]]:
        metrics, shown = trainer.callback_metrics, dict[str, int | str | float | dict[str, float]]()
        if "train/loss" in metrics:
            shown["loss"] = f"{metrics['train/loss'].item():.4f}"
        if "val/acc" in metrics:
            shown["val_acc"] = f"{100 * metrics['val/acc'].item():.2f}%"
        return shown

    def init_test_tqdm(self) -> Tqdm:
        bar = super().init_test_tqdm()
        bar.leave = False  # the summary line reports the test
        return bar

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self.on_train_epoch_start(trainer)  # a run resumed mid-epoch skips the epoch's start

    def on_train_epoch_start(self, trainer, *_) -> None:  # Lightning's, but epochs from 1 and steps, not chunks
        bar = self.train_progress_bar
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        bar.unit = "step"
        bar.set_description(f"Epoch {trainer.current_epoch + 1}{epochs}", refresh=False)
        bar.reset(total=self._steps_per_epoch(trainer))
        bar.initial = 0
        _update_n(bar, self._steps_into_epoch(trainer))  # a resumed run starts mid-epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.train_progress_bar.disable:
            _update_n(self.train_progress_bar, self._steps_into_epoch(trainer))
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Close the bars, so that what follows ("stopped by ...", "error: ...") starts on a line of its own."""
        for bar in (self._train_progress_bar, self._val_progress_bar, self._test_progress_bar):
            if bar is not None:
                bar.close()

    @staticmethod
    def _steps_per_epoch(trainer) -> int:
        return trainer.datamodule.steps_per_epoch  # optimiser steps; a Lightning batch is a chunk of them

    def _steps_into_epoch(self, trainer) -> int:
        module: Any = getattr(trainer, "lightning_module", None)
        if hasattr(module, "fit_position"):  # handgrad.resume: also after a resume with another batch size
            epoch, steps = module.fit_position()
            return steps if epoch == trainer.current_epoch else module.epoch_steps()  # an epoch's end: all of it
        return trainer.global_step - trainer.current_epoch * self._steps_per_epoch(trainer)


class EpochLines(Callback):
    """One line per epoch on stdout, for logs that are not a terminal (where a progress bar would flood)."""

    def on_train_start(self, trainer, pl_module) -> None:  # a run resumed mid-epoch skips the epoch start
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start, self.validated = time.perf_counter(), False

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.validated = not trainer.sanity_checking

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:  # under DDP every rank runs this; one line per epoch is enough
            return
        keys = ("train/loss", "train/acc") + (("val/loss", "val/acc") if self.validated else ())
        metrics = trainer.callback_metrics
        shown = "  ".join(f"{k} {metrics[k].item():.4f}" for k in keys if k in metrics)
        epoch, steps = pl_module.fit_position() if hasattr(pl_module, "fit_position") else (trainer.current_epoch, 0)
        step = (f"stopped at step {trainer.global_step}, {steps} of {pl_module.epoch_steps()} steps into epoch "
                f"{epoch + 1}" if steps else f"step {trainer.global_step}")  # max_steps or max_time cut it short
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  {step}  {shown}  "
              f"({time.perf_counter() - self.start:.1f} s)", flush=True)


class _AboveBar(logging.StreamHandler):
    """A console handler that prints through tqdm: the bars are cleared, the line printed, the bars redrawn."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            Tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


class _Without(logging.Filter):
    """Drops the records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


@contextlib.contextmanager
def console_above_bar(quiet: tuple[str, ...] = ()) -> Iterator[None]:
    """While a bar may be on the screen: Lightning's information lines and Python's warnings print above it,
    and Lightning's lines that start with one of ``quiet`` are left out.

    Only the console handlers that exist are swapped: Lightning gives "lightning.pytorch" and
    "lightning.fabric" a StreamHandler only when the root logger has none, and a program that set up
    logging itself keeps its own handlers (tqdm.contrib.logging would add one, printing lines twice).
    """
    swapped = []
    for logger in map(logging.getLogger, LIGHTNING_LOGGERS):
        for i, handler in enumerate(logger.handlers):
            if type(handler) is logging.StreamHandler and handler.stream in (sys.stdout, sys.stderr):
                above = _AboveBar(handler.stream)
                above.setFormatter(handler.formatter)
                above.setLevel(handler.level)
                for log_filter in handler.filters:
                    above.addFilter(log_filter)
                logger.handlers[i] = above
                swapped.append((logger, i, handler))
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # where rank_zero_info logs
    leave_out = _Without(quiet)
    rank_zero.addFilter(leave_out)
    showwarning = warnings.showwarning

    def show_above_bar(message, category, filename, lineno, file=None, line=None) -> None:
        say(warnings.formatwarning(message, category, filename, lineno, line).rstrip("\n"))

    warnings.showwarning = show_above_bar
    try:
        yield
    finally:
        warnings.showwarning = showwarning
        rank_zero.removeFilter(leave_out)
        for logger, i, handler in swapped:
            logger.handlers[i] = handler


def summary(trainer, model, results: Mapping[str, float], monitor: str | None, seconds: float) -> str:
    """The run's closing line: the test accuracy, which weights were tested, the wall time, where the run is."""
    if monitor and model.loaded_epoch is not None and trainer.ckpt_path:
        what = (f"best {monitor} checkpoint: epoch {model.loaded_epoch + 1} of {trainer.current_epoch}, "
                f"step {model.loaded_step:,}")
    else:
        what = f"final weights: step {trainer.global_step:,}"
    minutes, secs = divmod(round(seconds), 60)
    took = f"{minutes} min {secs} s" if minutes else f"{seconds:.1f} s"
    tested = (f"test accuracy {100 * results['test/acc']:.2f}% ({what}), test loss {results['test/loss']:.4f}"
              if "test/acc" in results else
              f"test loss {results['test/loss']:.4f}, perplexity {results['test/perplexity']:.2f} ({what})"
              if "test/perplexity" in results else f"not tested ({what})")
    if not isinstance(trainer.logger, TensorBoardLogger):  # e.g. fast_dev_run's DummyLogger: no run folder
        return f"{tested}; {took}"
    return f"{tested}; {took}; run {trainer.logger.log_dir}; {tensorboard_command(trainer.logger.save_dir)}"


def tensorboard_command(logdir: str) -> str:
    """``tensorboard --logdir logs``, naming the executable beside this Python when the shell would not find it."""
    beside = Path(sys.executable).parent / "tensorboard"
    on_path = shutil.which("tensorboard")
    if beside.is_file() and not (on_path and os.path.samefile(on_path, beside)):
        executable = os.path.relpath(beside) if not os.path.relpath(beside).startswith("..") else str(beside)
    else:
        executable = "tensorboard"
    return f"{executable} --logdir {logdir}"


def process_seconds() -> float:
    """Wall seconds since this process started (Linux: from /proc/self/stat), or 0.0 where that is unknown."""
    try:
        with open("/proc/self/stat") as stat:
            ticks = int(stat.read().rpartition(")")[2].split()[19])  # field 22, starttime, in clock ticks since boot
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0
