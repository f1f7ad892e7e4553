"""Hand-written autograd Functions and their lowercase wrappers.

Every wrapper has the name, signature and semantics of its torch.nn.functional namesake,
and every backward is derived by hand in the Function's docstring.
"""

from handgrad.functional.activations import leaky_relu, relu, sigmoid, tanh
from handgrad.functional.batch_norm import batch_norm
from handgrad.functional.conv import conv2d
from handgrad.functional.dropout import dropout, dropout1d, dropout2d, dropout3d
from handgrad.functional.fused import linear_activation, mlp
from handgrad.functional.layer_norm import layer_norm
from handgrad.functional.linear import linear
from handgrad.functional.losses import cross_entropy, mse_loss
from handgrad.functional.mlp_loss import mlp_loss, mlp_loss_and_grads
from handgrad.functional.pooling import avg_pool2d, max_pool2d, max_pool2d_relu
from handgrad.functional.softmax import log_softmax, softmax

__all__ = [
    "avg_pool2d",
    "batch_norm",
    "conv2d",
    "cross_entropy",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "layer_norm",
    "leaky_relu",
    "linear",
    "linear_activation",
    "mlp",
    "mlp_loss",
    "mlp_loss_and_grads",
    "log_softmax",
    "max_pool2d",
    "max_pool2d_relu",
    "mse_loss",
    "relu",
    "sigmoid",
    "softmax",
    "tanh",
]
