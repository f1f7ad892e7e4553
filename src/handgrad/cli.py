"""handgrad's command line: train a network with Lightning, then test it (``handgrad-train``,
``python scripts/train.py``).

    handgrad-train                                     # configs/mnist_mlp.yaml
    handgrad-train --config nielsen_ch1                # a shipped config by name, or any YAML file
    handgrad-train --config sgd --model.lr 0.05 --data.batch_size 1 --trainer.max_epochs 3
    handgrad-train --config nielsen_ch1 --ckpt_path last      # resume its newest run
    handgrad-train --config nielsen_ch1 --help                # its options and their values
    handgrad-train --trainer.accelerator gpu --trainer.devices 4 --trainer.strategy ddp

A LightningCLI: every constructor argument of handgrad.lit_module.Classifier (--model.*), its
network (--model.net.*), handgrad.data.DataModule (--data.*), Lightning's Trainer (--trainer.*)
and the checkpoint callback (--checkpoint.*) is a key of the YAML and an option. Runs go to
logs/<config name>/version_N/ (TensorBoard events, the resolved config.yaml, checkpoints/ with the
best checkpoint by val/acc, which the test uses, and last.ckpt, see handgrad.checkpointing).

A setting that cannot work stops the run before training with one line, "error: ...", and exit
status 2 (handgrad.preflight: also a damaged or mismatched checkpoint, a run folder that cannot be
written); so does a failed download (before Lightning prints anything), a loss that becomes nan or
inf, and a checkpoint or log that cannot be written. Ctrl-C or SIGTERM ends training after the chunk
in progress, saves last.ckpt and exits with 130 or 143 (handgrad.stopping). A finished run ends with
one line: the test accuracy, the checkpoint tested, the wall time, the run's folder and the
TensorBoard command (handgrad.terminal).
"""

from __future__ import annotations

import os

# One OpenBLAS thread, set before numpy loads (handgrad's __init__ imports nothing heavy): TensorBoard's
# histograms call numpy, whose OpenBLAS otherwise starts a pool of its own that spins beside torch's
# thread (10 us per example on nielsen_ch1 on a 2-core machine; docs/performance.md). An explicit
# OPENBLAS_NUM_THREADS wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import difflib
import logging
import re
import signal
import sys
import time
import warnings

import torch
import yaml
from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer as LightningTrainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from handgrad.checkpoint_io import AtomicCheckpointIO, Trainer
from handgrad.checkpointing import LatestCheckpoint, find_last_checkpoint
from handgrad.cli_help import BriefSubclasses, full_help, short_help
from handgrad.cli_run import run
from handgrad.configfiles import check_config_file, config_files, last_config, with_config_files
from handgrad.data import DataModule
from handgrad.errors import ConfigError
from handgrad.lit_module import Classifier
from handgrad.lm_module import LanguageModel
from handgrad.preflight import check_settings
from handgrad.stopping import GracefulStop, SignalConnector, Stopped
from handgrad.terminal import EpochLines, ProgressBar, console_above_bar, process_seconds, say
from handgrad.text_data import TokenDataModule

# Our loaders cut batches from in-memory tensors: worker processes would only add cost.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# main() passes the argument list on explicitly (with the default config inserted).
warnings.filterwarnings("ignore", ".*LightningCLI's args parameter is intended.*")
# Raised inside Lightning 2.6 by torch >= 2.10; nothing a user of this command can change.
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
# --ckpt_path last goes on in the same run folder, whose checkpoints/ holds the run's earlier checkpoints.
warnings.filterwarnings("ignore", "Checkpoint directory .* exists and is not empty")
# Under DDP: the validation and test metrics are torchmetrics' compute(), already gathered over the ranks.
warnings.filterwarnings("ignore", ".*when logging on epoch level in distributed setting.*")
# "Seed set to 0" would precede an error line; the seed is in the saved config.yaml anyway.
logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
# The summary line names the checkpoint tested; Lightning's two lines about loading it say it again.
TEST_QUIET = ("Restoring states from the checkpoint path", "Loaded model weights from the checkpoint")
LIGHTNING_ADVERT = "💡 Tip: For seamless cloud logging"  # printed when the Trainer is built


