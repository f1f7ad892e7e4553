"""handgrad.nn's recurrent layers are drop-in twins of torch.nn.RNN, LSTM, GRU and their cells: the same
parameters, initialisation, state_dict and repr, and for every option the same outputs and gradients
(input, initial states, every parameter), dropout included."""

from __future__ import annotations

import itertools

import pytest
import torch

import handgrad
import handgrad.nn as hnn

SEQUENCE_LAYERS = ["RNN", "LSTM", "GRU"]
CELLS = ["RNNCell", "LSTMCell", "GRUCell"]


def twins(name: str, *args, dtype=torch.float64, **kwargs):
    """handgrad's layer and torch's, built from the same seed (so with the same initial parameters)."""
    torch.manual_seed(0)
    hand = getattr(hnn, name)(*args, **kwargs).to(dtype)
    torch.manual_seed(0)
    return hand, getattr(torch.nn, name)(*args, **kwargs).to(dtype)


def flat(output) -> list[torch.Tensor]:
    """(output, h_n), (output, (h_n, c_n)), h' or (h', c') -> a flat list of tensors."""
    if isinstance(output, torch.Tensor):
        return [output]
    return [t for item in output for t in flat(item)]


def assert_same_calls(hand, twin, args, leaves, seed=1, **tolerances):
    """The same outputs, and the same gradients of the leaves and of every parameter, for one random gradient
    on every output."""
    ours, theirs = flat(hand(*args)), flat(twin(*args))
    assert [t.shape for t in ours] == [t.shape for t in theirs]
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, **tolerances)
    g = torch.Generator().manual_seed(seed)
    grads = [torch.randn(t.shape, dtype=t.dtype, generator=g) for t in theirs]
    got = torch.autograd.grad(ours, [*leaves, *hand.parameters()], grads)
    expected = torch.autograd.grad(theirs, [*leaves, *twin.parameters()], grads)
    names = [f"leaf {i}" for i in range(len(leaves))] + [n for n, _ in twin.named_parameters()]
    for name, a, b in zip(names, got, expected, strict=True):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"gradient of {name}: {m}", **tolerances)


# --------------------------------------------------------------------------- same module


@pytest.mark.parametrize("name, kwargs", [
    ("RNN", dict(num_layers=2, nonlinearity="relu", bidirectional=True)), ("GRU", dict(bias=False, batch_first=True)),
    ("LSTM", dict(num_layers=3, bidirectional=True, dropout=0.2)), ("LSTM", dict(proj_size=3, num_layers=2)),
    ("RNNCell", dict(nonlinearity="relu")), ("LSTMCell", dict(bias=False)), ("GRUCell", {})])
def test_same_parameters_init_state_dict_and_repr(name, kwargs):
    hand, twin = twins(name, 5, 7, dtype=torch.float32, **kwargs)
    assert isinstance(hand, getattr(torch.nn, name))
    assert list(hand.state_dict()) == list(twin.state_dict())
    for key, value in twin.state_dict().items():
        assert torch.equal(hand.state_dict()[key], value), key
    assert repr(hand) == repr(twin)
    hand.load_state_dict(getattr(torch.nn, name)(5, 7, **kwargs).state_dict())  # and moves both ways
    twin.load_state_dict(hand.state_dict())


# --------------------------------------------------------------------------- every option, every output


OPTIONS = list(itertools.product([1, 2], [False, True], [False, True], [False, True], [True, False], [False, True]))


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "layers={}-bidirectional={}-bias={}-batch_first={}-"
                         "batched={}-h0={}".format(*o))
@pytest.mark.parametrize("name", ["RNN-tanh", "RNN-relu", "LSTM", "LSTM-proj", "GRU"])
def test_every_option_matches_torch(name, options):
    num_layers, bidirectional, bias, batch_first, batched, given = options
    kind, _, variant = name.partition("-")
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, bias=bias, batch_first=batch_first)
    kwargs.update(dict(nonlinearity=variant) if kind == "RNN" else dict(proj_size=2) if variant else {})
    hand, twin = twins(kind, 4, 3, **kwargs)
    g = torch.Generator().manual_seed(2)
    batch = ((2, 5) if batch_first else (5, 2)) if batched else (5,)
    x = torch.randn(*batch, 4, dtype=torch.float64, generator=g, requires_grad=True)
    lead = (num_layers * (1 + bidirectional), *((2,) if batched else ()))
    states = [torch.randn(*lead, size, dtype=torch.float64, generator=g, requires_grad=True)
              for size in ([2 if variant == "proj" else 3, 3] if kind == "LSTM" else [3])]
    hx = None if not given else tuple(states) if kind == "LSTM" else states[0]
    assert_same_calls(hand, twin, (x, hx), [x, *states] if given else [x])


