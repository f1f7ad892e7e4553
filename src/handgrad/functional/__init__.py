"""Hand-written autograd Functions and their lowercase wrappers.

Every wrapper has the name, signature and semantics of its torch.nn.functional namesake,
and every backward is derived by hand in the Function's docstring.

Every other public name of torch.nn.functional is torch's own function (``handgrad.functional.pad is
torch.nn.functional.pad``), so that ``import handgrad.functional as F`` can replace
``import torch.nn.functional as F`` (handgrad.drop_in). ``HAND_WRITTEN`` lists handgrad's functions.
"""

from typing import TYPE_CHECKING

import torch.nn.functional

from handgrad import drop_in
from handgrad.functional.activations import gelu, leaky_relu, relu, sigmoid, softplus, tanh
from handgrad.functional.attention import scaled_dot_product_attention
from handgrad.functional.avg_pool import avg_pool2d
from handgrad.functional.batch_norm import batch_norm
from handgrad.functional.conv import conv2d
from handgrad.functional.dropout import dropout, dropout1d, dropout2d, dropout3d
from handgrad.functional.embedding import embedding
from handgrad.functional.fused import linear_activation, mlp
from handgrad.functional.gru import gru, gru_cell
from handgrad.functional.layer_norm import layer_norm
from handgrad.functional.linear import linear
from handgrad.functional.losses import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    huber_loss,
    kl_div,
    l1_loss,
    mse_loss,
    nll_loss,
    smooth_l1_loss,
)
from handgrad.functional.lstm import lstm, lstm_cell
from handgrad.functional.max_pool import max_pool2d, max_pool2d_relu
from handgrad.functional.mlp_loss import mlp_loss, mlp_loss_and_grads
from handgrad.functional.rnn import rnn_relu, rnn_relu_cell, rnn_tanh, rnn_tanh_cell
from handgrad.functional.softmax import log_softmax, softmax

__all__ = [
    "avg_pool2d",
    "batch_norm",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "conv2d",
    "cross_entropy",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "huber_loss",
    "kl_div",
    "l1_loss",
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
    "nll_loss",
    "relu",
    "sigmoid",
    "smooth_l1_loss",
    "softmax",
    "softplus",
    "tanh",
    # recurrent layers (rnn.py, lstm.py, gru.py over recurrent.py and recurrent_stack.py)
    "gru",
    "gru_cell",
    "lstm",
    "lstm_cell",
    "rnn_relu",
    "rnn_relu_cell",
    "rnn_tanh",
    "rnn_tanh_cell",
]

__all__ += ["embedding", "gelu", "scaled_dot_product_attention"]

HAND_WRITTEN = frozenset(__all__)  # every other public name of torch.nn.functional is torch's
__all__ += drop_in.from_torch(torch.nn.functional, HAND_WRITTEN)

if not TYPE_CHECKING:
    __getattr__, __dir__ = drop_in.namespace(__name__, torch.nn.functional, HAND_WRITTEN)
else:  # type checkers read torch.nn.functional's other names here; the functions above stay handgrad's
    from torch.nn.functional import *  # type: ignore[assignment]  # noqa: E402, F403
