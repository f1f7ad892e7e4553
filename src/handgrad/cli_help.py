"""The command line's help: ``-h`` shows handgrad's own options, each with its value in the config in
use; ``--help_all`` shows every option, Lightning's included, with the config's values as defaults.

jsonargparse's own help lists about 1,350 lines: all of Lightning's Trainer and, for the option typed
``torch.nn.Module`` (model.net), every Module subclass imported (torch's, torchvision's, torchmetrics').
It also shows the classes' defaults rather than those of a --config file given before --help. So -h is
rendered here from the parsed config and the classes' docstrings, and --help_all narrows that one list
to handgrad's networks (BriefSubclasses).
"""

from __future__ import annotations

import importlib
import inspect
import re
import shutil
import textwrap

from docstring_parser import parse as parse_docstring
from jsonargparse import ArgumentError, DefaultHelpFormatter

from handgrad.configfiles import config_label, packaged_configs
from handgrad.data import DataModule
from handgrad.lit_module import Classifier
from handgrad.lm_module import LanguageModel

NETWORKS = ("handgrad.models.MLP", "handgrad.models.LeNet5")  # torchvision.ops.MLP makes the short name MLP ambiguous
LANGUAGE_NETWORKS = ("handgrad.models.GPT", "handgrad.models.CharLSTM")  # a LanguageModel's
HELP_FLAGS = ("-h", "--help", "--help_all")

RUN_OPTIONS = {  # option -> its help, in the order shown
    "seed_everything": "seeds the initial weights and dropout (true: a random seed)",
    "ckpt_path": 'resume from this checkpoint; "last": the newest run of this config',
    "restart_epoch": "with --ckpt_path: train its epoch afresh from the first chunk (data settings may differ)",
    "threads": "CPU threads for torch's ops; null: one per core",
}
TRAINER_OPTIONS = {  # Lightning's docstrings run to 15 lines; one line each here
    "max_epochs": "stop after this many epochs",
    "max_steps": "stop after this many optimiser steps (-1: no limit), even inside an epoch",
    "check_val_every_n_epoch": "validate after every N epochs",
    "accelerator": '"cpu", "gpu", "mps" or "auto" (a GPU when there is one)',
    "devices": 'how many devices (-1: all), a list of indices, or "auto"',
    "precision": '"32-true", "64-true", "bf16-mixed" or "16-mixed" (CUDA); null: 32-true',
}
CHECKPOINT_OPTIONS = {"monitor": "the metric whose best checkpoint is tested (val/acc); null: the final weights"}
SHORTER = {  # docstring descriptions too long for one glance
    "model.fused": '"auto": the fused step for a plain MLP, autograd\'s engine otherwise; true or false forces one',
}


class BriefSubclasses(DefaultHelpFormatter):
    """jsonargparse's formatter, except that the option typed torch.nn.Module (model.net) names handgrad's
    networks rather than every Module subclass imported."""

    def _get_help_string(self, action) -> str:
        text = super()._get_help_string(action)
        head, found, paths = text.rpartition(", known subclasses: ")
        if found and "torch.nn.Module" in paths:
            listed = [path.strip() for path in paths.rstrip(")").split(",")]
            ours = [path for path in listed if path.startswith("handgrad.models.")]
            text = f"{head}, one of: {', '.join(ours)}; --model.net.help <one of them> lists its options)"
        return text