@pytest.mark.parametrize("name", SEQUENCE_LAYERS)
def test_float32_matches_torch(name):
    hand, twin = twins(name, 16, 32, dtype=torch.float32, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(8, 12, 16, requires_grad=True)
    assert_same_calls(hand, twin, (x,), [x], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", SEQUENCE_LAYERS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_dropout_while_training_draws_as_torch_and_only_then(name, bidirectional):
    hand, twin = twins(name, 4, 6, num_layers=3, dropout=0.5, bidirectional=bidirectional)
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    for training in (True, False):
        hand.train(training)
        twin.train(training)
        torch.manual_seed(11)
        ours = flat(hand(x))
        torch.manual_seed(11)
        theirs = flat(twin(x))
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b)
        torch.manual_seed(11)
        again = flat(hand(x))
        assert training or torch.equal(again[0], ours[0])  # evaluation: no dropout, no randomness
    torch.manual_seed(11)
    hand.train()
    dropped = flat(hand(x))[0]
    hand.eval()
    assert not torch.allclose(dropped, flat(hand(x))[0])


@pytest.mark.parametrize("name, nonlinearity", [("RNNCell", "tanh"), ("RNNCell", "relu"), ("LSTMCell", None),
                                                ("GRUCell", None)])
@pytest.mark.parametrize("batched, given, bias", list(itertools.product([True, False], repeat=3)))
def test_cells_match_torch(name, nonlinearity, batched, given, bias):
    kwargs = dict(bias=bias, **(dict(nonlinearity=nonlinearity) if nonlinearity else {}))
    hand, twin = twins(name, 4, 3, **kwargs)
    g = torch.Generator().manual_seed(3)
    lead = (2,) if batched else ()
    x = torch.randn(*lead, 4, dtype=torch.float64, generator=g, requires_grad=True)
    states = [torch.randn(*lead, 3, dtype=torch.float64, generator=g, requires_grad=True)
              for _ in range(2 if name == "LSTMCell" else 1)]
    hx = None if not given else tuple(states) if name == "LSTMCell" else states[0]
    assert_same_calls(hand, twin, (x, hx), [x, *states] if given else [x])


def test_a_sequence_model_trains_step_for_step_like_its_torch_twin():
    """An LSTM encoder with a linear read-out, 5 SGD steps on a sequence regression, beside torch's twin."""
    def model(nn):
        torch.manual_seed(0)
        return torch.nn.ModuleDict(dict(rnn=nn.LSTM(3, 8, num_layers=2, batch_first=True), head=nn.Linear(8, 1)))
    hand, twin = model(hnn), model(torch.nn)
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(6, 10, 3, generator=g), torch.randn(6, 1, generator=g)
    losses = []
    for net in (hand, twin):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        history = []
        for _ in range(5):
            output, _ = net["rnn"](x)
            loss = torch.nn.functional.mse_loss(net["head"](output[:, -1]), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append(loss.item())
        losses.append(history)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for (name, p), q in zip(hand.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("name", SEQUENCE_LAYERS + CELLS)
def test_every_backward_node_is_hand_written(name):
    layer = getattr(hnn, name)(4, 3)
    x = torch.randn(5, 2, 4) if name in SEQUENCE_LAYERS else torch.randn(2, 4)
    with handgrad.coverage(layer) as report:
        sum(t.sum() for t in flat(layer(x.requires_grad_()))).backward()
    inside = [r for r in report.nodes if r.module == "" and r.kind != "bookkeeping"]  # the loss's sums are outside
    assert [r.kind for r in inside] == ["hand"], inside


# --------------------------------------------------------------------------- errors name the value and the fix


@pytest.mark.parametrize("name", SEQUENCE_LAYERS)
def test_packed_sequences_are_refused_with_the_fix(name):
    packed = torch.nn.utils.rnn.pack_sequence([torch.randn(3, 4), torch.randn(2, 4)])
    with pytest.raises(NotImplementedError, match=rf"handgrad.nn.{name}: PackedSequence input is not hand-written; "
                                                  rf"pass the padded batch .*or use torch.nn.{name}"):
        getattr(hnn, name)(4, 3)(packed)


@pytest.mark.parametrize("call, error, pattern", [
    (lambda: hnn.GRU(4, 3)(torch.randn(5, 4), torch.zeros(1, 2, 3)), RuntimeError,
     r"For unbatched 2-D input, hx should also be 2-D but got \(3-D\).*pass states of shape \(1, hidden\)"),
    (lambda: hnn.LSTM(4, 3)(torch.randn(5, 2, 4), (torch.zeros(1, 3), torch.zeros(1, 3))), RuntimeError,
     r"For batched 3-D input, hx should also be 3-D but got \(2-D, 2-D\)"),
    (lambda: hnn.RNN(4, 3)(torch.randn(5, 2, 5)), RuntimeError, r"input.size\(-1\) must be equal to input_size"),
    (lambda: hnn.LSTM(4, 3)(torch.randn(5, 2, 4, 1)), ValueError, r"LSTM: Expected input to be 2D or 3D, got 4D"),
    (lambda: hnn.GRUCell(4, 3)(torch.randn(2, 4), torch.zeros(2, 1, 3)), ValueError,
     r"GRUCell: Expected hidden to be 1D or 2D, got 3D"),
    (lambda: hnn.LSTMCell(4, 3)(torch.randn(2, 5)), RuntimeError,
     r"input has inconsistent input_size: got 5 expected 4"),
])
def test_errors(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_unknown_cell_nonlinearity_is_refused():
    cell = hnn.RNNCell(4, 3)
    cell.nonlinearity = "gelu"
    with pytest.raises(RuntimeError, match="Unknown nonlinearity: gelu; use 'tanh' or 'relu'"):
        cell(torch.randn(2, 4))
