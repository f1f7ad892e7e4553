"""Train a handgrad network with Lightning: fit on the training split, then test on the test split.

    python scripts/train.py                                     # runs configs/mnist_mlp.yaml
    python scripts/train.py --config configs/nielsen_ch1.yaml
    python scripts/train.py --config configs/sgd.yaml --model.lr 0.05 --data.batch_size 1 --trainer.max_epochs 3
    python scripts/train.py --config configs/nielsen_ch1.yaml --ckpt_path last    # resume its latest run
    python scripts/train.py --config configs/nielsen_ch1.yaml --print_config     # the resolved config
    python scripts/train.py --trainer.accelerator gpu --trainer.devices 4 --trainer.strategy ddp   # 4 GPUs
    tensorboard --logdir logs

Every constructor argument of handgrad.lit_module.Classifier (--model.*), its network
(--model.net.init_args.*), handgrad.data.DataModule (--data.*), lightning's Trainer
(--trainer.*) and the checkpoint callback (--checkpoint.*) can be set in the YAML or on
the command line. Runs go to logs/<config name>/version_N/ (TensorBoard events, the
resolved config.yaml, checkpoints/ with the best checkpoint and last.ckpt, the latest state,
written after every epoch and at Ctrl-C, which stops after the chunk in progress). The test
uses the checkpoint with the best val/acc (without a validation split, pass
--checkpoint.monitor null: the final weights).

Without --config the default config is inserted as the first argument (rather than set
as a jsonargparse default_config_file, whose keys would leak into every other config).
A setting that cannot work stops the run before training with one line, "error: ...",
and exit status 2; so does a loss that becomes nan or inf (naming the step, the last good
checkpoint and a smaller learning rate).
"""

from __future__ import annotations

import os

# One OpenBLAS thread, set before numpy loads: TensorBoard's histograms call numpy, whose OpenBLAS
# otherwise starts a pool of its own that spins beside torch's thread (10 us per example on
# nielsen_ch1 on a 2-core machine; README, Performance). An explicit OPENBLAS_NUM_THREADS wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import difflib
import glob
import logging
import re
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from handgrad.data import ConfigError, DataModule
from handgrad.lit_module import Classifier, DivergenceError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "mnist_mlp.yaml"

# Our loaders cut batches from in-memory tensors: worker processes would only add cost.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# main() passes the argument list on explicitly (with the default config inserted).
warnings.filterwarnings("ignore", ".*LightningCLI's args parameter is intended.*")
# Raised inside Lightning 2.6 by torch >= 2.10; nothing a user of this script can change.
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
# --ckpt_path last goes on in the same run folder, whose checkpoints/ holds the run's earlier checkpoints.
warnings.filterwarnings("ignore", "Checkpoint directory .* exists and is not empty")
# Under DDP: the validation and test metrics are torchmetrics' compute(), already gathered over the ranks.
warnings.filterwarnings("ignore", ".*when logging on epoch level in distributed setting.*")
# "Seed set to 0" would precede an error line; the seed is in the saved config.yaml anyway.
logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)


class EpochLines(Callback):
    """One line per epoch, for logs that are not a terminal (where a progress bar would flood)."""

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
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  step {trainer.global_step}  {shown}  "
              f"({time.perf_counter() - self.start:.1f} s)", flush=True)


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
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            print(f"interrupted after optimiser step {trainer.global_step} (epoch {trainer.current_epoch + 1}): "
                  f"saved {path}; resume with --ckpt_path last", file=sys.stderr, flush=True)


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
        self._previous = None  # the SIGINT handler to restore

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


