"""Channel dropout (dropout1d, dropout2d, dropout3d and their nn twins) beyond the shared table
(handgrad.verify.cases.dropout): whole channels dropped with torch's random stream, torch's handling of
unbatched and other inputs (warnings included), p = 0 and 1, the saved mask, errors, and torch.compile."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as torch_F

import handgrad.functional as F
import handgrad.nn as hnn
from handgrad.verify import compare, gradcheck, seeded

OPS = ["dropout1d", "dropout2d", "dropout3d"]
SHAPES = {"dropout1d": [(4, 6, 5), (6, 5)], "dropout2d": [(4, 6, 3, 2), (6, 4, 3)],
          "dropout3d": [(3, 4, 2, 3, 2), (4, 2, 3, 2)]}


def no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
@pytest.mark.parametrize("op, shape", [(op, shape) for op in OPS for shape in SHAPES[op]])
def test_same_channels_as_torch_under_a_seed(op, shape, p, dtype):
    x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(0)).requires_grad_()
    comparison = compare(seeded(lambda input, **kw: no_warnings(getattr(F, op), input, **kw)),
                         seeded(lambda input, **kw: no_warnings(getattr(torch_F, op), input, **kw)), dict(input=x),
                         dict(p=p))
    comparison.assert_close()


@pytest.mark.parametrize("op, shape", [("dropout1d", (8, 16, 5)), ("dropout2d", (8, 16, 3, 3)),
                                       ("dropout3d", (8, 16, 2, 2, 2))])
def test_whole_channels_are_dropped_and_the_rest_scaled(op, shape):
    x = torch.rand(shape) + 1  # no zeros of its own
    output = getattr(F, op)(x, p=0.4)
    per_channel = (output / x).reshape(*shape[:2], -1)  # 0 or 1 / (1 - p) everywhere in a channel
    kept = per_channel[..., 0] != 0
    assert 0 < kept.float().mean() < 1
    torch.testing.assert_close(per_channel, (kept / 0.6)[..., None].expand_as(per_channel))


@pytest.mark.parametrize("op", OPS)
def test_the_random_stream_moves_as_torchs(op):
    x = torch.randn(SHAPES[op][0])
    states = []
    for fn in (getattr(F, op), getattr(torch_F, op)):
        torch.manual_seed(3)
        fn(x, 0.5)
        states.append(torch.get_rng_state())
    assert torch.equal(*states)


@pytest.mark.parametrize("op", OPS)
def test_p_zero_one_and_eval_as_torch(op):
    x = torch.randn(SHAPES[op][0], requires_grad=True)
    assert getattr(F, op)(x, 0.0) is x and getattr(F, op)(x, 0.5, training=False) is x
    state = torch.get_rng_state()
    zeros = getattr(F, op)(x, 1.0)
    assert torch.equal(torch.get_rng_state(), state)  # p = 1 draws nothing, as torch's
    assert torch.equal(zeros, torch.zeros_like(x))
    zeros.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_unbatched_inputs_of_dropout1d_and_dropout3d():
    """A (C, L) or (C, D, H, W) input is one example: a batch of one is added and removed, as torch does."""
    for op, shape in (("dropout1d", (6, 5)), ("dropout3d", (4, 2, 3, 2))):
        x = torch.randn(shape)
        assert getattr(F, op)(x, 0.5, training=False).shape == shape
        torch.manual_seed(0)
        output = getattr(F, op)(x, 0.5)
        torch.manual_seed(0)
        torch.testing.assert_close(output, getattr(torch_F, op)(x, 0.5))


def test_dropout2d_warns_as_torch_for_inputs_other_than_4d():
    with pytest.warns(UserWarning, match=r"dropout2d: a 3-D input is taken as \(N, C, L\)"):
        F.dropout2d(torch.randn(4, 3, 5))
    for shape, text in (((4, 3), r"\(4, 3\)"), ((2, 4, 3, 2, 2), r"\(2, 4, 3, 2, 2\)")):
        with pytest.warns(UserWarning, match=rf"dropout2d: expected a 4-D input \(N, C, H, W\), got shape {text}"):
            F.dropout2d(torch.randn(shape))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.dropout2d(torch.randn(2, 3, 4, 4))


def test_dropout3d_warns_as_torch_for_inputs_other_than_4d_or_5d():
    with pytest.warns(UserWarning, match=r"dropout3d: expected a 5-D input .* got shape \(4, 3, 2\); its dim 0"):
        output = F.dropout3d(torch.randn(4, 3, 2))
    assert output.shape == (4, 3, 2)


def test_channel_dropout_errors():
    with pytest.raises(ValueError, match=r"dropout1d: expected a 3-D input \(N, C, L\) or a 2-D one \(C, L\), got "
                                         r"shape \(2, 3, 4, 5\); dropout2d and dropout3d"):
        F.dropout1d(torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"dropout2d: channel dropout needs an input of shape \(N, C, \*\), got "
                                         r"\(5,\); use dropout"), pytest.warns(UserWarning):
        F.dropout2d(torch.randn(5))
    for op in OPS:
        with pytest.raises(ValueError, match=r"dropout probability has to be between 0 and 1, but got -0.1"):
            getattr(F, op)(torch.randn(SHAPES[op][0]), -0.1)


def test_saves_one_byte_per_channel():
    x = torch.randn(8, 16, 5, 5, requires_grad=True)
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.dropout2d(x, 0.5)
    assert total == 8 * 16


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_gradcheck_with_a_fixed_seed(p):
    with torch.random.fork_rng(devices=[]):
        assert gradcheck(seeded(F.dropout2d), dict(input=torch.randn(3, 4, 2, 2, dtype=torch.float64,
                                                                       requires_grad=True)), dict(p=p))


@pytest.mark.parametrize("name, shape", [("Dropout1d", (4, 6, 5)), ("Dropout2d", (4, 6, 3, 3)),
                                         ("Dropout3d", (3, 4, 2, 2, 2))])
def test_nn_twins(name, shape):
    hand, twin = getattr(hnn, name)(p=0.3), getattr(torch.nn, name)(p=0.3)
    assert repr(hand) == repr(twin) and isinstance(hand, type(twin))
    x = torch.randn(shape, requires_grad=True)
    for training in (True, False):
        hand.train(training), twin.train(training)
        torch.manual_seed(4)
        output = hand(x)
        torch.manual_seed(4)
        torch.testing.assert_close(output, twin(x))


def test_compiles_in_one_graph_with_batch_and_layer_norm():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 5, generator=g, requires_grad=True)
    weight, bias = torch.randn(3, generator=g, requires_grad=True), torch.randn(3, generator=g, requires_grad=True)
    mean, var = torch.zeros(3), torch.ones(3)

    def step(x, weight, bias):
        h = F.dropout2d(F.batch_norm(x, mean, var, weight, bias, training=True), 0.4)
        return (F.layer_norm(h, (5,)) ** 2).sum()

    results = []
    for fn in (step, torch.compile(step, backend="aot_eager", fullgraph=True)):
        torch.manual_seed(0)
        loss = fn(x, weight, bias)
        results.append((loss, *torch.autograd.grad(loss, (x, weight, bias))))
    torch._dynamo.reset()
    torch.testing.assert_close(results[0], results[1])
