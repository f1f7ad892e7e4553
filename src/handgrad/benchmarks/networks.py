"""The networks the step-time benchmark runs: each benchmarked network in every backend, from the same weights.

    autograd        torch.nn layers, torch.nn.functional loss, torch.optim.SGD
    hand            handgrad.nn layers, one Function per op (Linear, Sigmoid, ...), handgrad.optim.SGD
    fused_layers    one Function per layer: linear + activation (functional.fused.linear_activation)
    fused_mlp       one Function for the whole network (functional.fused.mlp), Nielsen's backprop
    fused_mlp_loss  one Function for the network and its loss (functional.mlp_loss.mlp_loss)
    no_autograd     the same hand-written forward and backward called directly, no graph at all
                    (functional.mlp_loss.mlp_loss_and_grads): .grad is set, then the SGD step (fp32 only)
    fused_step      what Classifier trains an MLP with (its fused path): no_autograd's gradients, and
                    SGD's update in foreach ops (steps.sgd_update), no .grad (fp32 only)

Every backend of a row is built from one state_dict, so their first steps can be checked equal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as torch_F

import handgrad.functional as F
import handgrad.nn as hnn
from handgrad.functional.fused import linear_activation, mlp
from handgrad.functional.mlp_loss import mlp_loss, mlp_loss_and_grads
from handgrad.optim import SGD
from handgrad.steps import sgd_update

BACKENDS = ("autograd", "hand", "fused_layers", "fused_mlp", "fused_mlp_loss", "no_autograd", "fused_step")


@dataclass(frozen=True)
class Row:
    """One network, loss and batch size, as benchmarked."""

    name: str
    sizes: tuple[int, ...]
    activation: str
    output_activation: str | None  # None: logits
    loss: str  # "mse" (on one-hot targets) or "cross_entropy" (on class indices)
    batch: int


ROWS = [
    Row("nielsen_ch1 784-30-10 sigmoid, mse", (784, 30, 10), "sigmoid", "sigmoid", "mse", 10),
    Row("784-256-256-10 relu, cross-entropy", (784, 256, 256, 10), "relu", None, "cross_entropy", 128),
    Row("784-256-256-10 relu, cross-entropy", (784, 256, 256, 10), "relu", None, "cross_entropy", 1024),
]

TORCH_ACTIVATIONS = {"sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh, "relu": torch.nn.ReLU,
                     "leaky_relu": torch.nn.LeakyReLU}
HAND_ACTIVATIONS = {"sigmoid": hnn.Sigmoid, "tanh": hnn.Tanh, "relu": hnn.ReLU, "leaky_relu": hnn.LeakyReLU}


def sequential(sizes, activation, output_activation, linear=torch.nn.Linear, activations=TORCH_ACTIVATIONS):
    """nn.Sequential(Linear, act, Linear, act, ..., Linear[, out_act]): keys '0.weight', '0.bias', '2.weight', ..."""
    layers = []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        f = output_activation if i == len(sizes) - 2 else activation
        layers += [linear(d_in, d_out)] + ([activations[f]()] if f is not None else [])
    return layers


class FusedMLP(torch.nn.Sequential):
    """The plain nn.Sequential of Linear and activation layers, computed as ONE hand-written Function.

    Same modules, parameters, ``state_dict`` keys ('0.weight', '0.bias', '2.weight', ...) and
    repr as ``torch.nn.Sequential(Linear, Sigmoid, Linear, Sigmoid)``; only ``forward`` differs:
    it hands every weight and bias to ``handgrad.functional.fused.mlp``. ``loss`` goes one
    step further and folds the cost into the same Function (``mlp_loss.mlp_loss``).
    """

    def __init__(self, sizes, activation="relu", output_activation=None):
        super().__init__(*sequential(sizes, activation, output_activation))
        self.activation, self.output_activation = activation, output_activation
        self.linears = [m for m in self if isinstance(m, torch.nn.Linear)]  # a plain list: registered once, above

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return mlp(input, [m.weight for m in self.linears], [m.bias for m in self.linears], self.activation,
                   self.output_activation)

    def loss(self, input: torch.Tensor, target: torch.Tensor, loss: str = "cross_entropy",
             reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, output): loss(self(input), target) and the output, from one Function (no node for the loss)."""
        return mlp_loss(input, target, [m.weight for m in self.linears], [m.bias for m in self.linears],
                        self.activation, self.output_activation, loss, reduction)

    def loss_and_grads(self, input: torch.Tensor, target: torch.Tensor, loss: str = "cross_entropy",
                       reduction: str = "mean") -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """(loss, gradients in the order of self.parameters()), without autograd (``mlp_loss.mlp_loss_and_grads``)."""
        value, _, grads = mlp_loss_and_grads(input, target, [m.weight for m in self.linears],
                                             [m.bias for m in self.linears], self.activation,
                                             self.output_activation, loss, reduction)
        return value, grads


