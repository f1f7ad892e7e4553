"""Hand-written autograd Functions and their lowercase wrappers.

Every wrapper has the name, signature and semantics of its torch.nn.functional namesake,
and every backward is derived by hand in the Function's docstring.
"""

from handgrad.functional.activations import leaky_relu, log_softmax, relu, sigmoid, softmax, tanh
from handgrad.functional.linear import linear
from handgrad.functional.losses import cross_entropy, mse_loss

__all__ = [
    "cross_entropy",
    "leaky_relu",
    "linear",
    "log_softmax",
    "mse_loss",
    "relu",
    "sigmoid",
    "softmax",
    "tanh",
]
