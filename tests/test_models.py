"""handgrad.models: the hand-written MLP and LeNet-5 against their torch.nn twins (same keys, outputs,
gradients, and parameters and buffers after SGD steps with batch norm and dropout)."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
import torch.nn.functional as torch_F

import handgrad.functional as F
import handgrad.nn
from handgrad.callbacks import GradientCheck, GradientMismatchWarning
from handgrad.data import DataModule
from handgrad.lit_module import Classifier
from handgrad.models import ACTIVATIONS, MLP, LeNet5
from handgrad.optim import SGD

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
    for (name, p), q in zip(hand.named_parameters(), twin.parameters(), strict=True):
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
    for (name, p), q in zip(hand.named_parameters(), twin.parameters(), strict=True):
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


# --------------------------------------------------------------------------- MLP and LeNet-5 train like their twins

# (network, input shape of one batch): each trained a few SGD steps beside its torch.nn twin.
NETWORKS = [
    (lambda: MLP([12, 9, 7, 4], batch_norm=True), (8, 1, 3, 4)),
    (lambda: MLP([12, 9, 7, 4], dropout=0.3), (8, 12)),
    (lambda: MLP([12, 9, 7, 4], activation="tanh", batch_norm=True, dropout=0.5, init="nielsen_scaled"), (8, 12)),
    (lambda: LeNet5(), (6, 1, 28, 28)),
    (lambda: LeNet5(batch_norm=True, dropout=0.3), (6, 1, 28, 28)),
    (lambda: LeNet5(activation="tanh", pool="avg", batch_norm=True), (6, 1, 28, 28)),
]
NETWORK_IDS = ["mlp-bn", "mlp-dropout", "mlp-bn-dropout-tanh", "lenet5", "lenet5-bn-dropout", "lenet5-tanh-avg-bn"]


def train_steps(net: torch.nn.Module, cost, batches, lr: float = 0.05) -> tuple[list, list]:
    """SGD steps (handgrad.optim.SGD, momentum and weight decay) in train mode, dropout seeded per step.

    Returns each step's loss and parameter gradients {name: grad}."""
    optimizer = SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)
    net.train()
    losses, grads = [], []
    for step, (x, y) in enumerate(batches):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(100 + step)  # the same dropout masks for both twins
            loss = cost(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        grads.append({name: p.grad.clone() for name, p in net.named_parameters()})
    return losses, grads


@pytest.mark.parametrize("build, shape", NETWORKS, ids=NETWORK_IDS)
def test_trains_like_its_twin_parameters_and_buffers(build, shape):
    torch.manual_seed(0)
    hand = build().double()
    twin = hand.twin()
    initial = {name: p.detach().clone() for name, p in hand.named_parameters()}
    assert twin.backend == "autograd" and next(twin.parameters()).dtype == torch.float64
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(shape, dtype=torch.float64, generator=g), torch.randint(4, (shape[0],), generator=g))
               for _ in range(4)]
    hand_losses, hand_grads = train_steps(hand, F.cross_entropy, batches)
    twin_losses, twin_grads = train_steps(twin, torch_F.cross_entropy, batches)

    torch.testing.assert_close(torch.stack(hand_losses), torch.stack(twin_losses))
    for step, (g_hand, g_twin) in enumerate(zip(hand_grads, twin_grads, strict=True)):
        assert g_hand.keys() == g_twin.keys()
        for name in g_twin:
            torch.testing.assert_close(g_hand[name], g_twin[name],
                                       msg=lambda m, n=name, s=step: f"step {s}, grad {n}: {m}")
    hand_state, twin_state = hand.state_dict(), twin.state_dict()
    assert list(hand_state) == list(twin_state)
    assert not any(torch.equal(hand_state[name], p) for name, p in initial.items())  # every parameter moved
    for name, value in twin_state.items():  # parameters, running statistics and num_batches_tracked
        torch.testing.assert_close(hand_state[name], value, msg=lambda m, n=name: f"after training, {n}: {m}")
    if hand.spec["batch_norm"]:
        assert all(v.item() == len(batches) for k, v in hand_state.items() if k.endswith("num_batches_tracked"))
    hand.eval(), twin.eval()  # evaluation uses the running statistics and no dropout
    x = batches[0][0]
    torch.testing.assert_close(hand(x), twin(x))


