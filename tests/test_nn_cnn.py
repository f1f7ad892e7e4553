"""The convolutional and regularisation layers of handgrad.nn are drop-in twins of torch.nn:
same constructor, parameters, buffers, state_dict and repr; the same outputs, parameter gradients
and buffer updates in train and eval mode."""

from __future__ import annotations

import pytest
import torch

import handgrad.nn as hnn
from handgrad.verify import compare

# (class name, constructor kwargs, input shape)
LAYERS = [
    ("Conv2d", dict(in_channels=3, out_channels=4, kernel_size=3), (2, 3, 7, 7)),
    ("Conv2d", dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, padding=1, dilation=(1, 2),
                    groups=2, bias=False), (2, 4, 9, 8)),
    ("Conv2d", dict(in_channels=3, out_channels=4, kernel_size=3, padding="same"), (2, 3, 6, 6)),
    ("MaxPool2d", dict(kernel_size=2), (2, 3, 8, 8)),
    ("MaxPool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), (2, 3, 7, 9)),
    ("AvgPool2d", dict(kernel_size=2), (2, 3, 7, 7)),
    ("AvgPool2d", dict(kernel_size=3, stride=2, padding=1, count_include_pad=False), (2, 3, 8, 8)),
    ("BatchNorm1d", dict(num_features=5), (8, 5)),
    ("BatchNorm1d", dict(num_features=5, affine=False), (4, 5, 6)),
    ("BatchNorm2d", dict(num_features=3), (4, 3, 5, 5)),
    ("BatchNorm2d", dict(num_features=3, momentum=None), (4, 3, 5, 5)),
    ("BatchNorm2d", dict(num_features=3, track_running_stats=False), (4, 3, 5, 5)),
    ("LayerNorm", dict(normalized_shape=6), (3, 4, 6)),
    ("LayerNorm", dict(normalized_shape=(4, 6), elementwise_affine=False), (3, 4, 6)),
    ("LayerNorm", dict(normalized_shape=(4, 6), bias=False), (3, 4, 6)),
    ("Dropout", dict(p=0.3), (6, 9)),
]
IDS = [f"{name}({', '.join(f'{k}={v}' for k, v in kwargs.items())})" for name, kwargs, _ in LAYERS]


def twins(name: str, kwargs: dict, dtype=torch.float64):
    """The handgrad layer and its torch.nn twin, with the same parameters and buffers (random, not the init)."""
    torch.manual_seed(0)
    hand = getattr(hnn, name)(**kwargs).to(dtype)
    torch.manual_seed(0)
    twin = getattr(torch.nn, name)(**kwargs).to(dtype)
    with torch.no_grad():
        for p in hand.parameters():
            p.copy_(torch.randn_like(p))
    twin.load_state_dict(hand.state_dict())
    return hand, twin


def run(layer, x: torch.Tensor, grad_output_seed: int = 0):
    """Output, input gradient and parameter gradients of one forward/backward, dropout seeded alike."""
    x = x.detach().requires_grad_()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)  # the same dropout mask for both twins
        output = layer(x)
    generator = torch.Generator().manual_seed(grad_output_seed)
    grad_output = torch.randn(output.shape, dtype=output.dtype, generator=generator)
    output.backward(grad_output)
    return output.detach(), x.grad, {n: p.grad for n, p in layer.named_parameters()}


@pytest.mark.parametrize("name, kwargs, shape", LAYERS, ids=IDS)
def test_same_init_state_dict_and_repr(name, kwargs, shape):
    torch.manual_seed(0)
    hand = getattr(hnn, name)(**kwargs)
    torch.manual_seed(0)
    twin = getattr(torch.nn, name)(**kwargs)
    hand_state, twin_state = hand.state_dict(), twin.state_dict()
    assert list(hand_state) == list(twin_state)
    for key in hand_state:
        torch.testing.assert_close(hand_state[key], twin_state[key], rtol=0, atol=0)
    assert repr(hand) == repr(twin)
    assert isinstance(hand, getattr(torch.nn, name))


@pytest.mark.parametrize("name, kwargs, shape", LAYERS, ids=IDS)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_and_gradients_match_torch(name, kwargs, shape, mode, dtype):
    hand, twin = twins(name, kwargs, dtype)
    hand.train(mode == "train")
    twin.train(mode == "train")
    x = 2 * torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(1)) + 1
    output, grad_x, grads = run(hand, x)
    expected_output, expected_grad_x, expected_grads = run(twin, x)
    torch.testing.assert_close(output, expected_output)
    torch.testing.assert_close(grad_x, expected_grad_x)
    assert grads.keys() == expected_grads.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], expected_grads[n], msg=lambda m, n=n: f"gradient of {n}: {m}")
    for (n, b), (_, c) in zip(hand.named_buffers(), twin.named_buffers(), strict=True):
        torch.testing.assert_close(b, c, rtol=1e-12 if dtype == torch.float64 else 1.3e-6, atol=1e-12 if
                                   dtype == torch.float64 else 1e-6, msg=lambda m, n=n: f"buffer {n}: {m}")


