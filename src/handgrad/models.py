"""Architectures built from handgrad.nn, or from torch.nn for an autograd twin of the same network.

    MLP([784, 30, 10], activation="sigmoid", output_activation="sigmoid")   # Nielsen, ch. 1
    MLP([784, 30, 10], ..., backend="autograd")                             # its torch.nn twin
    MLP([784, 512, 256, 10], batch_norm=True, dropout=0.2)                  # regularised
    LeNet5()                                                                # LeCun et al. 1998, for 1 x 28 x 28

Both backends create the same parameters and buffers under the same names (``layers.0.weight``,
``layers.0.bias``, ...; ``conv1.weight``, ..., ``fc3.bias`` for LeNet5), drawn the same way from
the same random stream, so ``twin.load_state_dict(hand.state_dict())`` works and two networks
built after the same ``torch.manual_seed`` are equal. Activations, pooling and dropout hold no
parameters and live apart from the layers that do, so a later fused op (say linear + sigmoid in
one Function) can replace how ``forward`` is computed without touching a single ``state_dict``
key. ``net.twin()`` is the same network with the same weights built by the other backend: what
handgrad.callbacks.GradientCheck compares the hand-written gradients with.

References: Nielsen, "Neural Networks and Deep Learning", ch. 1 (network.py); LeCun, Bottou,
Bengio & Haffner, "Gradient-based learning applied to document recognition", Proc. IEEE 86(11),
1998 (LeNet-5); Ioffe & Szegedy 2015 (batch norm); Srivastava et al. 2014 (dropout).
"""

from __future__ import annotations

from collections.abc import Collection
from types import ModuleType
from typing import Any, TypeVar, cast

import torch

import handgrad.functional as F
import handgrad.nn
from handgrad.models_lm import GPT, CharLSTM, generate  # noqa: F401  (the language models, re-exported)

BACKENDS: dict[str, ModuleType] = {"hand": handgrad.nn, "autograd": torch.nn}

# Activation name -> (class name, shared by handgrad.nn and torch.nn; constructor kwargs).
ACTIVATIONS: dict[str, tuple[str, dict]] = {
    "relu": ("ReLU", {}),
    "leaky_relu": ("LeakyReLU", {}),
    "sigmoid": ("Sigmoid", {}),
    "tanh": ("Tanh", {}),
    "softmax": ("Softmax", {"dim": 1}),
}

# Pooling name -> class name, shared by handgrad.nn and torch.nn.
POOLS: dict[str, str] = {"max": "MaxPool2d", "avg": "AvgPool2d"}

INITS = ("torch", "nielsen", "nielsen_scaled")


def _choice(model: str, what: str, value: object, allowed: Collection[object]) -> None:
    if value not in allowed:
        raise ValueError(f"{model}: unknown {what} {value!r}; choose one of {', '.join(map(repr, allowed))}")


def _check_dropout(model: str, p: float) -> None:
    if not 0 <= p < 1:
        raise ValueError(f"{model}: dropout={p} must be in [0, 1): the probability of zeroing a unit (0: off)")


def make_activation(name: str | None, backend: str = "hand") -> torch.nn.Module:
    """The parameter-free activation module called ``name`` from the backend (``None``: identity)."""
    if name is None:
        return torch.nn.Identity()
    class_name, kwargs = ACTIVATIONS[name]
    return getattr(BACKENDS[backend], class_name)(**kwargs)


def make_dropout(p: float, backend: str = "hand") -> torch.nn.Module:
    """The backend's Dropout(p), or the identity for p = 0 (no mask drawn, no random numbers used)."""
    return BACKENDS[backend].Dropout(p) if p > 0 else torch.nn.Identity()


