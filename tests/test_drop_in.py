"""handgrad.nn, handgrad.functional and handgrad.optim as drop-in namespaces (handgrad.drop_in): every public
name of torch.nn, torch.nn.functional and torch.optim resolves; handgrad's own names are handgrad's, every
other name is torch's very object, and a name neither has is an AttributeError naming the module."""

import importlib
import inspect
import os
import subprocess
import sys
from types import ModuleType

import pytest
import torch
import torch.nn.functional

import handgrad
import handgrad.functional
import handgrad.nn
import handgrad.optim
from handgrad import drop_in

NAMESPACES = {  # handgrad's module -> torch's
    "handgrad.nn": (handgrad.nn, torch.nn),
    "handgrad.functional": (handgrad.functional, torch.nn.functional),
    "handgrad.optim": (handgrad.optim, torch.optim),
}
each = pytest.mark.parametrize("namespace", NAMESPACES)


def public_names(module: ModuleType) -> list[str]:
    return [name for name in dir(module) if not name.startswith("_")]


def is_handgrads(value) -> bool:
    """Defined in handgrad: a class or function of a handgrad module, or a handgrad module."""
    name = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", "")
    return name.split(".")[0] == "handgrad"


@each
def test_every_public_name_of_torchs_module_resolves(namespace):
    ours, theirs = NAMESPACES[namespace]
    names = public_names(theirs)
    assert len(names) > 15  # torch.optim has 19, torch.nn and torch.nn.functional over 150
    missing = [name for name in names if not hasattr(ours, name)]
    assert not missing, missing


@each
def test_handgrads_names_are_handgrads_and_the_others_are_torchs_very_objects(namespace):
    ours, theirs = NAMESPACES[namespace]
    for name in public_names(theirs):
        value = getattr(ours, name)
        if name in ours.HAND_WRITTEN:
            assert is_handgrads(value) and value is not getattr(theirs, name), name
        else:
            assert value is getattr(theirs, name), name


@each
def test_hand_written_lists_handgrads_own_names(namespace):
    ours, theirs = NAMESPACES[namespace]
    assert ours.HAND_WRITTEN and all(is_handgrads(getattr(ours, name)) for name in ours.HAND_WRITTEN)
    by_origin: dict[str, set[str]] = {"handgrad": set(), "torch": set()}
    for name, origin in drop_in.origins(ours).items():
        by_origin[origin].add(name)
    assert by_origin == {"handgrad": ours.HAND_WRITTEN, "torch": set(public_names(theirs)) - ours.HAND_WRITTEN}


@each
def test_all_and_dir_name_every_name(namespace):
    ours, theirs = NAMESPACES[namespace]
    expected = set(public_names(theirs)) | ours.HAND_WRITTEN
    assert set(ours.__all__) == expected and len(ours.__all__) == len(expected)  # from handgrad.nn import *
    assert expected <= set(dir(ours))


@each
def test_an_unknown_name_is_an_error_naming_the_module(namespace):
    ours, theirs = NAMESPACES[namespace]
    message = (rf"module '{namespace}' has no attribute 'Linaer', and neither has {theirs.__name__}; "
               rf"{namespace}.HAND_WRITTEN lists handgrad's own names")
    with pytest.raises(AttributeError, match=message.replace(".", r"\.")):
        ours.Linaer  # noqa: B018
    assert not hasattr(ours, "Linaer")


@each
def test_private_names_and_dunders_stay_handgrads(namespace):
    ours, theirs = NAMESPACES[namespace]
    private = next(name for name in dir(theirs) if name.startswith("_") and not name.startswith("__"))
    with pytest.raises(AttributeError, match="has no attribute"):
        getattr(ours, private)
    if hasattr(theirs, "__path__"):  # torch.nn, torch.optim: packages, whose folders handgrad's modules do not take
        assert getattr(ours, "__path__", None) != theirs.__path__
    assert ours.__name__ == namespace


# --------------------------------------------------------------------------- the names a script uses


def test_nn_answers_as_torch_nn_does():
    from handgrad import nn

    assert nn.Linear is handgrad.nn.Linear and nn.Linear.__module__ == "handgrad.nn"
    assert issubclass(nn.Linear, torch.nn.Linear) and nn.Linear is not torch.nn.Linear
    for name in ("Module", "Parameter", "Sequential", "ModuleList", "ModuleDict", "Identity", "Flatten",
                 "init", "utils", "Buffer"):
        assert getattr(nn, name) is getattr(torch.nn, name)
    assert nn.functional is handgrad.functional and nn.functional.nll_loss is handgrad.functional.nll_loss
    assert nn.utils.clip_grad_norm_ is torch.nn.utils.clip_grad_norm_
    for name in handgrad.nn.HAND_WRITTEN - {"functional"}:  # each class is a drop-in twin of its namesake
        assert inspect.isclass(getattr(nn, name)) and issubclass(getattr(nn, name), getattr(torch.nn, name)), name


def test_optim_answers_as_torch_optim_does():
    from handgrad import optim

    assert optim.lr_scheduler is torch.optim.lr_scheduler and optim.Optimizer is torch.optim.Optimizer
    for name in ("SGD", "Adam", "AdamW", "RMSprop", "Adadelta", "Adagrad"):
        assert issubclass(getattr(optim, name), torch.optim.Optimizer) and getattr(optim, name) is not \
            getattr(torch.optim, name), name
    assert optim.adam.__name__ == "handgrad.optim.adam"  # handgrad's own submodule, not torch.optim.adam


def test_dotted_imports_of_single_file_submodules():
    assert importlib.import_module("handgrad.nn.functional") is handgrad.functional
    assert importlib.import_module("handgrad.nn.init") is torch.nn.init
    assert importlib.import_module("handgrad.nn.parameter") is torch.nn.parameter
    assert importlib.import_module("handgrad.optim.lr_scheduler") is torch.optim.lr_scheduler
    assert importlib.import_module("handgrad.optim.swa_utils") is torch.optim.swa_utils
    # torch's sub-packages are attributes only: an alias would load their other submodules a second time
    with pytest.raises(ModuleNotFoundError, match="'handgrad.nn' is not a package"):
        importlib.import_module("handgrad.nn.utils.rnn")


def test_a_script_can_start_with_the_swapped_imports():
    """In a fresh interpreter, as the first lines of a script: the dotted imports load their parents first."""
    script = ("import handgrad.nn.functional as F\n"
              "from handgrad.optim.lr_scheduler import StepLR\n"
              "import handgrad.nn.init as init\n"
              "from handgrad import nn, optim\n"
              "import torch\n"
              "assert F.nll_loss.__module__.startswith('handgrad.') and F.pad is torch.nn.functional.pad\n"
              "assert StepLR is torch.optim.lr_scheduler.StepLR and init is torch.nn.init\n"
              "assert nn.Module is torch.nn.Module and optim.Adadelta.__module__ == 'handgrad.optim.adadelta'\n"
              "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr[-2000:]
