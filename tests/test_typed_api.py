"""The public API is typed: every function, and every constructor, forward and step of a class, that
handgrad.functional, handgrad.nn, handgrad.optim and handgrad.models export states the types of its
arguments and what it returns (mypy checks the bodies; pyproject's overrides make it refuse an untyped
def there). The py.typed marker ships, so that users' type checkers read these signatures."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

import handgrad
import handgrad.functional as F
import handgrad.models as models
import handgrad.nn as nn
import handgrad.optim as optim

METHODS = ("__init__", "forward", "step", "extra_repr", "reset_parameters")


def public_functions(module: ModuleType) -> Iterator[tuple[str, Callable]]:
    """(name, function) of what ``module`` exports and handgrad defines: its functions, and the methods of its
    classes that they define themselves."""
    names = getattr(module, "__all__", None) or [name for name in vars(module) if not name.startswith("_")]
    for name in names:
        obj = getattr(module, name)
        if not callable(obj) or not getattr(obj, "__module__", "").startswith("handgrad"):
            continue
        if inspect.isclass(obj):
            yield from ((f"{name}.{method}", obj.__dict__[method]) for method in METHODS if method in obj.__dict__)
        else:
            yield name, obj


def untyped(function: Callable) -> list[str]:
    """The arguments without a type, and "return" when the return type is missing (not asked of __init__)."""
    signature = inspect.signature(function)
    missing = [name for name, parameter in signature.parameters.items()
               if parameter.annotation is inspect.Parameter.empty and name not in ("self", "cls")]
    if signature.return_annotation is inspect.Signature.empty and function.__name__ != "__init__":
        missing.append("return")
    return missing


@pytest.mark.parametrize("module", [F, nn, optim, models], ids=lambda module: module.__name__)
def test_every_public_signature_is_typed(module):
    functions = dict(public_functions(module))
    assert len(functions) >= 5
    missing = {name: gaps for name, function in functions.items() if (gaps := untyped(function))}
    assert not missing, f"untyped arguments (or return) in {module.__name__}: {missing}"


def test_the_check_finds_an_untyped_argument():
    def half_typed(x: int, y) -> int:
        return x

    def no_return(x: int):
        return x

    assert untyped(half_typed) == ["y"] and untyped(no_return) == ["return"]


def test_the_py_typed_marker_ships():
    assert (Path(handgrad.__file__).parent / "py.typed").is_file()
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert '"py.typed"' in pyproject and "disallow_untyped_defs = true" in pyproject
