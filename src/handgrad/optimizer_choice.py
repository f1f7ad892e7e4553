"""Which handgrad optimiser Classifier trains with: ``--model.optimizer`` by name, its hyperparameters in
``--model.optimizer_args``, and the checks that refuse a bad choice before any step.

    --model.optimizer sgd                                   the default: w <- w - lr * grad (momentum, weight decay)
    --model.optimizer adam --model.lr 1e-3                  Adam, torch's betas and eps
    --model.optimizer adamw --model.weight_decay 0.01 --model.optimizer_args.betas [0.9,0.95]

Classifier's own ``lr``, ``momentum`` and ``weight_decay`` go to whichever optimiser is chosen (momentum
only to those that have one: SGD and RMSprop); every other constructor argument of the optimiser
(Adam's ``betas``, ``eps``, ``amsgrad``; SGD's ``nesterov``; RMSprop's ``alpha``, ``centered``, ...) is
a key of ``optimizer_args``, with torch's name and meaning. The optimisers are handgrad.optim's, each
equal to torch.optim's bit for bit.
"""

from __future__ import annotations

import difflib
import inspect
import re
from typing import Any

import torch

from handgrad.errors import ConfigError
from handgrad.optim import SGD, Adadelta, Adagrad, Adam, AdamW, RMSprop
from handgrad.optim.base import HandOptimizer

OPTIMIZERS: dict[str, type[HandOptimizer]] = {
    "sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adadelta": Adadelta, "adagrad": Adagrad,
}
OWN_OPTIONS = ("lr", "momentum", "weight_decay")  # Classifier's arguments, given to the optimiser
EXAMPLES = {"sgd": "nesterov true", "adam": "betas [0.9,0.999]", "adamw": "betas [0.9,0.95]",
            "rmsprop": "alpha 0.99", "adadelta": "rho 0.9", "adagrad": "lr_decay 1e-4"}


def optimizer_class(name: str) -> type[HandOptimizer]:
    """The optimiser a ``--model.optimizer`` name stands for (any case: "adam", "Adam")."""
    if isinstance(name, str) and name.lower() in OPTIMIZERS:
        return OPTIMIZERS[name.lower()]
    close = difflib.get_close_matches(str(name).lower(), OPTIMIZERS, n=1)
    fix = f"did you mean --model.optimizer {close[0]}?" if close else "e.g. --model.optimizer adam"
    raise ConfigError(f"model.optimizer={name!r} is unknown; choose one of {', '.join(OPTIMIZERS)} ({fix})")


def arguments(cls: type[HandOptimizer]) -> list[str]:
    """The optimiser's constructor arguments, ``params`` left out."""
    return [name for name in inspect.signature(cls).parameters if name != "params"]


def optimizer_settings(name: str, lr: float, momentum: float, weight_decay: float,
                       optimizer_args: dict[str, Any] | None) -> dict[str, Any]:
    """The optimiser's keyword arguments (its param_group settings as it stores them: Adam's betas as a
    tuple), after checking each: a ConfigError naming the value and the fix, before any training."""
    cls = optimizer_class(name)
    key = name.lower()
    args = {} if optimizer_args is None else optimizer_args
    if not isinstance(args, dict):
        raise ConfigError(f"model.optimizer_args={args!r} is not a mapping; pass the optimiser's arguments by name, "
                          f"e.g. --model.optimizer_args.{EXAMPLES[key]}")
    accepted = arguments(cls)
    for arg, value in args.items():
        if arg in OWN_OPTIONS:
            raise ConfigError(f"model.optimizer_args.{arg}={value!r}: {arg} is Classifier's own option, given to "
                              f"every optimiser; pass --model.{arg} {value} and leave it out of optimizer_args")
        if arg not in accepted:
            close = difflib.get_close_matches(str(arg), accepted, n=1)
            raise ConfigError(f"model.optimizer_args.{arg}={value!r}: {cls.__name__} has no argument {arg!r}"
                              + (f" (did you mean {close[0]}?)" if close else "")
                              + f"; its arguments are {', '.join(a for a in accepted if a not in OWN_OPTIONS)}")
    settings: dict[str, Any] = dict(lr=lr, weight_decay=weight_decay)
    if "momentum" in accepted:
        settings["momentum"] = momentum
    elif momentum != 0:
        have = ", ".join(k for k, c in OPTIMIZERS.items() if "momentum" in arguments(c))
        raise ConfigError(f"model.momentum={momentum} is a setting of {have} only; {cls.__name__} has no momentum"
                          + (" (beta1 of its betas plays that part)" if "betas" in accepted else "")
                          + f": pass --model.momentum 0 with --model.optimizer {key}")
    settings.update(args)
    try:
        probe = cls([torch.zeros(1, requires_grad=True)], **settings)
    except (ValueError, TypeError) as err:
        message = " ".join(str(err).split())
        raise ConfigError(f"model.optimizer {key}: {message}{where_to_set(message, args)}") from None
    return {arg: probe.defaults[arg] for arg in settings}


def where_to_set(message: str, args: dict[str, Any]) -> str:
    """' (set by --model.optimizer_args.eps)': the options holding the values an optimiser's error names."""
    options = [f"--model.{arg}" if arg in OWN_OPTIONS else f"--model.optimizer_args.{arg}"
               for arg in dict.fromkeys(re.findall(r"(\w+)=", message)) if arg in OWN_OPTIONS or arg in args]
    return f" (set by {' and '.join(options)})" if options else ""
