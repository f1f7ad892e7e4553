"""handgrad: neural networks whose gradients are written by hand and proven against autograd.

``handgrad.data`` (the LightningDataModule) and ``handgrad.lit_module`` (the LightningModule)
import Lightning and torchvision, so they are imported by name rather than here.
"""

from handgrad import functional, models, nn, optim
from handgrad.coverage import coverage

__version__ = "0.1.0"
__all__ = ["coverage", "functional", "models", "nn", "optim"]