class MLP(torch.nn.Module):
    """A multilayer perceptron: ``len(sizes) - 1`` fully connected layers.

    x (N, *) is flattened to (N, sizes[0]); each hidden layer computes
    a = dropout(act(norm(a W^T + b))), the last one out_act(a W^T + b) -> (N, sizes[-1]).

    Args:
        sizes: layer widths, input first, e.g. [784, 30, 10].
        activation: between layers: "relu", "leaky_relu", "sigmoid", "tanh" or "softmax".
        output_activation: after the last layer; None leaves logits (what cross-entropy wants).
        backend: "hand" (handgrad.nn, hand-written backward) or "autograd" (torch.nn).
        init: "torch" (nn.Linear's default: uniform +-1/sqrt(fan_in)), "nielsen" (every weight
            and bias ~ N(0, 1), network.py of Nielsen's ch. 1) or "nielsen_scaled" (weights
            ~ N(0, 1/fan_in), biases ~ N(0, 1), network2.py of his ch. 3, which keeps sigmoid
            units out of saturation at the start).
        batch_norm: a BatchNorm1d (``norms.{i}``) after each hidden linear layer, before its
            activation; those layers then have no bias (batch norm's beta takes its place: a bias
            would be subtracted again with the batch mean, its gradient exactly zero).
        dropout: after each hidden activation, zero each unit with this probability in
            training (inverted dropout); 0 is off.

    With batch_norm and dropout off the state_dict is ``layers.{i}.weight``, ``layers.{i}.bias``
    only, as it always was.
    """

    def __init__(
        self,
        sizes: list[int],
        activation: str = "relu",
        output_activation: str | None = None,
        backend: str = "hand",
        init: str = "torch",
        batch_norm: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if len(sizes) < 2 or any(not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"MLP: sizes={sizes} needs at least two positive widths, input first, e.g. [784, 30, 10]")
        _choice("MLP", "activation", activation, ACTIVATIONS)
        _choice("MLP", "output_activation", output_activation, [None, *ACTIVATIONS])
        _choice("MLP", "backend", backend, BACKENDS)
        _choice("MLP", "init", init, INITS)
        _check_dropout("MLP", dropout)
        self.spec: dict[str, Any] = dict(sizes=list(sizes), activation=activation, output_activation=output_activation,
                                         init=init, batch_norm=batch_norm, dropout=dropout)
        self.backend = backend

        nn = BACKENDS[backend]
        hidden = sizes[1:-1]
        self.layers = torch.nn.ModuleList(
            nn.Linear(d_in, d_out, bias=not (batch_norm and i < len(hidden)))
            for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)))
        self.norms = torch.nn.ModuleList(nn.BatchNorm1d(d) for d in hidden) if batch_norm else None
        self.activation = make_activation(activation, backend)
        self.dropout = make_dropout(dropout, backend)
        self.output_activation = make_activation(output_activation, backend)
        if init != "torch":
            self.reset_parameters_nielsen(scaled=init == "nielsen_scaled")

    @torch.no_grad()
    def reset_parameters_nielsen(self, scaled: bool = False) -> None:
        """Weights ~ N(0, 1) (or N(0, 1/fan_in) if ``scaled``), biases ~ N(0, 1); layer by layer, weight first."""
        for layer in self.linears:
            layer.weight.normal_(0.0, layer.in_features**-0.5 if scaled else 1.0)
            if layer.bias is not None:
                layer.bias.normal_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (N, sizes[0]); a free view for contiguous images (N, 1, 28, 28)
        *hidden, last = self.layers
        for i, layer in enumerate(hidden):
            z = layer(x)  # (N, d_out)
            if self.norms is not None:
                z = self.norms[i](z)  # (N, d_out)
            x = self.dropout(self.activation(z))  # (N, d_out)
        return self.output_activation(last(x))  # (N, sizes[-1])

    @property
    def linears(self) -> list[torch.nn.Linear]:
        """The fully connected layers, input side first."""
        return cast(list[torch.nn.Linear], list(self.layers))

    def twin(self, backend: str = "autograd") -> MLP:
        """The same network (weights, buffers, dtype, device, train/eval mode) built by ``backend``
        (default: the torch.nn twin)."""
        return _twin(self, MLP(**self.spec, backend=backend))

    def extra_repr(self) -> str:
        options = "".join(f", {k}={self.spec[k]!r}" for k in ("batch_norm", "dropout") if self.spec[k])
        return f"backend={self.backend!r}, init={self.spec['init']!r}{options}"


