"""nn.Module wrappers: drop-in twins of torch.nn.

Each class subclasses its torch.nn namesake, so it has the very same constructor
arguments, parameters (names, shapes, default initialisation), buffers, ``state_dict``
keys and ``repr``. Only ``forward`` differs: it calls the hand-written function from
``handgrad.functional``. A ``state_dict`` therefore moves between a handgrad network
and its torch.nn twin unchanged.

Every other public name of torch.nn is torch's own object (``handgrad.nn.Module is torch.nn.Module``, ``init``,
``utils``, ``Parameter``, ``Sequential``), and ``handgrad.nn.functional`` is ``handgrad.functional``, so that
``import handgrad.nn as nn`` can replace ``import torch.nn as nn`` (handgrad.drop_in). ``HAND_WRITTEN``
lists the names defined here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

import handgrad.functional as F
from handgrad import drop_in
from handgrad.functional.padding import pad2d

__all__ = [
    "AvgPool2d",
    "BCELoss",
    "BCEWithLogitsLoss",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "Conv2d",
    "CrossEntropyLoss",
    "Dropout",
    "GRU",
    "GRUCell",
    "LSTM",
    "LSTMCell",
    "HuberLoss",
    "KLDivLoss",
    "L1Loss",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "LayerNorm",
    "LeakyReLU",
    "Linear",
    "LogSoftmax",
    "MSELoss",
    "MaxPool2d",
    "RNN",
    "RNNCell",
    "NLLLoss",
    "ReLU",
    "Sigmoid",
    "SmoothL1Loss",
    "Softmax",
    "Softplus",
    "Tanh",
]

# --------------------------------------------------------------------------- layers with weights


class Linear(torch.nn.Linear):
    """y = x W^T + b with the hand-written backward of ``handgrad.functional.linear``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.weight, self.bias)


# --------------------------------------------------------------------------- activations


class Sigmoid(torch.nn.Sigmoid):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.sigmoid(input)


class Tanh(torch.nn.Tanh):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.tanh(input)


class Softplus(torch.nn.Softplus):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.softplus(input, self.beta, self.threshold)


class ReLU(torch.nn.ReLU):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.relu(input)


class LeakyReLU(torch.nn.LeakyReLU):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(input, self.negative_slope)


class Softmax(torch.nn.Softmax):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.softmax(input, self.dim)


class LogSoftmax(torch.nn.LogSoftmax):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(input, self.dim)


# --------------------------------------------------------------------------- losses


class MSELoss(torch.nn.MSELoss):
    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(input, target, reduction=self.reduction)


class L1Loss(torch.nn.L1Loss):
    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(input, target, reduction=self.reduction)


