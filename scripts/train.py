"""Train a handgrad network with Lightning: fit on the training split, then test on the test split.

    python scripts/train.py                                     # runs configs/mnist_mlp.yaml
    python scripts/train.py --config configs/nielsen_ch1.yaml
    python scripts/train.py --config configs/sgd.yaml --model.lr 0.05 --data.batch_size 1 --trainer.max_epochs 3
    python scripts/train.py --config configs/nielsen_ch1.yaml --ckpt_path last    # resume its latest run
    python scripts/train.py --config configs/nielsen_ch1.yaml --print_config     # the resolved config
    tensorboard --logdir logs

Every constructor argument of handgrad.lit_module.Classifier (--model.*), its network
(--model.net.init_args.*), handgrad.data.DataModule (--data.*), lightning's Trainer
(--trainer.*) and the checkpoint callback (--checkpoint.*) can be set in the YAML or on
the command line. Runs go to logs/<config name>/version_N/ (TensorBoard events, the
resolved config.yaml, checkpoints/ with last.ckpt). The test uses the checkpoint with the
best val/acc (without a validation split, pass --checkpoint.monitor null: the final weights).

Without --config the default config is inserted as the first argument (rather than set
as a jsonargparse default_config_file, whose keys would leak into every other config).
A setting that cannot work stops the run before training with one line, "error: ...",
and exit status 2.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from handgrad.data import ConfigError, DataModule
from handgrad.lit_module import Classifier

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "mnist_mlp.yaml"

# Our loaders cut batches from in-memory tensors: worker processes would only add cost.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# main() passes the argument list on explicitly (with the default config inserted).
warnings.filterwarnings("ignore", ".*LightningCLI's args parameter is intended.*")
# Raised inside Lightning 2.6 by torch >= 2.10; nothing a user of this script can change.
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
# "Seed set to 0" would precede an error line; the seed is in the saved config.yaml anyway.
logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)


class EpochLines(Callback):
    """One line per epoch, for logs that are not a terminal (where a progress bar would flood)."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start, self.validated = time.perf_counter(), False

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.validated = not trainer.sanity_checking

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        keys = ("train/loss", "train/acc") + (("val/loss", "val/acc") if self.validated else ())
        metrics = trainer.callback_metrics
        shown = "  ".join(f"{k} {metrics[k].item():.4f}" for k in keys if k in metrics)
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  step {trainer.global_step}  {shown}  "
              f"({time.perf_counter() - self.start:.1f} s)", flush=True)


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
            "checkpoint.save_last": True,
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
    message = " ".join(str(err).split())
    print(f"error: {message}" + (" (see --help)" if hint else ""), file=sys.stderr)
    return 2


def build(args: list[str]) -> TrainCLI:
    """Parse ``args`` (the default config first if none is given) and build the model, data and trainer."""
    args = with_default_config(args)
    interactive = sys.stderr.isatty()
    trainer_defaults = {
        "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                   "init_args": {"save_dir": "logs", "name": config_name(args)}},
        "log_every_n_steps": 1,  # a Lightning batch is a chunk of many optimiser steps: log each one
        "enable_progress_bar": interactive,
        "callbacks": [] if interactive else [EpochLines()],
    }
    # exit_on_error=False: a bad value raises (and main reports it in one line) instead of printing the usage.
    return TrainCLI(Classifier, DataModule, args=args, run=False, trainer_defaults=trainer_defaults,
                    seed_everything_default=0, auto_configure_optimizers=False,
                    save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False})


def main(args: list[str] | None = None) -> int:
    try:
        cli = build(sys.argv[1:] if args is None else list(args))
    except (ArgumentError, ValueError) as err:  # parsing, or a constructor refusing a value (ConfigError too)
        return fail(err, hint=isinstance(err, ArgumentError))
    trainer = cli.trainer
    # Hyperparameters go to TensorBoard once per run folder: logging them again (on resume, or for
    # the test) would append a placeholder hp_metric of -1 after the real values.
    trainer.enable_autolog_hparams = cli.config.ckpt_path is None
    try:
        trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)
    except ConfigError as err:  # found while preparing the data, before the first step
        return fail(err)
    trainer.enable_autolog_hparams = False
    best = getattr(trainer.checkpoint_callback, "best_model_path", "")
    trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best" if best else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