class LeNet5(torch.nn.Module):
    """LeNet-5 (LeCun et al. 1998) for 1 x 28 x 28 images such as MNIST: two convolution and
    pooling stages, then three fully connected layers.

        x                                               (N, 1, 28, 28)
        conv1   6 maps, 5x5, padding 2  -> [bn1] -> act (N, 6, 28, 28)   C1
        pool    2x2, stride 2                           (N, 6, 14, 14)   S2
        conv2   16 maps, 5x5            -> [bn2] -> act (N, 16, 10, 10)  C3
        pool    2x2, stride 2                           (N, 16, 5, 5)    S4
        flatten                                         (N, 400)
        fc1     400 -> 120              -> [bn3] -> act -> [dropout]  (N, 120)   C5
        fc2     120 -> 84               -> [bn4] -> act -> [dropout]  (N, 84)    F6
        fc3     84 -> 10                                (N, 10)          logits

    The paper feeds 32 x 32 images, MNIST's 28 x 28 digits centred with a border of 2: conv1's
    padding of 2 gives the same 28 x 28 maps. As is usual today, and unlike the paper: C3 sees all
    6 maps (the paper wires each of its 16 maps to a chosen 3 to 6 of them), S2 / S4 pool without
    their trainable coefficient and bias, the activation is ReLU (or plain tanh rather than the
    paper's 1.7159 tanh(2x/3)), and the output is 10 logits for softmax cross-entropy rather than
    the paper's Euclidean RBF units. Parameters: 61,706 (without batch norm).

    Args:
        activation: after each convolution and hidden linear layer: "relu", "leaky_relu",
            "sigmoid" or "tanh" (the paper's choice, in its scaled form).
        pool: "max" or "avg" (the paper's subsampling averages each 2 x 2 block).
        batch_norm: BatchNorm2d after each convolution (bn1, bn2) and BatchNorm1d after fc1 and
            fc2 (bn3, bn4), before the activation; those four layers then have no bias (batch
            norm's beta takes its place).
        dropout: after the activations of fc1 and fc2, zero each unit with this probability in
            training; 0 is off.
        backend: "hand" (handgrad.nn, hand-written backward) or "autograd" (torch.nn).
    """

    input_shape = (1, 28, 28)  # (C, H, W) of one image

    def __init__(
        self,
        activation: str = "relu",
        pool: str = "max",
        batch_norm: bool = False,
        dropout: float = 0.0,
        backend: str = "hand",
    ):
        super().__init__()
        _choice("LeNet5", "activation", activation, [a for a in ACTIVATIONS if a != "softmax"])
        _choice("LeNet5", "pool", pool, POOLS)
        _choice("LeNet5", "backend", backend, BACKENDS)
        _check_dropout("LeNet5", dropout)
        self.spec: dict[str, Any] = dict(activation=activation, pool=pool, batch_norm=batch_norm, dropout=dropout)
        self.backend = backend

        nn, bias = BACKENDS[backend], not batch_norm
        identity = torch.nn.Identity
        # Registered in forward's order, so both backends draw their initial weights alike.
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2, bias=bias)
        self.bn1 = nn.BatchNorm2d(6) if batch_norm else identity()
        self.conv2 = nn.Conv2d(6, 16, 5, bias=bias)
        self.bn2 = nn.BatchNorm2d(16) if batch_norm else identity()
        self.fc1 = nn.Linear(16 * 5 * 5, 120, bias=bias)
        self.bn3 = nn.BatchNorm1d(120) if batch_norm else identity()
        self.fc2 = nn.Linear(120, 84, bias=bias)
        self.bn4 = nn.BatchNorm1d(84) if batch_norm else identity()
        self.fc3 = nn.Linear(84, 10)
        self.activation = make_activation(activation, backend)
        self.pool = getattr(nn, POOLS[pool])(2)
        self.dropout = make_dropout(dropout, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"LeNet5 expects images of shape (N, 1, 28, 28) (MNIST, Fashion-MNIST), got "
                             f"{tuple(x.shape)}; it has 1 input channel and fc1 needs 16 x 5 x 5 features")
        x = self.pool_activation(self.bn1(self.conv1(x)))  # (N, 6, 28, 28) -> (N, 6, 14, 14)
        x = self.pool_activation(self.bn2(self.conv2(x)))  # (N, 16, 10, 10) -> (N, 16, 5, 5)
        x = x.flatten(1)  # (N, 400)
        x = self.dropout(self.activation(self.bn3(self.fc1(x))))  # (N, 120)
        x = self.dropout(self.activation(self.bn4(self.fc2(x))))  # (N, 84)
        return self.fc3(x)  # (N, 10)

    def pool_activation(self, x: torch.Tensor) -> torch.Tensor:
        """pool(activation(x)); for the hand backend's ReLU and max pooling, one Function that pools
        first (F.max_pool2d_relu: ReLU on a quarter of the elements, the same values and gradients)."""
        if self.backend == "hand" and self.spec["activation"] == "relu" and self.spec["pool"] == "max":
            pool = self.pool
            return F.max_pool2d_relu(x, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)
        return self.pool(self.activation(x))

    def twin(self, backend: str = "autograd") -> LeNet5:
        """The same network (weights, buffers, dtype, device, train/eval mode) built by ``backend``
        (default: the torch.nn twin)."""
        return _twin(self, LeNet5(**self.spec, backend=backend))

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, " + ", ".join(f"{k}={v!r}" for k, v in self.spec.items())


Net = TypeVar("Net", bound=torch.nn.Module)


def _twin(net: torch.nn.Module, other: Net) -> Net:
    """``other`` moved to ``net``'s dtype and device, then loaded with its state_dict and set to its mode."""
    other.to(next(net.parameters()))  # first, so float64 weights are copied without a float32 round trip
    other.load_state_dict(net.state_dict())
    return other.train(net.training)
