"""handgrad: neural networks whose gradients are written by hand and proven against autograd.

``handgrad.functional``, ``handgrad.nn``, ``handgrad.models`` and ``handgrad.optim`` are imported
on first use (``handgrad.nn.Linear`` works after ``import handgrad``), so that importing
``handgrad.cli`` sets up the process (OPENBLAS_NUM_THREADS) before torch and numpy load.
``handgrad.data`` (the LightningDataModule) and ``handgrad.lit_module`` (the LightningModule)
import Lightning and torchvision, and are imported by name.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.1.0"
__all__ = ["functional", "models", "nn", "optim"]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"handgrad.{name}")
    raise AttributeError(f"module 'handgrad' has no attribute {name!r}")
