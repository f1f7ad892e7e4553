"""A run's state on disk: the latest checkpoint, the checkpoint to test, and finding a run to resume.

    LatestCheckpoint       checkpoints/last.ckpt after every epoch and at a stop (--ckpt_path last)
    checkpoint_for_test    the best checkpoint if its file is there, else last.ckpt, else the weights in memory
    find_last_checkpoint   the newest logs/<config>/version_N/checkpoints/last.ckpt

handgrad.cli adds LatestCheckpoint and handgrad.stopping.GracefulStop (which ends training between two
chunks at SIGINT or SIGTERM) to every run; --checkpoint.* configures the second checkpoint callback,
which keeps the best checkpoint by val/acc for the test. handgrad.checkpoint_io writes the files.
"""

from __future__ import annotations

import glob
import os
import zipfile
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint

from handgrad.errors import ConfigError
from handgrad.stopping import Stopped


class LatestCheckpoint(ModelCheckpoint):
    """checkpoints/last.ckpt: the run's latest state, written after every epoch and when a signal stops it.

    Lightning 2.6's ``ModelCheckpoint(save_last=True)`` writes last.ckpt only when it also saves a
    top-k checkpoint, i.e. when val/acc improved, so after an epoch that did not improve it would
    hold an older state than the run's. This second ModelCheckpoint (no monitor: every epoch,
    after validation) keeps the latest one for --ckpt_path last; --checkpoint.* keeps the best.
    When SIGINT or SIGTERM stops training (handgrad.stopping.Stopped, raised between two chunks on
    every rank) it saves the state there, and says so in ``saved``. On any other exception it saves
    nothing (unlike ModelCheckpoint(save_on_exception=True)): a DivergenceError leaves the last good
    state in place, and a stop in the test, whose weights are the tested checkpoint's, leaves the
    trained ones.
    """

    def __init__(self) -> None:
        super().__init__(filename=self.CHECKPOINT_NAME_LAST, monitor=None, save_top_k=1, enable_version_counter=False)
        self.training = False
        self.saved = ""  # the file written at a stop

    @property
    def path(self) -> str:
        """Where last.ckpt is ("" before the run folder is known)."""
        return os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION) if self.dirpath else ""

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self.training = True  # from here on the state is the run's (a resumed one's is restored by now)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        self.training = False  # the test loads the best checkpoint's weights into the same module

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, Stopped) or not self.training or not self.path:
            return  # a stop during start-up keeps the last.ckpt there is
        trainer.save_checkpoint(self.path, weights_only=False)  # the whole state; None would log a notice about it
        self.saved = self.path


def checkpoint_for_test(trainer) -> tuple[str | None, str, bool]:
    """(checkpoint to test, a note saying why if it is not the best, whether it is the best): the best
    checkpoint by --checkpoint.monitor if its file is there, else last.ckpt, else the weights in memory
    (None). Under DDP rank 0 looks at the files and tells the others."""
    choice: tuple[str | None, str, bool] = (None, "", False)
    if trainer.is_global_zero:
        best = next((c.best_model_path for c in trainer.checkpoint_callbacks
                     if isinstance(c, ModelCheckpoint) and not isinstance(c, LatestCheckpoint)), "")
        last = next((c.path for c in trainer.checkpoint_callbacks if isinstance(c, LatestCheckpoint)), "")
        gone = f"the best checkpoint {best} is gone or damaged" if best else ""
        if best and _readable(best):
            choice = (best, "", True)
        elif last and _readable(last):
            choice = (last, f"{gone}; testing {last}" if gone else "", False)
        elif gone:
            choice = (None, f"{gone} and there is no last.ckpt; testing the weights in memory (step "
                            f"{trainer.global_step})", False)
    return trainer.strategy.broadcast(choice)


def _readable(path: str) -> bool:
    return os.path.isfile(path) and zipfile.is_zipfile(path)


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
