"""Architectures built from handgrad.nn, or from torch.nn for an autograd twin of the same network.

    MLP([784, 30, 10], activation="sigmoid", output_activation="sigmoid")   # Nielsen, ch. 1
    MLP([784, 30, 10], ..., backend="autograd")                             # its torch.nn twin

Both backends create the same parameters under the same names (``layers.0.weight``,
``layers.0.bias``, ``layers.1.weight``, ...), drawn the same way from the same random
stream, so ``twin.load_state_dict(hand.state_dict())`` works and two networks built after
the same ``torch.manual_seed`` are equal. Activations hold no parameters and live apart
from the ``layers`` list, so a later fused op (say linear + sigmoid in one Function) can
replace how ``forward`` is computed without touching a single ``state_dict`` key.

Reference: Nielsen, "Neural Networks and Deep Learning", ch. 1 (network.py).
"""

from __future__ import annotations

from types import ModuleType

import torch

import handgrad.nn

BACKENDS: dict[str, ModuleType] = {"hand": handgrad.nn, "autograd": torch.nn}

# Activation name -> (class name, shared by handgrad.nn and torch.nn; constructor kwargs).
ACTIVATIONS: dict[str, tuple[str, dict]] = {
    "relu": ("ReLU", {}),
    "leaky_relu": ("LeakyReLU", {}),
    "sigmoid": ("Sigmoid", {}),
    "tanh": ("Tanh", {}),
    "softmax": ("Softmax", {"dim": 1}),
}

INITS = ("torch", "nielsen", "nielsen_scaled")


def _choice(what: str, value: object, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"MLP: unknown {what} {value!r}; choose one of {', '.join(map(repr, allowed))}")


def make_activation(name: str | None, backend: str = "hand") -> torch.nn.Module:
    """The parameter-free activation module called ``name`` from the backend (``None``: identity)."""
    if name is None:
        return torch.nn.Identity()
    class_name, kwargs = ACTIVATIONS[name]
    return getattr(BACKENDS[backend], class_name)(**kwargs)


class MLP(torch.nn.Module):
    """A multilayer perceptron: ``len(sizes) - 1`` fully connected layers.

    x (N, *) is flattened to (N, sizes[0]); each hidden layer computes a = act(a W^T + b),
    the last one out_act(a W^T + b) -> (N, sizes[-1]).

    Args:
        sizes: layer widths, input first, e.g. [784, 30, 10].
        activation: between layers: "relu", "leaky_relu", "sigmoid", "tanh" or "softmax".
        output_activation: after the last layer; None leaves logits (what cross-entropy wants).
        backend: "hand" (handgrad.nn, hand-written backward) or "autograd" (torch.nn).
        init: "torch" (nn.Linear's default: uniform +-1/sqrt(fan_in)), "nielsen" (every weight
            and bias ~ N(0, 1), network.py of Nielsen's ch. 1) or "nielsen_scaled" (weights
            ~ N(0, 1/fan_in), biases ~ N(0, 1), network2.py of his ch. 3, which keeps sigmoid
            units out of saturation at the start).
    """

    def __init__(
        self,
        sizes: list[int],
        activation: str = "relu",
        output_activation: str | None = None,
        backend: str = "hand",
        init: str = "torch",
    ):
        super().__init__()
        if len(sizes) < 2 or any(not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"MLP: sizes={sizes} needs at least two positive widths, input first, e.g. [784, 30, 10]")
        _choice("activation", activation, ACTIVATIONS)
        _choice("output_activation", output_activation, [None, *ACTIVATIONS])
        _choice("backend", backend, BACKENDS)
        _choice("init", init, INITS)
        self.spec = dict(sizes=list(sizes), activation=activation, output_activation=output_activation, init=init)
        self.backend = backend

        Linear = BACKENDS[backend].Linear
        self.layers = torch.nn.ModuleList(Linear(d_in, d_out) for d_in, d_out in zip(sizes[:-1], sizes[1:]))
        self.activation = make_activation(activation, backend)
        self.output_activation = make_activation(output_activation, backend)
        if init != "torch":
            self.reset_parameters_nielsen(scaled=init == "nielsen_scaled")

    @torch.no_grad()
    def reset_parameters_nielsen(self, scaled: bool = False) -> None:
        """Weights ~ N(0, 1) (or N(0, 1/fan_in) if ``scaled``), biases ~ N(0, 1); layer by layer, weight first."""
        for layer in self.layers:
            layer.weight.normal_(0.0, layer.in_features**-0.5 if scaled else 1.0)
            layer.bias.normal_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (N, sizes[0]); a free view for contiguous images (N, 1, 28, 28)
        *hidden, last = self.layers
        for layer in hidden:
            x = self.activation(layer(x))  # (N, d_out)
        return self.output_activation(last(x))  # (N, sizes[-1])

    def twin(self, backend: str = "autograd") -> MLP:
        """The same network with the same weights, built by ``backend`` (default: the torch.nn twin)."""
        other = MLP(**self.spec, backend=backend)
        other.load_state_dict(self.state_dict())
        return other.to(self.layers[0].weight.device)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, init={self.spec['init']!r}"
