"""handgrad: neural networks whose gradients are written by hand and proven against autograd."""

from handgrad import functional, nn, optim

__version__ = "0.1.0"
__all__ = ["functional", "nn", "optim"]