class TrainCLI(LightningCLI):
    """LightningCLI plus --ckpt_path ("last": this config's newest run), --threads and --checkpoint.*;
    -h and --help_all (handgrad.cli_help); the data downloaded before the Trainer is built; and a
    progress bar in a terminal, one line per epoch elsewhere (handgrad.terminal)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help='Resume fit from this checkpoint; "last": the latest run of this config.')
        parser.add_argument("--restart_epoch", type=bool, default=False,
                            help="With --ckpt_path: train the checkpoint's epoch afresh from its first chunk (the "
                                 "steps it took stay in the weights); lets data settings differ from the checkpoint's.")
        parser.add_argument("--threads", type=int | None, default=None,
                            help="CPU threads for torch's ops (torch.set_num_threads); null: one per core.")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/acc",
            "checkpoint.mode": "max",
            "checkpoint.filename": "epoch{epoch:03d}-step{step}",
            "checkpoint.auto_insert_metric_name": False,
        })

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        global PARSER
        PARSER = super().init_parser(**kwargs)  # kept for explain()'s "did you mean"
        return PARSER

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """-h / --help: handgrad's options with the values of the config in use; --help_all: every option."""
        args = list(args)
        if "--help_all" in args:
            print(full_help(parser, last_config(args)))
            sys.exit(0)
        if "-h" in args or "--help" in args:
            print(short_help(parser, args, last_config(args)))
            sys.exit(0)
        super().parse_arguments(parser, args)

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
        if self.config.restart_epoch and self.config.ckpt_path is None:
            raise ConfigError("--restart_epoch true restarts the epoch of the checkpoint a run resumes from; pass "
                              "--ckpt_path too (e.g. --ckpt_path last), or leave --restart_epoch out")
        assert PARSER is not None
        check_settings(self.config, dict(PARSER.get_defaults().items()), [str(f) for f in self.config.config or []])

    def instantiate_trainer(self, **kwargs) -> LightningTrainer:
        """Download the data before the Trainer exists (and prints its "GPU available" lines), so that a
        failure is the run's first and only output: on one process per machine (LOCAL_RANK 0), as
        Lightning's prepare_data would; the others find the files there or wait in prepare_data.
        Then add the progress bar, or the epoch lines where it is switched off, decided on the final
        trainer.enable_progress_bar (Lightning refuses a bar callback beside enable_progress_bar=False)."""
        if os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")) == "0":
            self.datamodule.prepare_data()
        shown = ProgressBar() if self.config.trainer.enable_progress_bar else EpochLines()
        self.trainer_defaults["callbacks"] = [*self.trainer_defaults["callbacks"], shown]
        with console_above_bar(quiet=(LIGHTNING_ADVERT,)):
            return super().instantiate_trainer(**kwargs)


class LanguageModelCLI(TrainCLI):
    """TrainCLI for handgrad.lm_module.LanguageModel: the data is any TokenDataModule (``data.class_path``),
    whose vocabulary and context length go to the model (model.vocab, model.net.vocab_size and block_size),
    and the checkpoint kept for the test is the one of lowest val/loss."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("data.vocab", "model.vocab", apply_on="instantiate")
        parser.link_arguments("data.vocab_size", "model.net.init_args.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.block_size", "model.net.init_args.block_size", apply_on="instantiate")
        parser.set_defaults({"checkpoint.monitor": "val/loss", "checkpoint.mode": "min"})


LANGUAGE_MODELS = ("GPT", "CharLSTM")  # the nets that make a config a language model's


def trains_language_model(args: list[str]) -> bool:
    """Whether the run's config files name a language model as model.net (handgrad.models.GPT or CharLSTM)."""
    for path in reversed(config_files(args)):
        with open(path, encoding="utf-8") as file:
            config = yaml.safe_load(file) or {}
        net = (config.get("model") or {}).get("net") if isinstance(config, dict) else None
        if isinstance(net, dict) and "class_path" in net:
            return str(net["class_path"]).rpartition(".")[2] in LANGUAGE_MODELS
    return False