def short_help(parser, args: list[str], config: str) -> str:
    """handgrad's options, each with its value in ``config`` and ``args`` (-h's text)."""
    in_use = config_label(config, path_too=True)
    try:
        cfg = parser.parse_args([a for a in args if a not in HELP_FLAGS])
        about = f"The values shown are those of the config in use, {in_use}, with the options given."
    except (ArgumentError, ValueError) as err:
        cfg = None
        about = (f"The config in use, {in_use}, with the options given, does not parse "
                 f"({' '.join(str(err).split())}), so the values shown are the classes' defaults.")

    def value(key: str, default):
        return cfg[key] if cfg is not None and key in cfg else default

    net_path = value("model.net.class_path", NETWORKS[0])
    module, _, name = net_path.rpartition(".")
    net_class = getattr(importlib.import_module(module), name)
    language = name in ("GPT", "CharLSTM")
    networks = LANGUAGE_NETWORKS if language else NETWORKS
    others = [path for path in networks if path.rpartition(".")[2] != name]
    model_class: type = LanguageModel if language else Classifier
    data_path = value("data.class_path", None)  # a language model's data names its class
    data_class = getattr(importlib.import_module(data_path.rpartition(".")[0]), data_path.rpartition(".")[2]) \
        if data_path else DataModule
    sections = [
        ("Run", [("--config", config_label(config), "a config's name (" + ", ".join(packaged_configs())
                  + ") or a YAML file; the options after it override it")]
         + [(f"--{key}", value(key, None), text) for key, text in RUN_OPTIONS.items()]),
        (f"The model, {model_class.__module__}.{model_class.__name__}",
         class_options(model_class, "model", value, skip="net")),
        (f"The network, --model.net {net_path}" + (f" (or {', '.join(others)})" if others else ""),
         class_options(net_class, "model.net.init_args", value, shown_as="model.net")),
        (f"The data, {data_class.__module__}.{data_class.__name__}",
         class_options(data_class, "data.init_args" if data_path else "data", value, shown_as="data")),
        ("Lightning's Trainer (a few of its options)",
         [(f"--trainer.{key}", value(f"trainer.{key}", None), text) for key, text in TRAINER_OPTIONS.items()]),
        ("The best checkpoint, Lightning's ModelCheckpoint",
         [(f"--checkpoint.{key}", value(f"checkpoint.{key}", None), text) for key, text in CHECKPOINT_OPTIONS.items()]),
    ]
    width = min(shutil.get_terminal_size((100, 24)).columns, 100)
    options = sum(1 for action in parser._actions if action.option_strings)
    lines = [f"usage: {parser.prog} [-h] [--help_all] [--config NAME|FILE] [--OPTION VALUE ...]", ""]
    lines += textwrap.wrap(f"Train a handgrad network, then test it. {about}", width)
    for title, entries in sections:
        lines += ["", f"{title}:"] + [line for option, shown, text in entries
                                      for line in option_lines(option, shown, text, width)]
    more = (f"More: --model.net.help {networks[0]} (or {networks[1]}) lists a network's options; --help_all lists "
            f"all {options} options (Lightning's Trainer and ModelCheckpoint included) with this config's values; "
            "--print_config prints the resolved config. Each run goes to logs/<config>/version_N/; "
            "tensorboard --logdir logs shows the runs.")
    lines += [""] + textwrap.wrap(more, width)
    return "\n".join(lines)


def class_options(cls, prefix: str, value, skip: str = "", shown_as: str = "") -> list[tuple[str, object, str]]:
    """(option, value, help) for each argument of ``cls``'s constructor, the help from its docstring."""
    described = {param.arg_name: param.description or "" for param in parse_docstring(cls.__doc__ or "").params}
    entries = []
    for name, parameter in inspect.signature(cls).parameters.items():
        if name == skip:
            continue
        key = f"{prefix}.{name}"
        text = SHORTER.get(key) or first_sentence(described.get(name, ""))
        entries.append((f"--{shown_as or prefix}.{name}", value(key, parameter.default), text))
    return entries


def first_sentence(text: str) -> str:
    text = " ".join(text.replace("``", "").split())
    return re.split(r"\.(?=\s+[A-Z\"]|$)", text, maxsplit=1)[0]


def option_lines(option: str, value, text: str, width: int, column: int = 34) -> list[str]:
    """'  --model.lr 0.05            learning rate, > 0', the help wrapped in its column (or below a long head)."""
    shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    head = f"  {option} {shown}"
    if len(head) + 2 > column:
        return [head] + textwrap.wrap(text, width, initial_indent=" " * column, subsequent_indent=" " * column)
    body = textwrap.wrap(text, width - column) or [""]
    return [head.ljust(column) + body[0]] + [" " * column + line for line in body[1:]]


def full_help(parser, config: str) -> str:
    """jsonargparse's help of every option, with ``config``'s values as the defaults shown."""
    parser.default_config_files = [config]  # for this help only: the process exits after it
    return parser.format_help()



