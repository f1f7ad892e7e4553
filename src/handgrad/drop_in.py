"""Drop-in namespaces: handgrad.nn, handgrad.functional and handgrad.optim answer every public name of
torch.nn, torch.nn.functional and torch.optim, so that a PyTorch script runs with only its imports swapped:

    import handgrad.nn as nn                  # was: import torch.nn as nn
    import handgrad.functional as F           # was: import torch.nn.functional as F
    import handgrad.optim as optim            # was: import torch.optim as optim

A name the module defines (listed in its ``HAND_WRITTEN``) is handgrad's: nn.Linear, F.nll_loss, optim.Adadelta.
Every other public name is torch's own object, looked up when first asked for: nn.Module is torch.nn.Module,
nn.init is torch.nn.init, optim.lr_scheduler is torch.optim.lr_scheduler. ``handgrad.nn.functional`` is
handgrad.functional, as torch.nn.functional is reachable from torch.nn. ``origins(module)`` says for each
name whose it is.

Each of the three modules ends with the same few lines:

    __all__ = [...]                     # the names the module defines,
    HAND_WRITTEN = frozenset(__all__)
    __all__ += drop_in.from_torch(torch.nn, HAND_WRITTEN)   # and torch's other public names
    if not TYPE_CHECKING:               # at run time: torch's namesake for every other public name
        __getattr__, __dir__ = drop_in.namespace(__name__, torch.nn, HAND_WRITTEN)
    else:                               # for type checkers: torch's names, below the module's own
        from torch.nn import *

so ``from handgrad.nn import *`` gives what ``from torch.nn import *`` gives, with handgrad's classes,
and a type checker sees handgrad's classes and functions where there are some, torch's types for the
rest, and flags an unknown name as it does on torch.nn.

``import handgrad.nn.functional as F`` and ``from handgrad.optim.lr_scheduler import StepLR`` also work:
``register_submodules`` enters, as os.py does for ``os.path``, handgrad.functional and torch's single-file
submodules (torch.nn.init, torch.nn.parameter, torch.optim.lr_scheduler, torch.optim.swa_utils, ...) into
``sys.modules`` under handgrad's names. torch's sub-packages (torch.nn.utils, ...) are reached as attributes
(``nn.utils.clip_grad_norm_``) or imported from torch (``from torch.nn.utils.rnn import pack_sequence``): an
alias of a package would load its not yet imported submodules a second time, as new module objects.
Type checkers read files, not sys.modules: for them, ``import handgrad.functional as F`` and
``from handgrad.optim import lr_scheduler``.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

HANDGRAD, TORCH = "handgrad", "torch"


def torch_names(torch_module: ModuleType) -> list[str]:
    """The public names of a torch module: those of dir() without a leading underscore."""
    return [name for name in dir(torch_module) if not name.startswith("_")]


def from_torch(torch_module: ModuleType, hand_written: Iterable[str]) -> list[str]:
    """The public names of ``torch_module`` that handgrad does not define: the drop-in module serves torch's."""
    return sorted(set(torch_names(torch_module)) - set(hand_written))


def namespace(module_name: str, torch_module: ModuleType,
              hand_written: Iterable[str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of a drop-in module.

    Python calls ``__getattr__`` only for a name the module does not define, so handgrad's own names never
    reach it. It answers public names only: a dunder (``__path__``, ``__file__``) taken from torch's module
    would make handgrad's module look like torch's to the import system.
    """
    own = sorted(hand_written)
    globals_ = sys.modules[module_name].__dict__

    def __getattr__(name: str) -> Any:
        if not name.startswith("_") and hasattr(torch_module, name):
            return getattr(torch_module, name)
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}, and neither has "
                             f"{torch_module.__name__}; {module_name}.HAND_WRITTEN lists handgrad's own names "
                             f"and dir({module_name}) every name it answers")

    def __dir__() -> list[str]:
        return sorted(set(globals_) | set(torch_names(torch_module)) | set(own))

    return __getattr__, __dir__


def register_submodules(module_name: str, torch_module: ModuleType, own: dict[str, ModuleType]) -> None:
    """Enter each single-file submodule of ``torch_module`` into sys.modules under ``module_name``, so that
    ``import handgrad.nn.init`` imports torch.nn.init; ``own`` gives handgrad's modules for names handgrad
    has (``{"functional": handgrad.functional}``). A name that is a submodule of handgrad's package
    (handgrad.optim.adam) stays handgrad's."""
    for name in torch_names(torch_module):
        full = f"{module_name}.{name}"
        value = own.get(name, getattr(torch_module, name))
        is_submodule = isinstance(value, ModuleType) and (
            name in own or (value.__name__ == f"{torch_module.__name__}.{name}" and not hasattr(value, "__path__")))
        if is_submodule and full not in sys.modules and not handgrad_has_submodule(module_name, name):
            sys.modules[full] = value


def handgrad_has_submodule(module_name: str, name: str) -> bool:
    """Whether handgrad's package ``module_name`` has a file or folder ``name`` of its own."""
    package = sys.modules[module_name]
    return hasattr(package, "__path__") and importlib.util.find_spec(f"{module_name}.{name}") is not None


def origins(module: ModuleType) -> dict[str, str]:
    """Every public name a drop-in module answers -> "handgrad" (its own, in HAND_WRITTEN) or "torch"."""
    hand_written = module.HAND_WRITTEN
    return {name: HANDGRAD if name in hand_written else TORCH for name in module.__all__}