class SmoothL1Loss(torch.nn.SmoothL1Loss):
    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class HuberLoss(torch.nn.HuberLoss):
    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.huber_loss(input, target, reduction=self.reduction, delta=self.delta)


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """Softmax cross-entropy on logits, with every option of torch's (weight, ignore_index, label_smoothing,
    class-index or class-probability targets, K-dimensional inputs)."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)


class NLLLoss(torch.nn.NLLLoss):
    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index, reduction=self.reduction)


class BCELoss(torch.nn.BCELoss):
    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(torch.nn.BCEWithLogitsLoss):
    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(input, target, self.weight, pos_weight=self.pos_weight,
                                                  reduction=self.reduction)


class KLDivLoss(torch.nn.KLDivLoss):
    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.kl_div(input, target, reduction=self.reduction, log_target=self.log_target)


# --------------------------------------------------------------------------- convolutional networks and regularisation


class Conv2d(torch.nn.Conv2d):
    """2-D convolution with the hand-written backward of ``handgrad.functional.conv2d``. A padding_mode
    other than 'zeros' pads first, as torch.nn.Conv2d does ('reflect', 'replicate', 'circular': the
    hand-written Pad2d of handgrad.functional.padding), then convolves without padding."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            padded = pad2d(input, tuple(self._reversed_padding_repeated_twice), self.padding_mode)
            return F.conv2d(padded, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class MaxPool2d(torch.nn.MaxPool2d):
    def forward(self, input: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool2d(torch.nn.AvgPool2d):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)


class Dropout(torch.nn.Dropout):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout(input, self.p, self.training)


class Dropout1d(torch.nn.Dropout1d):
    """Drops whole channels of an (N, C, L) or (C, L) input with ``handgrad.functional.dropout1d``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout1d(input, self.p, self.training)


class Dropout2d(torch.nn.Dropout2d):
    """Drops whole channels of an (N, C, H, W) input with ``handgrad.functional.dropout2d``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout2d(input, self.p, self.training)


class Dropout3d(torch.nn.Dropout3d):
    """Drops whole channels of an (N, C, D, H, W) or (C, D, H, W) input with ``handgrad.functional.dropout3d``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout3d(input, self.p, self.training)


class _BatchNormForward(torch.nn.modules.batchnorm._BatchNorm):
    """torch.nn.modules.batchnorm._BatchNorm.forward, calling the hand-written batch_norm.

    In training with tracked statistics, num_batches_tracked counts the batches, and momentum=None
    averages the running statistics over all of them (factor 1 / num_batches_tracked). Batch
    statistics normalise in training, and in evaluation when no running statistics are kept. An
    empty batch in training counts as a batch but leaves the running statistics as they are, as in torch.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        pass_buffers = not self.training or self.track_running_stats  # only to use them or to update them
        return F.batch_norm(input, self.running_mean if pass_buffers else None,
                            self.running_var if pass_buffers else None,
                            self.weight, self.bias, use_batch_stats, factor, self.eps)


class BatchNorm1d(_BatchNormForward, torch.nn.BatchNorm1d):
    """Batch norm over (N, C) or (N, C, L) with the hand-written backward of ``handgrad.functional.batch_norm``."""


class BatchNorm2d(_BatchNormForward, torch.nn.BatchNorm2d):
    """Batch norm over (N, C, H, W) with the hand-written backward of ``handgrad.functional.batch_norm``."""


class BatchNorm3d(_BatchNormForward, torch.nn.BatchNorm3d):
    """Batch norm over (N, C, D, H, W) with the hand-written backward of ``handgrad.functional.batch_norm``."""


class LayerNorm(torch.nn.LayerNorm):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


# --------------------------------------------------------------------------- sequence layers


class Embedding(torch.nn.Embedding):
    """A lookup table with the hand-written scatter-add backward of ``handgrad.functional.embedding``; every
    option of torch's (padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse) and ``from_pretrained``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)


class GELU(torch.nn.GELU):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.gelu(input, approximate=self.approximate)


__all__ += ["Embedding", "GELU"]


# --------------------------------------------------------------------------- recurrent layers


def _sequence_arguments(module: torch.nn.RNNBase, input: torch.Tensor, hx: Any,
                        states: int) -> tuple[torch.Tensor, ...]:
    """torch.nn.RNNBase's forward up to its kernel call: the same checks and messages (its own
    check_forward_args), zero initial states when none are given. Returns the states as a tuple, in the
    input's own batched or unbatched form (handgrad's functions take unbatched input as it is)."""
    name = type(module).__name__
    if isinstance(input, torch.nn.utils.rnn.PackedSequence):
        raise NotImplementedError(
            f"handgrad.nn.{name}: PackedSequence input is not hand-written; pass the padded batch "
            "(torch.nn.utils.rnn.pad_packed_sequence(packed)) and mask the steps past each sequence's length "
            f"(h_n then comes from the padded steps), or use torch.nn.{name} for packed sequences")
    if input.dim() not in (2, 3):
        raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
    module._update_flat_weights()
    batched = input.dim() == 3
    batch = input.shape[0 if module.batch_first else 1] if batched else 1
    layers = module.num_layers * (2 if module.bidirectional else 1)
    if hx is None:
        sizes = [module.proj_size or module.hidden_size, module.hidden_size][:states]
        hx = tuple(torch.zeros(layers, *((batch,) if batched else ()), size, dtype=input.dtype, device=input.device)
                   for size in sizes)
    else:
        hx = tuple(hx) if states == 2 else (hx,)
        if any(h.dim() != input.dim() for h in hx):
            got = ", ".join(f"{h.dim()}-D" for h in hx)
            raise RuntimeError(f"For {'batched 3-D' if batched else 'unbatched 2-D'} input, hx should also be "
                               f"{input.dim()}-D but got ({got}) tensor(s); pass states of shape "
                               f"({layers}, {'N, ' if batched else ''}hidden)")
    batched_hx = hx if batched else tuple(h.unsqueeze(1) for h in hx)
    hidden: Any = batched_hx if states == 2 else batched_hx[0]  # LSTM's check takes (h, c), the others h
    module.check_forward_args(input if batched else input.unsqueeze(1 - module.batch_first), hidden, None)
    return hx


class RNN(torch.nn.RNN):
    """Elman RNN (tanh or relu) with the hand-written backward through time of
    ``handgrad.functional.rnn_tanh`` / ``rnn_relu``; torch.nn.RNN's parameters, options and outputs
    (output, h_n). PackedSequence input is refused."""

    def forward(self, input: torch.Tensor,  # type: ignore[override]  # torch's overloads take a PackedSequence too
                hx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        (hx,) = _sequence_arguments(self, input, hx, states=1)
        function = F.rnn_tanh if self.nonlinearity == "tanh" else F.rnn_relu
        return function(input, hx, self._flat_weights, self.bias, self.num_layers, self.dropout, self.training,
                        self.bidirectional, self.batch_first)


class LSTM(torch.nn.LSTM):
    """LSTM (with proj_size too) with the hand-written backward through time of
    ``handgrad.functional.lstm``; torch.nn.LSTM's parameters, options and outputs
    (output, (h_n, c_n)). PackedSequence input is refused."""

    def forward(self, input: torch.Tensor,  # type: ignore[override]  # torch's overloads take a PackedSequence too
                hx: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        states = _sequence_arguments(self, input, hx, states=2)
        output, h_n, c_n = F.lstm(input, states, self._flat_weights, self.bias, self.num_layers, self.dropout,
                                  self.training, self.bidirectional, self.batch_first)
        return output, (h_n, c_n)


class GRU(torch.nn.GRU):
    """GRU in torch's form with the hand-written backward through time of ``handgrad.functional.gru``;
    torch.nn.GRU's parameters, options and outputs (output, h_n). PackedSequence input is refused."""

    def forward(self, input: torch.Tensor,  # type: ignore[override]  # torch's overloads take a PackedSequence too
                hx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        (hx,) = _sequence_arguments(self, input, hx, states=1)
        return F.gru(input, hx, self._flat_weights, self.bias, self.num_layers, self.dropout, self.training,
                     self.bidirectional, self.batch_first)


def _cell_arguments(module: torch.nn.modules.rnn.RNNCellBase, input: torch.Tensor, hx: Any,
                    states: int) -> tuple[torch.Tensor, ...]:
    """torch.nn's cells' forward up to the kernel call: the same checks and messages, zero states by default."""
    name = type(module).__name__
    if input.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    if hx is None:
        zeros = torch.zeros(*input.shape[:-1], module.hidden_size, dtype=input.dtype, device=input.device)
        return (zeros,) * states
    hx = tuple(hx) if states == 2 else (hx,)
    for idx, value in enumerate(hx):
        if value.dim() not in (1, 2):
            what = f"hx[{idx}]" if states == 2 else "hidden"
            raise ValueError(f"{name}: Expected {what} to be 1D or 2D, got {value.dim()}D instead")
    return hx


class RNNCell(torch.nn.RNNCell):
    """One Elman RNN step, h' = tanh or relu of (x W_ih^T + b_ih + h W_hh^T + b_hh), with the hand-written
    backward of ``handgrad.functional.rnn_tanh_cell`` / ``rnn_relu_cell``."""

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        (hx,) = _cell_arguments(self, input, hx, states=1)
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}; use 'tanh' or 'relu'")
        function = F.rnn_tanh_cell if self.nonlinearity == "tanh" else F.rnn_relu_cell
        return function(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class LSTMCell(torch.nn.LSTMCell):
    """One LSTM step, (h', c'), with the hand-written backward of ``handgrad.functional.lstm_cell``."""

    def forward(self, input: torch.Tensor,
                hx: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        states = _cell_arguments(self, input, hx, states=2)
        return F.lstm_cell(input, states, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class GRUCell(torch.nn.GRUCell):
    """One GRU step, h', with the hand-written backward of ``handgrad.functional.gru_cell``."""

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        (hx,) = _cell_arguments(self, input, hx, states=1)
        return F.gru_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


# --------------------------------------------------------------------------- every other name of torch.nn

functional = F  # torch.nn.functional's place: handgrad.nn.functional is handgrad.functional
__all__ += ["functional"]

HAND_WRITTEN = frozenset(__all__)  # the names defined here; every other public name of torch.nn is torch's
__all__ += drop_in.from_torch(torch.nn, HAND_WRITTEN)
drop_in.register_submodules(__name__, torch.nn, {"functional": F})

if not TYPE_CHECKING:
    __getattr__, __dir__ = drop_in.namespace(__name__, torch.nn, HAND_WRITTEN)
else:  # type checkers read torch.nn's other names here; the classes above stay handgrad's
    from torch.nn import *  # type: ignore[assignment, no-redef]  # noqa: E402, F403
