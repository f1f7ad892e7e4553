"""handgrad.models: the hand-written MLP against its torch.nn twin (same keys, outputs and gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as torch_F

import handgrad.nn
from handgrad.models import ACTIVATIONS, MLP

SHAPES = [[784, 30, 10], [2, 16, 16, 3], [5, 4]]


@pytest.mark.parametrize("sizes", SHAPES, ids=str)
def test_both_backends_have_the_same_state_dict_keys_and_shapes(sizes):
    hand, twin = MLP(sizes), MLP(sizes, backend="autograd")
    assert {k: v.shape for k, v in hand.state_dict().items()} == {k: v.shape for k, v in twin.state_dict().items()}
    assert list(hand.state_dict()) == [f"layers.{i}.{p}" for i in range(len(sizes) - 1) for p in ("weight", "bias")]
    twin.load_state_dict(hand.state_dict())  # strict: every key matches


def test_same_seed_builds_the_same_network_in_both_backends():
    torch.manual_seed(0)
    hand = MLP([784, 30, 10], init="nielsen")
    torch.manual_seed(0)
    twin = MLP([784, 30, 10], init="nielsen", backend="autograd")
    for (name, p), q in zip(hand.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), name


def test_hand_backend_is_built_from_handgrad_nn():
    model = MLP([4, 3, 2], activation="tanh", output_activation="softmax")
    assert all(isinstance(layer, handgrad.nn.Linear) for layer in model.layers)
    assert isinstance(model.activation, handgrad.nn.Tanh) and isinstance(model.output_activation, handgrad.nn.Softmax)
    assert not any(isinstance(m, handgrad.nn.Linear) for m in model.twin().modules())


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("output_activation", [None, "sigmoid", "softmax"])
def test_outputs_and_every_gradient_match_the_twin(activation, output_activation):
    torch.manual_seed(0)
    hand = MLP([12, 9, 7, 4], activation, output_activation).double()
    twin = hand.twin().double()
    x = torch.randn(6, 1, 3, 4, dtype=torch.float64)  # images are flattened: (6, 1, 3, 4) -> (6, 12)
    target = torch.randn(6, 4, dtype=torch.float64)
    outputs = []
    for model in (hand, twin):
        output = model(x)
        torch_F.mse_loss(output, target).backward()
        outputs.append(output)
    torch.testing.assert_close(outputs[0], outputs[1])
    for (name, p), q in zip(hand.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=lambda m, name=name: f"gradient of {name}: {m}")


def test_nielsen_init_draws_weights_and_biases_from_a_standard_normal():
    torch.manual_seed(0)
    model = MLP([784, 100, 10], init="nielsen")
    values = torch.cat([p.flatten() for p in model.parameters()])
    assert abs(values.mean()) < 0.02 and abs(values.std() - 1) < 0.02
    torch_default = MLP([784, 100, 10]).layers[0].weight
    assert torch_default.abs().max() <= 1 / 784**0.5  # nn.Linear's uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))


@pytest.mark.parametrize("kwargs, message", [
    (dict(sizes=[784, 10], activation="relux"), "unknown activation 'relux'; choose one of 'relu'"),
    (dict(sizes=[784, 10], output_activation="softplus"), "unknown output_activation 'softplus'"),
    (dict(sizes=[784, 10], backend="jax"), "unknown backend 'jax'; choose one of 'hand', 'autograd'"),
    (dict(sizes=[784, 10], init="xavier"), "unknown init 'xavier'; choose one of 'torch', 'nielsen'"),
    (dict(sizes=[784]), r"needs at least two positive widths"),
    (dict(sizes=[784, 0, 10]), r"needs at least two positive widths"),
])
def test_bad_arguments_are_refused_with_the_choices(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MLP(**kwargs)