class TrainCLI(LightningCLI):
    """LightningCLI plus --ckpt_path (with "last" meaning this config's newest run), --threads and --checkpoint.*."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help='Resume fit from this checkpoint; "last": the latest run of this config.')
        parser.add_argument("--threads", type=int | None, default=None,
                            help="CPU threads for torch's ops (torch.set_num_threads); null: one per core.")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/acc",
            "checkpoint.mode": "max",
            "checkpoint.filename": "epoch{epoch:03d}-step{step}",
            "checkpoint.auto_insert_metric_name": False,
        })

    def before_instantiate_classes(self) -> None:
        if self.config.threads is not None:
            if self.config.threads < 1:
                raise ConfigError(f"threads={self.config.threads} must be >= 1 (or null for one per core)")
            torch.set_num_threads(self.config.threads)
        if self.config.ckpt_path == "last":
            self.config.ckpt_path, version = find_last_checkpoint(self.config.trainer.logger)
            self.config.trainer.logger.init_args.version = version  # continue in the same run folder
        elif self.config.ckpt_path is not None and not os.path.isfile(self.config.ckpt_path):
            raise ConfigError(f"--ckpt_path {self.config.ckpt_path}: no such file; pass a .ckpt file, e.g. "
                              "logs/<config>/version_N/checkpoints/last.ckpt, or 'last' for this config's newest run")

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        global PARSER
        PARSER = super().init_parser(**kwargs)  # kept for explain()'s "did you mean"
        return PARSER


PARSER: LightningArgumentParser | None = None  # the parser of the latest build()


def find_last_checkpoint(logger) -> tuple[str, int]:
    """(path of last.ckpt, version number) of the newest logs/<name>/version_N that has one."""
    if not str(getattr(logger, "class_path", "")).endswith("TensorBoardLogger"):
        raise ConfigError("--ckpt_path last needs the default TensorBoard logger; pass the checkpoint's path instead")
    run_dir = os.path.join(logger.init_args.save_dir, logger.init_args.name)
    found = {}
    for path in glob.glob(os.path.join(run_dir, "version_*", "checkpoints", "last.ckpt")):
        version = Path(path).parent.parent.name.removeprefix("version_")
        if version.isdigit():
            found[int(version)] = path
    if not found:
        raise ConfigError(f"--ckpt_path last: no {run_dir}/version_*/checkpoints/last.ckpt yet; train once without it")
    version = max(found)
    return found[version], version


def with_default_config(args: list[str]) -> list[str]:
    given = any(a in ("-c", "--config") or a.startswith("--config=") for a in args)
    return args if given else ["--config", str(DEFAULT_CONFIG), *args]


def config_name(args: list[str]) -> str:
    """The stem of the last --config file: the run's folder under logs/."""
    name = DEFAULT_CONFIG.stem
    for i, arg in enumerate(args):
        if arg in ("-c", "--config") and i + 1 < len(args):
            name = Path(args[i + 1]).stem
        elif arg.startswith("--config="):
            name = Path(arg.split("=", 1)[1]).stem
    return name


def fail(err: Exception, hint: bool = False) -> int:
    """Print the error as one line, "error: ...", and return exit status 2."""
    message = explain(err) if isinstance(err, ArgumentError) else " ".join(str(err).split())
    print(f"error: {message}" + (" (see --help)" if hint else ""), file=sys.stderr)
    return 2


def explain(err: ArgumentError) -> str:
    """jsonargparse's message, with the likely key where one is unknown and the allowed values
    where it lists the types of a Literal union (trainer.precision: 15 lines of types otherwise)."""
    message = " ".join(str(err).split())
    unknown = (re.search(r"unrecognized arguments: --([\w.]+)", message)
               or re.search(r"Group '([\w.]+)' does not accept option '(\w+)'", message))
    if unknown and PARSER is not None:
        group, _, name = ".".join(unknown.groups()).rpartition(".")
        siblings = [key.rpartition(".")[2] for key in PARSER.get_defaults().keys() if key.rpartition(".")[0] == group]
        close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
        return message + (f"; did you mean {'.'.join(filter(None, (group, close[0])))}?" if close else "")
    union = re.match(r'Parser key "([^"]+)": Does not validate against any of the Union subtypes', message)
    given = re.search(r"Given value: (.*)$", message)
    if union and given:
        choices = dict.fromkeys(value.strip("'") for values in re.findall(r"Literal\[([^\]]*)\]", message)
                                for value in values.split(", "))
        if choices:
            return f"{union[1]}={given[1]!r} is not allowed; choose one of {', '.join(choices)}"
    return message


def build(args: list[str]) -> TrainCLI:
    """Parse ``args`` (the default config first if none is given) and build the model, data and trainer."""
    args = with_default_config(args)
    interactive = sys.stderr.isatty()
    trainer_defaults = {
        "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                   "init_args": {"save_dir": "logs", "name": config_name(args)}},
        "log_every_n_steps": 1,  # a Lightning batch is a chunk of many optimiser steps: log each one
        "enable_progress_bar": interactive,
        "callbacks": [LatestCheckpoint(), StopOnInterrupt()] + ([] if interactive else [EpochLines()]),
    }
    # exit_on_error=False: a bad value raises (and main reports it in one line) instead of printing the usage.
    return TrainCLI(Classifier, DataModule, args=args, run=False, trainer_defaults=trainer_defaults,
                    seed_everything_default=0, auto_configure_optimizers=False,
                    save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False})


def main(args: list[str] | None = None) -> int:
    try:
        cli = build(sys.argv[1:] if args is None else list(args))
    except (ArgumentError, ValueError, MisconfigurationException) as err:  # parsing, or a constructor refusing
        return fail(err, hint=isinstance(err, ArgumentError))  # a value (ConfigError, Lightning's Trainer)
    trainer = cli.trainer
    # Hyperparameters go to TensorBoard once per run folder: logging them again (on resume, or for
    # the test) would append a placeholder hp_metric of -1 after the real values.
    trainer.enable_autolog_hparams = cli.config.ckpt_path is None
    try:
        trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)
    except (ConfigError, DivergenceError) as err:  # found while preparing the data, or the loss became nan
        return fail(err) if trainer.is_global_zero else 2
    trainer.enable_autolog_hparams = False
    best = next((c.best_model_path for c in trainer.checkpoint_callbacks if not isinstance(c, LatestCheckpoint)), "")
    trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None)  # the best by --checkpoint.monitor
    return 0


if __name__ == "__main__":
    sys.exit(main())