def test_same_seed_builds_the_same_lenet5_in_both_backends():
    torch.manual_seed(0)
    hand = LeNet5(batch_norm=True)
    torch.manual_seed(0)
    twin = LeNet5(batch_norm=True, backend="autograd")
    assert list(hand.state_dict()) == list(twin.state_dict())
    for (name, p), q in zip(hand.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_lenet5_architecture():
    net = LeNet5()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {
        "conv1.weight": (6, 1, 5, 5), "conv1.bias": (6,), "conv2.weight": (16, 6, 5, 5), "conv2.bias": (16,),
        "fc1.weight": (120, 400), "fc1.bias": (120,), "fc2.weight": (84, 120), "fc2.bias": (84,),
        "fc3.weight": (10, 84), "fc3.bias": (10,)}
    assert sum(p.numel() for p in net.parameters()) == 61_706
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    with_bn = LeNet5(batch_norm=True).state_dict()
    assert "conv1.bias" not in with_bn and "fc3.bias" in with_bn  # batch norm's beta replaces the bias
    assert with_bn["bn2.running_var"].shape == (16,) and with_bn["bn4.running_mean"].shape == (84,)


@pytest.mark.parametrize("spec, fused", [(dict(), True), (dict(batch_norm=True), True),
                                         (dict(activation="tanh"), False), (dict(pool="avg"), False)])
def test_lenet5_pools_and_applies_relu_in_one_function(spec, fused):
    """ReLU then max pooling is one F.max_pool2d_relu node in the hand backend (README Performance)."""
    def nodes(net):
        names, todo = set(), [net(torch.rand(2, 1, 28, 28)).grad_fn]
        while todo:
            node = todo.pop()
            names.add(type(node).__name__)
            todo += [next_node for next_node, _ in node.next_functions if next_node is not None]
        return names

    assert ("MaxPool2dReLUBackward" in nodes(LeNet5(**spec))) == fused
    assert "MaxPool2dReLUBackward" not in nodes(LeNet5(**spec, backend="autograd"))


@pytest.mark.parametrize("net", [LeNet5(batch_norm=True, dropout=0.5, activation="tanh", pool="avg"),
                                 MLP([4, 3, 2], batch_norm=True, dropout=0.5)], ids=["lenet5", "mlp"])
def test_hand_backend_is_built_from_handgrad_nn_and_the_twin_from_torch_nn(net):
    layers = [m for m in net.modules() if not isinstance(m, (type(net), torch.nn.ModuleList, torch.nn.Identity))]
    assert layers and all(type(m).__module__ == "handgrad.nn" for m in layers), layers
    twin_layers = [m for m in net.twin().modules() if not isinstance(m, (type(net), torch.nn.ModuleList))]
    assert not any(type(m).__module__ == "handgrad.nn" for m in twin_layers)
    assert [type(m).__name__ for m in layers] == [type(m).__name__ for m in twin_layers
                                                 if not isinstance(m, torch.nn.Identity)]


def test_mlp_state_dict_keys_with_batch_norm():
    keys = list(MLP([6, 5, 4, 3], batch_norm=True, dropout=0.2).state_dict())
    assert keys == ["layers.0.weight", "layers.1.weight", "layers.2.weight", "layers.2.bias",
                    *(f"norms.{i}.{b}" for i in range(2)
                      for b in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"))]
    assert list(MLP([6, 5, 3], dropout=0.2).state_dict()) == list(MLP([6, 5, 3]).state_dict())


@pytest.mark.parametrize("net", [LeNet5(dropout=0.2, batch_norm=True), MLP([6, 5, 3], dropout=0.2, batch_norm=True,
                                                                            init="nielsen")], ids=["lenet5", "mlp"])
def test_twin_carries_options_weights_dtype_and_mode(net):
    net = net.double().eval()
    twin = net.twin()
    assert twin.spec == net.spec and twin.backend == "autograd" and not twin.training
    assert all(p.dtype == torch.float64 for p in twin.parameters())
    back = twin.twin("hand")
    assert back.backend == "hand" and type(back.dropout) is handgrad.nn.Dropout
    for name, value in net.state_dict().items():
        assert torch.equal(twin.state_dict()[name], value) and torch.equal(back.state_dict()[name], value), name


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (2, 1, 32, 32), (2, 784), (1, 28, 28)])
def test_lenet5_names_the_expected_input_shape(shape):
    with pytest.raises(ValueError) as error:
        LeNet5()(torch.zeros(shape))
    expected = f"LeNet5 expects images of shape (N, 1, 28, 28) (MNIST, Fashion-MNIST), got {shape}"
    assert str(error.value).startswith(expected)


@pytest.mark.parametrize("build, message", [
    (lambda: LeNet5(activation="softmax"), "LeNet5: unknown activation 'softmax'; choose one of 'relu'"),
    (lambda: LeNet5(pool="min"), "LeNet5: unknown pool 'min'; choose one of 'max', 'avg'"),
    (lambda: LeNet5(backend="jax"), "LeNet5: unknown backend 'jax'"),
    (lambda: LeNet5(dropout=1.0), r"LeNet5: dropout=1.0 must be in \[0, 1\)"),
    (lambda: MLP([4, 2], dropout=-0.1), r"MLP: dropout=-0.1 must be in \[0, 1\)"),
])
def test_bad_options_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_lenet5_trains_in_the_system_with_the_gradient_check(mnist_root, one_thread):
    """Classifier + GradientCheck on LeNet-5 with batch norm and dropout: its twin() agrees to rounding."""
    torch.manual_seed(0)
    check = GradientCheck(every_n_steps=5)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, callbacks=[check], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    data = DataModule("mnist", root=mnist_root, download=False, batch_size=20, val_size=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientMismatchWarning)
        trainer.fit(Classifier(LeNet5(batch_norm=True, dropout=0.5), lr=0.05, momentum=0.9), data)
    assert trainer.global_step == 8  # 150 training images, batch 20
    assert set(check.last_errors) == {"conv1", "bn1", "conv2", "bn2", "fc1", "bn3", "fc2", "bn4", "fc3"}
    # float64 rounding, summed over 20 x 28 x 28 positions and cancelled by batch norm's centring: about 1e-12
    # in the real lenet5 run, far below the 1e-6 threshold and the 1e-2 of a wrong derivative.
    assert max(check.last_errors.values()) < 1e-9
