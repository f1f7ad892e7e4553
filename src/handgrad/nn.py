"""nn.Module wrappers: drop-in twins of torch.nn.

Each class subclasses its torch.nn namesake, so it has the very same constructor
arguments, parameters (names, shapes, default initialisation), buffers, ``state_dict``
keys and ``repr``. Only ``forward`` differs: it calls the hand-written function from
``handgrad.functional``. A ``state_dict`` therefore moves between a handgrad network
and its torch.nn twin unchanged.
"""

from __future__ import annotations

import torch

import handgrad.functional as F

__all__ = [
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "Conv2d",
    "CrossEntropyLoss",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "LayerNorm",
    "LeakyReLU",
    "Linear",
    "LogSoftmax",
    "MSELoss",
    "MaxPool2d",
    "ReLU",
    "Sigmoid",
    "Softmax",
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


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """Softmax cross-entropy on logits; ``weight``, ``ignore_index`` and ``label_smoothing``
    are not hand-written yet and are refused rather than silently ignored."""

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                 label_smoothing=0.0):
        if weight is not None or ignore_index != -100 or label_smoothing != 0.0:
            raise NotImplementedError(
                "handgrad.nn.CrossEntropyLoss supports reduction only; weight, ignore_index and "
                "label_smoothing are not implemented (use torch.nn.CrossEntropyLoss for those)"
            )
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(input, target, reduction=self.reduction)


# --------------------------------------------------------------------------- convolutional networks and regularisation


class Conv2d(torch.nn.Conv2d):
    """2-D convolution with the hand-written backward of ``handgrad.functional.conv2d``; only
    zero padding is hand-written, so other ``padding_mode`` values are refused."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise NotImplementedError(
                f"handgrad.nn.Conv2d supports padding_mode='zeros' only, got {self.padding_mode!r} "
                "(use torch.nn.Conv2d for reflect, replicate or circular padding)"
            )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class MaxPool2d(torch.nn.MaxPool2d):
    def forward(self, input: torch.Tensor):
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