class FusedLayersMLP(FusedMLP):
    """The same network with one Function per layer (linear + activation) instead of one in all."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.linears):
            f = self.output_activation if i == len(self.linears) - 1 else self.activation
            input = linear_activation(input, layer.weight, layer.bias, f)
        return input


@dataclass
class Network:
    model: torch.nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, target) -> the batch's loss
    optimizer: torch.optim.Optimizer
    # (x, target) -> (loss, gradients of model.parameters()) without autograd; then loss is unused
    loss_and_grads: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, list]] | None = None
    # grads -> None: the update with those gradients (None: set .grad and call optimizer.step())
    update: Callable[[list[torch.Tensor]], None] | None = None


def build(row: Row, backend: str, state_dict: dict, device: torch.device, lr: float = 0.01) -> Network:
    """``row``'s network from ``backend``, loaded with ``state_dict`` (so every backend starts equal)."""
    args = (row.sizes, row.activation, row.output_activation)
    if backend == "autograd":
        twin = torch.nn.Sequential(*sequential(*args))
        twin.load_state_dict(state_dict)
        twin.to(device)
        torch_loss = torch_F.mse_loss if row.loss == "mse" else torch_F.cross_entropy
        return Network(twin, lambda x, t: torch_loss(twin(x), t), torch.optim.SGD(twin.parameters(), lr=lr))
    model: torch.nn.Module
    if backend == "hand":
        model = torch.nn.Sequential(*sequential(*args, linear=hnn.Linear, activations=HAND_ACTIVATIONS))
    else:
        model = fused = FusedLayersMLP(*args) if backend == "fused_layers" else FusedMLP(*args)
    model.load_state_dict(state_dict)
    model.to(device)
    if backend == "fused_mlp_loss":
        return Network(model, lambda x, t: fused.loss(x, t, row.loss)[0], SGD(model.parameters(), lr=lr))
    if backend in ("no_autograd", "fused_step"):
        optimizer = SGD(model.parameters(), lr=lr)
        return Network(model, lambda x, t: fused.loss(x, t, row.loss)[0], optimizer,
                       loss_and_grads=lambda x, t: fused.loss_and_grads(x, t, row.loss),
                       update=sgd_update(optimizer, list(model.parameters())) if backend == "fused_step" else None)
    hand_loss = F.mse_loss if row.loss == "mse" else F.cross_entropy
    return Network(model, lambda x, t: hand_loss(model(x), t), SGD(model.parameters(), lr=lr))


def make_batch(row: Row, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(row.batch, row.sizes[0], generator=g)  # pixel-like values in [0, 1)
    labels = torch.randint(row.sizes[-1], (row.batch,), generator=g)
    target = torch_F.one_hot(labels, row.sizes[-1]).float() if row.loss == "mse" else labels
    return x.to(device), target.to(device)


def lenet_networks(device: torch.device, batch_norm: bool = False) -> dict[str, Network] | str:
    """A LeNet-5 row's backends, or the reason it is skipped."""
    import handgrad.models

    LeNet5 = getattr(handgrad.models, "LeNet5", None)
    if LeNet5 is None:
        return "handgrad.models.LeNet5 does not exist yet"
    try:  # the convention of handgrad.models.MLP: backend="hand" | "autograd", same state_dict keys
        hand = LeNet5(batch_norm=batch_norm, backend="hand")
        twin = LeNet5(batch_norm=batch_norm, backend="autograd")
        twin.load_state_dict(hand.state_dict())
    except (TypeError, ValueError, RuntimeError) as error:
        return f"handgrad.models.LeNet5 could not be built as LeNet5(backend=...): {error}"
    twin, hand = twin.to(device), hand.to(device)
    return {"autograd": Network(twin, lambda x, t: torch_F.cross_entropy(twin(x), t),
                                torch.optim.SGD(twin.parameters(), lr=0.01)),
            "hand": Network(hand, lambda x, t: F.cross_entropy(hand(x), t), SGD(hand.parameters(), lr=0.01))}
