"""handgrad.nn modules are drop-in twins of torch.nn: same parameters, init and state_dict,
and a whole network built from them gives the same loss and parameter gradients."""

from __future__ import annotations

import pytest
import torch

import handgrad.nn as hnn


def mlp(nn, activation: str, sizes=(20, 16, 12, 5)):
    layers = []
    for d_in, d_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers.append(nn.Linear(d_in, d_out))
        layers.append(getattr(nn, activation)())
    return torch.nn.Sequential(*layers)


ACTIVATIONS = ["Sigmoid", "Tanh", "ReLU", "LeakyReLU"]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_same_default_init_and_state_dict_keys(activation):
    torch.manual_seed(0)
    hand = mlp(hnn, activation)
    torch.manual_seed(0)
    twin = mlp(torch.nn, activation)
    hand_state, twin_state = hand.state_dict(), twin.state_dict()
    assert list(hand_state) == list(twin_state)
    for key in hand_state:
        torch.testing.assert_close(hand_state[key], twin_state[key], rtol=0, atol=0)
    assert repr(hand) == repr(twin)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", ["MSELoss", "CrossEntropyLoss"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mlp_loss_and_every_parameter_gradient_match_torch(activation, loss, dtype):
    hand, twin = mlp(hnn, activation).to(dtype), mlp(torch.nn, activation).to(dtype)
    twin.load_state_dict(hand.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 20, dtype=dtype, generator=g)
    target = (torch.randint(5, (9,), generator=g) if loss == "CrossEntropyLoss"
              else torch.rand(9, 5, dtype=dtype, generator=g))

    hand_loss = getattr(hnn, loss)()(hand(x), target)
    twin_loss = getattr(torch.nn, loss)()(twin(x), target)
    torch.testing.assert_close(hand_loss, twin_loss)
    hand_loss.backward()
    twin_loss.backward()
    for (name, p), (_, q) in zip(hand.named_parameters(), twin.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=lambda m, name=name: f"{name}: {m}")


def test_state_dict_moves_both_ways():
    hand, twin = mlp(hnn, "ReLU"), mlp(torch.nn, "ReLU")
    hand.load_state_dict(twin.state_dict())
    x = torch.randn(3, 20)
    torch.testing.assert_close(hand(x), twin(x))
    twin.load_state_dict(mlp(hnn, "ReLU").state_dict())  # and back from a fresh handgrad net


@pytest.mark.parametrize("module, twin", [
    (hnn.Softmax(dim=1), torch.nn.Softmax(dim=1)),
    (hnn.LogSoftmax(dim=0), torch.nn.LogSoftmax(dim=0)),
    (hnn.LeakyReLU(0.3), torch.nn.LeakyReLU(0.3)),
])
def test_activation_modules_pass_their_arguments(module, twin):
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 6, dtype=torch.float64)
    (module(x) * y).sum().backward()
    grad, x.grad = x.grad, None
    (twin(x) * y).sum().backward()
    torch.testing.assert_close(grad, x.grad)
    assert repr(module) == repr(twin)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_modules_pass_reduction(reduction):
    x = torch.randn(4, 3)
    target = torch.randn(4, 3)
    torch.testing.assert_close(hnn.MSELoss(reduction=reduction)(x, target),
                               torch.nn.MSELoss(reduction=reduction)(x, target))
    labels = torch.tensor([0, 2, 1, 2])
    torch.testing.assert_close(hnn.CrossEntropyLoss(reduction=reduction)(x, labels),
                               torch.nn.CrossEntropyLoss(reduction=reduction)(x, labels))


LOSS_OPTIONS = [  # (class name, constructor arguments, input maker, target maker)
    ("CrossEntropyLoss", dict(weight=torch.tensor([0.5, 2.0, 1.0]), ignore_index=1, label_smoothing=0.1),
     lambda g: torch.randn(4, 3, 2, generator=g), lambda g: torch.randint(3, (4, 2), generator=g)),
    ("CrossEntropyLoss", dict(size_average=False), lambda g: torch.randn(4, 3, generator=g),
     lambda g: torch.randn(4, 3, generator=g).softmax(1)),
    ("NLLLoss", dict(weight=torch.tensor([0.5, 2.0, 1.0]), ignore_index=0, reduce=False),
     lambda g: torch.randn(4, 3, generator=g).log_softmax(1), lambda g: torch.randint(3, (4,), generator=g)),
    ("BCELoss", dict(weight=torch.tensor([0.5, 2.0, 1.0]), reduction="sum"),
     lambda g: torch.rand(4, 3, generator=g), lambda g: torch.rand(4, 3, generator=g)),
    ("BCEWithLogitsLoss", dict(weight=torch.tensor([0.5, 2.0, 1.0]), pos_weight=torch.tensor([3.0, 1.0, 0.5])),
     lambda g: torch.randn(4, 3, generator=g), lambda g: torch.rand(4, 3, generator=g)),
    ("L1Loss", dict(reduction="none"), lambda g: torch.randn(4, 3, generator=g),
     lambda g: torch.randn(4, 3, generator=g)),
    ("SmoothL1Loss", dict(beta=0.3, reduction="sum"), lambda g: torch.randn(4, 3, generator=g),
     lambda g: torch.randn(4, 3, generator=g)),
    ("HuberLoss", dict(delta=0.4), lambda g: torch.randn(4, 3, generator=g), lambda g: torch.randn(4, 3, generator=g)),
    ("KLDivLoss", dict(reduction="batchmean", log_target=True), lambda g: torch.randn(4, 3, generator=g).log_softmax(1),
     lambda g: torch.randn(4, 3, generator=g).log_softmax(1)),
    ("MSELoss", dict(size_average=False, reduce=True), lambda g: torch.randn(4, 3, generator=g),
     lambda g: torch.randn(4, 3, generator=g)),
]


@pytest.mark.filterwarnings("ignore:size_average and reduce args will be deprecated")
@pytest.mark.parametrize("name, arguments, make_input, make_target", LOSS_OPTIONS, ids=[o[0] for o in LOSS_OPTIONS])
def test_loss_modules_pass_every_option(name, arguments, make_input, make_target):
    hand, twin = getattr(hnn, name)(**arguments), getattr(torch.nn, name)(**arguments)
    assert repr(hand) == repr(twin) and list(hand.state_dict()) == list(twin.state_dict())
    g = torch.Generator().manual_seed(0)
    x, target = make_input(g).requires_grad_(), make_target(g)
    outputs = []
    for module in (hand, twin):
        loss = module(x, target)
        outputs.append((loss, torch.autograd.grad(loss.sum(), x)[0]))
    torch.testing.assert_close(outputs[0], outputs[1])


def test_linear_module_shape_error_names_the_layer_size():
    with pytest.raises(ValueError, match=r"expects 20.*in_features=7"):
        hnn.Linear(20, 4)(torch.randn(3, 7))
