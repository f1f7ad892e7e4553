"""handgrad: neural networks whose gradients are written by hand and proven against autograd.

``handgrad.functional``, ``handgrad.nn``, ``handgrad.models`` and ``handgrad.optim`` are imported
on first use (``handgrad.nn.Linear`` works after ``import handgrad``), so that importing
``handgrad.cli`` sets up the process (OPENBLAS_NUM_THREADS) before torch and numpy load.
``handgrad.nn``, ``handgrad.functional`` and ``handgrad.optim`` also answer every other public name of
torch.nn, torch.nn.functional and torch.optim with torch's own object (handgrad.drop_in), so that a PyTorch
script runs with only its imports swapped. ``handgrad.coverage`` (which gradients a backward computed by
hand; handgrad.coverage_graph) is loaded on first use too. ``handgrad.data`` (the LightningDataModule)
and ``handgrad.lit_module`` (the LightningModule) import Lightning and torchvision, and are imported by name.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"
__all__ = ["coverage", "functional", "models", "nn", "optim"]


def __getattr__(name: str) -> Any:
    if name == "coverage":
        return importlib.import_module("handgrad.coverage_graph").coverage
    if name in __all__:
        return importlib.import_module(f"handgrad.{name}")
    raise AttributeError(f"module 'handgrad' has no attribute {name!r}")