PARSER: LightningArgumentParser | None = None  # the parser of the latest build()


def config_name(args: list[str]) -> str:
    """The run's folder under logs/: the name of the last --config file."""
    return os.path.splitext(os.path.basename(last_config(args)))[0]


def fail(err: Exception, hint: bool = False) -> int:
    """Print the error as one line, "error: ...", and return exit status 2."""
    message = explain(err) if isinstance(err, ArgumentError) else " ".join(str(err).split())
    say(f"error: {message}" + (" (see --help)" if hint else ""))
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


def build(args: list[str], stop: GracefulStop | None = None) -> TrainCLI:
    """Parse ``args`` (the default config first if none is given) and build the model, data and trainer.
    ``stop`` (main's) is the run's GracefulStop, whose handlers main installs."""
    args = with_config_files(args)
    for path in config_files(args):
        check_config_file(path)
    stop = GracefulStop() if stop is None else stop
    trainer_defaults = {
        "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                   "init_args": {"save_dir": "logs", "name": config_name(args), "default_hp_metric": False}},
        "log_every_n_steps": 1,  # a Lightning batch is a chunk of many optimiser steps: log each one
        "enable_progress_bar": sys.stdout.isatty(),  # the bar and the epoch lines both write to stdout
        "enable_autolog_hparams": False,  # handgrad.hparams writes the HPARAMS row, with real metrics
        "callbacks": [LatestCheckpoint(), stop],  # and a ProgressBar or EpochLines: instantiate_trainer
    }
    # exit_on_error=False: a bad value raises (and main reports it in one line) instead of printing the usage.
    language = trains_language_model(args)  # a GPT or CharLSTM: LanguageModel, and the data by its class_path
    cli_class, model_class, data_class = ((LanguageModelCLI, LanguageModel, TokenDataModule) if language else
                                          (TrainCLI, Classifier, DataModule))
    cli = cli_class(model_class, data_class, subclass_mode_data=language, args=args, run=False, trainer_class=Trainer,
                   trainer_defaults=trainer_defaults, seed_everything_default=0, auto_configure_optimizers=False,
                   save_config_kwargs={"overwrite": True},
                   parser_kwargs={"exit_on_error": False, "formatter_class": BriefSubclasses,
                                  "description": "Train a handgrad network, then test it (-h: handgrad's options)."})
    # Set on the built objects: a plugin instance in trainer_defaults would make jsonargparse warn that it
    # cannot serialise it, and the signal connector is no Trainer argument at all.
    cli.trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    cli.trainer._signal_connector = SignalConnector(cli.trainer, stop)
    return cli


def main(args: list[str] | None = None) -> int:
    """Fit, test, and print the summary line; the exit status (2: a setting, the data or a file refused;
    130 / 143: stopped by SIGINT / SIGTERM)."""
    started = time.perf_counter() - (process_seconds() if args is None else 0.0)  # the command's wall time
    stop = GracefulStop()
    stop.install()  # first: a signal during start-up stops the run too
    try:
        try:
            cli = build(sys.argv[1:] if args is None else list(args), stop)
        except (ArgumentError, ValueError, MisconfigurationException) as err:  # parsing, or a constructor refusing
            return fail(err, hint=isinstance(err, ArgumentError))  # a value (ConfigError, Lightning's Trainer)
        except (Stopped, KeyboardInterrupt) as stopped:
            signum = getattr(stopped, "signum", stop.signum) or signal.SIGINT
            say(f"stopped by {signal.Signals(signum).name} during start-up, before training began; nothing was saved")
            return 128 + signum
        return run(cli, stop, started)
    finally:
        stop.uninstall()


if __name__ == "__main__":
    sys.exit(main())