def test_state_dict_moves_both_ways():
    hand = torch.nn.Sequential(hnn.Conv2d(3, 4, 3), hnn.BatchNorm2d(4), hnn.MaxPool2d(2), hnn.LayerNorm(2))
    twin = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.MaxPool2d(2),
                               torch.nn.LayerNorm(2))
    x = torch.randn(2, 3, 6, 6)
    for source, target in ((twin, hand), (hand, twin)):
        source.train()(x)  # moves the running statistics away from their init
        target.load_state_dict(source.state_dict())
        torch.testing.assert_close(target.eval()(x), source.eval()(x))


@pytest.mark.parametrize("cls, kwargs", [("BatchNorm1d", dict(num_features=4)), ("BatchNorm2d", dict(num_features=4)),
                                         ("BatchNorm2d", dict(num_features=4, momentum=None)),
                                         ("BatchNorm1d", dict(num_features=4, momentum=0.5, affine=False))])
def test_batch_norm_buffers_follow_torch_over_training_steps(cls, kwargs):
    hand, twin = twins(cls, kwargs)
    shape = (8, 4) if cls == "BatchNorm1d" else (6, 4, 3, 3)
    g = torch.Generator().manual_seed(2)
    hand.train(), twin.train()
    for _ in range(5):
        x = 3 * torch.randn(shape, dtype=torch.float64, generator=g) - 1
        torch.testing.assert_close(hand(x), twin(x))
    assert hand.num_batches_tracked.item() == twin.num_batches_tracked.item() == 5
    for (n, b), (_, c) in zip(hand.named_buffers(), twin.named_buffers(), strict=True):
        torch.testing.assert_close(b, c, msg=lambda m, n=n: f"buffer {n}: {m}")
    hand.eval(), twin.eval()
    x = torch.randn(shape, dtype=torch.float64, generator=g)
    torch.testing.assert_close(hand(x), twin(x))


def test_batch_norm_without_running_statistics_uses_the_batch_in_eval():
    hand, twin = twins("BatchNorm2d", dict(num_features=3, track_running_stats=False))
    assert hand.running_mean is None and hand.num_batches_tracked is None
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(hand.eval()(x), twin.eval()(x))


def test_batch_norm_checks_input_dims_like_torch():
    with pytest.raises(ValueError, match=r"expected 4D input \(got 2D input\)"):
        hnn.BatchNorm2d(3)(torch.randn(4, 3))


def test_dropout_train_and_eval():
    layer = hnn.Dropout(0.5)
    x = torch.randn(50, 40)
    y = layer(x)
    kept = y != 0
    torch.testing.assert_close(y[kept], 2 * x[kept])
    assert 0.4 < kept.float().mean() < 0.6
    assert layer.eval()(x) is x


def test_max_pool_returns_indices_like_torch():
    x = torch.randn(2, 3, 7, 7)
    output, indices = hnn.MaxPool2d(3, 2, 1, return_indices=True)(x)
    expected, expected_indices = torch.nn.MaxPool2d(3, 2, 1, return_indices=True)(x)
    torch.testing.assert_close(output, expected)
    assert torch.equal(indices, expected_indices)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, padding=1), dict(kernel_size=(2, 4), padding="same"),
                                    dict(kernel_size=3, padding=(2, 1), stride=2, dilation=(1, 2))], ids=str)
def test_conv2d_padding_modes_match_torch(mode, kwargs):
    """torch.nn.Conv2d pads by F.pad first; handgrad by its hand-written Pad2d, then the same convolution."""
    torch.manual_seed(0)
    hand = hnn.Conv2d(3, 4, padding_mode=mode, **kwargs).double()
    twin = torch.nn.Conv2d(3, 4, padding_mode=mode, **kwargs).double()
    twin.load_state_dict(hand.state_dict())
    for shape in [(2, 3, 6, 7), (3, 6, 7)]:
        x = torch.randn(shape, dtype=torch.float64)
        compare(lambda input: hand(input), lambda input: twin(input), dict(input=x.requires_grad_())).assert_close()
    assert torch.autograd.gradgradcheck(hand, torch.randn(1, 3, 5, 6, dtype=torch.float64, requires_grad=True))


def test_conv2d_wrong_channels_message_names_the_layer_fix():
    with pytest.raises(ValueError, match=r"has 4 channels.*build the layer with in_channels=4"):
        hnn.Conv2d(3, 8, 3)(torch.randn(1, 4, 8, 8))


def test_small_cnn_matches_torch():
    """conv -> batch norm -> relu -> pool -> conv -> pool -> dropout -> linear, end to end in train mode."""
    def cnn(nn):
        return torch.nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                                   nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(2), torch.nn.Flatten(),
                                   nn.Dropout(0.2), nn.Linear(16 * 2 * 2, 10))
    torch.manual_seed(0)
    hand = cnn(hnn).double()
    twin = cnn(torch.nn).double()
    twin.load_state_dict(hand.state_dict())
    x = torch.randn(8, 1, 16, 16, dtype=torch.float64)
    target = torch.randint(10, (8,))
    losses = []
    for net, loss_fn in ((hand, hnn.CrossEntropyLoss()), (twin, torch.nn.CrossEntropyLoss())):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(3)
            loss = loss_fn(net(x), target)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1])
    for (n, p), (_, q) in zip(hand.named_parameters(), twin.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=lambda m, n=n: f"{n}: {m}")
    torch.testing.assert_close(hand.state_dict(), twin.state_dict())
