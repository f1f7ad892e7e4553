"""Recurrent layers beyond the shared table (handgrad.verify.RECURRENT_CASES): every combination of the
options against torch's own ops with every output and every gradient at once, the same against autograd
through the cell equations composed in a Python loop, double backward and forward-mode derivatives, and
the argument errors."""

from __future__ import annotations

import itertools

import pytest
import torch

import handgrad.functional as F
from handgrad.verify.cases.recurrent import RECURRENT_OPS, flat_parameters, recurrent_by_name

# gradcheck's forward-mode check scripts a helper with torch.jit, which torch 2.14 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

KINDS = list(RECURRENT_OPS)
OPTIONS = list(itertools.product([1, 2], [False, True], [False, True], [False, True], [False, True], [True, False]))
OPTION_IDS = [f"layers={n}-bidirectional={d}-bias={b}-batch_first={f}-h0={h}-batched={u}"
              for n, d, b, f, h, u in OPTIONS]


def module_for(kind: str, num_layers=1, bidirectional=False, bias=True, proj_size=0, dtype=torch.float64,
               input_size=3, hidden=4, dropout=0.0) -> torch.nn.RNNBase:
    """A torch.nn layer of ``kind``, for its initialised parameters in torch's layout."""
    kwargs: dict = dict(num_layers=num_layers, bidirectional=bidirectional, bias=bias, dropout=dropout)
    if kind.startswith("rnn"):
        return torch.nn.RNN(input_size, hidden, nonlinearity=kind[4:], **kwargs).to(dtype)
    if kind == "lstm":
        return torch.nn.LSTM(input_size, hidden, proj_size=proj_size, **kwargs).to(dtype)
    return torch.nn.GRU(input_size, hidden, **kwargs).to(dtype)


def leaves_and_call(kind, module, batched, batch_first, initial, length=4, batch=3, seed=0):
    """Leaves (input, states, parameters) and the arguments of torch's and handgrad's ops on them."""
    g = torch.Generator().manual_seed(seed)
    dtype = module.weight_ih_l0.dtype
    shape = ((batch, length) if batch_first else (length, batch)) if batched else (length,)
    x = torch.randn(*shape, module.input_size, dtype=dtype, generator=g).requires_grad_()
    lead = (module.num_layers * (1 + module.bidirectional), *((batch,) if batched else ()))
    sizes = [module.proj_size or module.hidden_size] + ([module.hidden_size] if kind == "lstm" else [])
    states = [torch.randn(*lead, s, dtype=dtype, generator=g).requires_grad_() if initial
              else torch.zeros(*lead, s, dtype=dtype) for s in sizes]
    params = [p.detach().clone().requires_grad_() for p in module._flat_weights]
    return x, states, params


def run(op, kind, x, states, params, module, batch_first, train=False, dropout=0.0):
    hx = states if kind == "lstm" else states[0]
    return op(x, hx, params, module.bias, module.num_layers, dropout, train, module.bidirectional, batch_first)


def torch_op(kind):
    """torch's op, taking unbatched input as torch.nn's layers do (unsqueezed, then squeezed)."""
    def op(x, hx, params, bias, layers, dropout, train, bidirectional, batch_first):
        if x.dim() == 3:
            return RECURRENT_OPS[kind].torch(x, hx, params, bias, layers, dropout, train, bidirectional, batch_first)
        states = [h.unsqueeze(1) for h in (hx if kind == "lstm" else [hx])]
        outputs = RECURRENT_OPS[kind].torch(x.unsqueeze(1 - batch_first), states if kind == "lstm" else states[0],
                                            params, bias, layers, dropout, train, bidirectional, batch_first)
        return (outputs[0].squeeze(1 - batch_first), *(h.squeeze(1) for h in outputs[1:]))
    return op


def assert_same_outputs_and_gradients(ours, theirs, leaves, seed=1, **tolerances):
    """Equal outputs, and equal gradients of every leaf for one random gradient on every output at once."""
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, **tolerances)
    g = torch.Generator().manual_seed(seed)
    grads = [torch.randn(t.shape, dtype=t.dtype, generator=g) for t in theirs]
    leaves = [t for t in leaves if t.requires_grad]
    for i, (a, b) in enumerate(zip(torch.autograd.grad(ours, leaves, grads), torch.autograd.grad(theirs, leaves, grads),
                                   strict=True)):
        torch.testing.assert_close(a, b, msg=lambda m, i=i: f"gradient of leaf {i}: {m}", **tolerances)


# --------------------------------------------------------------------------- every option, every output


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_option_matches_torch_in_every_output_and_gradient(kind, options):
    num_layers, bidirectional, bias, batch_first, initial, batched = options
    torch.manual_seed(0)
    module = module_for(kind, num_layers, bidirectional, bias)
    x, states, params = leaves_and_call(kind, module, batched, batch_first, initial)
    ours = run(F.__dict__[kind], kind, x, states, params, module, batch_first)
    theirs = run(torch_op(kind), kind, x, states, params, module, batch_first)
    assert_same_outputs_and_gradients(ours, theirs, [x, *states, *params])


@pytest.mark.parametrize("options", [(2, True, True, False, True, True), (2, True, False, True, False, False),
                                     (1, False, True, True, True, True)])
@pytest.mark.parametrize("proj_size", [1, 2])
def test_lstm_with_projections_matches_torch(options, proj_size):
    num_layers, bidirectional, bias, batch_first, initial, batched = options
    module = module_for("lstm", num_layers, bidirectional, bias, proj_size=proj_size)
    x, states, params = leaves_and_call("lstm", module, batched, batch_first, initial)
    ours = run(F.lstm, "lstm", x, states, params, module, batch_first)
    theirs = run(torch_op("lstm"), "lstm", x, states, params, module, batch_first)
    assert_same_outputs_and_gradients(ours, theirs, [x, *states, *params])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_float32_matches_torch(kind, bidirectional):
    """torch's float32 CPU LSTM runs oneDNN's kernel; the others torch's composed cells."""
    module = module_for(kind, 2, bidirectional, dtype=torch.float32, input_size=16, hidden=32)
    x, states, params = leaves_and_call(kind, module, True, False, True, length=12, batch=8)
    ours = run(F.__dict__[kind], kind, x, states, params, module, False)
    theirs = run(torch_op(kind), kind, x, states, params, module, False)
    assert_same_outputs_and_gradients(ours, theirs, [x, *states, *params], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dropout_between_layers_draws_as_torch(kind, dtype):
    """Same seed, same masks: torch's CPU RNNs draw bernoulli_(1 - p) over each inner layer's time-major output."""
    module = module_for(kind, 3, True, dtype=dtype, dropout=0.4)
    x, states, params = leaves_and_call(kind, module, True, True, True)
    outputs = []
    for op in (F.__dict__[kind], torch_op(kind)):
        torch.manual_seed(7)
        outputs.append(run(op, kind, x, states, params, module, True, train=True, dropout=0.4))
    assert_same_outputs_and_gradients(*outputs, [x, *states, *params])
    torch.manual_seed(7)
    without = run(F.__dict__[kind], kind, x, states, params, module, True, train=True, dropout=0.0)
    assert not torch.allclose(without[0], outputs[0][0])  # the masks did drop something


def test_dropout_of_one_drops_every_inner_output_and_draws_nothing():
    module = module_for("gru", 2, dropout=1.0)
    x, states, params = leaves_and_call("gru", module, True, False, True)
    torch.manual_seed(3)
    ours = run(F.gru, "gru", x, states, params, module, False, train=True, dropout=1.0)
    after = torch.rand(1)
    torch.manual_seed(3)
    theirs = run(torch_op("gru"), "gru", x, states, params, module, False, train=True, dropout=1.0)
    assert torch.equal(torch.rand(1), after)
    assert_same_outputs_and_gradients(ours, theirs, [x, *states, *params])


# --------------------------------------------------------------------------- against the composed cell equations


def composed(kind: str):
    """The recurrence from torch ops in a Python loop (autograd differentiates it), over unbatched or batched,
    time-major or batch_first input: the "functional composition" reference."""
    from handgrad.benchmarks.recurrent import composed_stack

    def op(x, hx, params, bias, layers, dropout, train, bidirectional, batch_first):
        states = list(hx) if kind == "lstm" else [hx]
        if x.dim() == 2:
            x, states = x.unsqueeze(1 - batch_first), [s.unsqueeze(1) for s in states]
        if batch_first:
            x = x.transpose(0, 1)
        output, finals = composed_stack(kind, x, states, params, bias, layers, bidirectional)
        if batch_first:
            output = output.transpose(0, 1)
        if hx[0].dim() == 2 if kind == "lstm" else hx.dim() == 2:
            output, finals = output.squeeze(1 - batch_first), [f.squeeze(1) for f in finals]
        return (output, *finals)
    return op


@pytest.mark.parametrize("options", OPTIONS[::5], ids=OPTION_IDS[::5])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_autograd_through_the_composed_cell_equations(kind, options):
    num_layers, bidirectional, bias, batch_first, initial, batched = options
    module = module_for(kind, num_layers, bidirectional, bias)
    x, states, params = leaves_and_call(kind, module, batched, batch_first, initial)
    ours = run(F.__dict__[kind], kind, x, states, params, module, batch_first)
    theirs = run(composed(kind), kind, x, states, params, module, batch_first)
    assert_same_outputs_and_gradients(ours, theirs, [x, *states, *params])


# --------------------------------------------------------------------------- second derivatives, forward mode


def small_call(kind, proj_size=0, dropout=0.0, batched=True):
    torch.manual_seed(0)
    module = module_for(kind, 2, True, proj_size=proj_size, input_size=2, hidden=2, dropout=dropout)
    x, states, params = leaves_and_call(kind, module, batched, False, True, length=3, batch=2)

    def fn(x, *rest):
        states, params = rest[:len(rest) - len(module._flat_weights)], rest[len(rest) - len(module._flat_weights):]
        with torch.random.fork_rng():
            torch.manual_seed(5)
            return run(F.__dict__[kind], kind, x, states, list(params), module, False, train=dropout > 0,
                       dropout=dropout)
    return fn, (x, *[s.requires_grad_() for s in states], *params)


@pytest.mark.parametrize("kind, proj_size, dropout", [("rnn_tanh", 0, 0.0), ("rnn_relu", 0, 0.3), ("lstm", 0, 0.3),
                                                      ("lstm", 1, 0.0), ("gru", 0, 0.3)])
def test_gradgradcheck(kind, proj_size, dropout):
    """The forward's activations are extra differentiable outputs whose gradients backward adds (rule R1), so
    differentiating backward's own formulas is exact."""
    fn, inputs = small_call(kind, proj_size, dropout)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_gradient_penalty_equals_torchs(kind):
    """d/dparams of |d loss / d x|^2 through the whole stack, ours against torch's own (double-backward) op."""
    module = module_for(kind, 2, True)
    results = []
    for op in (F.__dict__[kind], torch_op(kind)):
        x, states, params = leaves_and_call(kind, module, True, False, True)
        output = run(op, kind, x, states, params, module, False)[0]
        (grad_x,) = torch.autograd.grad((output * output.detach().cos()).sum(), x, create_graph=True)
        results.append(torch.autograd.grad(grad_x.pow(2).sum(), [x, *states, *params]))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind, proj_size, dropout, batched", [
    ("rnn_tanh", 0, 0.0, True), ("rnn_relu", 0, 0.0, False), ("lstm", 0, 0.3, True), ("lstm", 1, 0.0, False),
    ("gru", 0, 0.3, True), ("gru", 0, 0.0, False)])
def test_forward_mode_jvp(kind, proj_size, dropout, batched):
    fn, inputs = small_call(kind, proj_size, dropout, batched)
    assert torch.autograd.gradcheck(fn, inputs, check_forward_ad=True, check_backward_ad=False,
                                    check_undefined_grad=False)


@pytest.mark.parametrize("kind", ["lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell"])
def test_cells_gradgradcheck_and_jvp(kind):
    g = torch.Generator().manual_seed(0)
    gates = RECURRENT_OPS[kind[:-5]].gates
    x, h, c = (torch.randn(2, n, dtype=torch.float64, generator=g, requires_grad=True) for n in (3, 2, 2))
    params = [torch.randn(*s, dtype=torch.float64, generator=g, requires_grad=True)
              for s in ((gates * 2, 3), (gates * 2, 2), (gates * 2,), (gates * 2,))]

    def fn(x, h, c, *params):
        return getattr(F, kind)(x, (h, c) if kind == "lstm_cell" else h, *params)
    assert torch.autograd.gradgradcheck(fn, (x, h, c, *params))
    assert torch.autograd.gradcheck(fn, (x, h, c, *params), check_forward_ad=True, check_backward_ad=False,
                                    check_undefined_grad=False)


def test_only_the_final_state_used():
    """output unused (its gradient None): the backward starts from h_n and c_n alone."""
    module = module_for("lstm", 2, True)
    results = []
    for op in (F.lstm, torch_op("lstm")):
        x, states, params = leaves_and_call("lstm", module, True, False, True)
        _, h_n, c_n = run(op, "lstm", x, states, params, module, False)
        results.append(torch.autograd.grad(c_n.sum(), [x, *states, *params]))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- errors name the value and the fix


def lstm_args(**changes):
    module = module_for("lstm", 2, True)
    args = dict(input=torch.randn(5, 3, 3, dtype=torch.float64), hx=[torch.zeros(4, 3, 4, dtype=torch.float64)] * 2,
                params=module._flat_weights, has_biases=True, num_layers=2, dropout=0.0, train=False,
                bidirectional=True, batch_first=False)
    args.update(changes)
    return args


@pytest.mark.parametrize("changes, error, pattern", [
    (dict(input=torch.randn(5, 3, 3, 1, dtype=torch.float64)), ValueError,
     r"lstm: expected input of shape \(T, N, H_in\).*got shape \(5, 3, 3, 1\)"),
    (dict(dropout=1.5), ValueError, r"lstm: dropout must be a probability in \[0, 1\], got 1.5"),
    (dict(num_layers=1), ValueError, r"expected 8 parameters \(num_layers=1 x 2 direction\(s\).*got 16.*_flat_weights"),
    (dict(hx=[torch.zeros(4, 2, 4, dtype=torch.float64)] * 2), RuntimeError,
     r"lstm: h_0 has shape \(4, 2, 4\), expected \(4, 3, 4\).*pass h_0 of shape \(4, 3, 4\)"),
    (dict(hx=[torch.zeros(2, 3, 4, dtype=torch.float64)] * 2), RuntimeError,
     r"expected \(4, 3, 4\).*num_layers \* directions = 4"),
    (dict(input=torch.randn(5, 3, 2, dtype=torch.float64)), RuntimeError,
     r"lstm: weight_ih_l0 has shape \(16, 3\), expected \(16, 2\) \(the input's last dimension is its input_size\)"),
    (dict(input=torch.randn(5, 3, 3)), ValueError,
     r"input is torch.float32 on cpu but a state or parameter is torch.float64.*input.to\(...\).*module.to\(...\)"),
])
def test_sequence_errors(changes, error, pattern):
    with pytest.raises(error, match=pattern):
        F.lstm(**lstm_args(**changes))


@pytest.mark.parametrize("call, error, pattern", [
    (lambda x, h, w: F.gru_cell(x[:, :2], h, *w), RuntimeError,
     r"gru_cell: input has inconsistent input_size: got 2 expected 3; w_ih of shape \(6, 3\)"),
    (lambda x, h, w: F.gru_cell(x, h[:1], *w), RuntimeError,
     r"Input batch size 4 doesn't match hidden0 batch size 1; pass one state row per input row"),
    (lambda x, h, w: F.gru_cell(x, torch.zeros(4, 3, dtype=torch.float64), *w), RuntimeError,
     r"hidden0 has inconsistent hidden_size: got 3, expected 2; w_hh of shape \(6, 2\)"),
    (lambda x, h, w: F.gru_cell(x, h[0], *w), ValueError, r"input is 2-D but hx\[0\] is 1-D; pass both batched"),
    (lambda x, h, w: F.gru_cell(x, h, w[0], w[1], w[2]), ValueError, r"got b_ih without the other bias; pass both"),
    (lambda x, h, w: F.gru_cell(x[None], h, *w), ValueError, r"expected input of shape \(N, H_in\).*got shape"),
])
def test_cell_errors(call, error, pattern):
    g = torch.Generator().manual_seed(0)
    x, h = torch.randn(4, 3, dtype=torch.float64, generator=g), torch.randn(4, 2, dtype=torch.float64, generator=g)
    weights = [torch.randn(*s, dtype=torch.float64, generator=g) for s in ((6, 3), (6, 2), (6,), (6,))]
    with pytest.raises(error, match=pattern):
        call(x, h, weights)


def test_flat_parameters_follow_torchs_order():
    module = module_for("lstm", 2, True, proj_size=2)
    named = dict(module.named_parameters())
    shuffled = dict(reversed(list(named.items())))
    assert [id(p) for p in flat_parameters(shuffled, 2, True)] == [id(p) for p in module._flat_weights]


def test_table_adapter_returns_each_output():
    module = module_for("lstm")
    inputs = dict(input=torch.randn(3, 2, 3, dtype=torch.float64), **dict(module.named_parameters()))
    output, h_n, c_n = (recurrent_by_name(**inputs, kind="lstm", returns=r) for r in ("output", "h_n", "c_n"))
    torch.testing.assert_close(output[-1], h_n[0])
    assert c_n.shape == (1, 2, 4)


# --------------------------------------------------------------------------- torch.func


@pytest.mark.parametrize("kind, options", [
    ("rnn_tanh", dict(num_layers=2, bidirectional=True)), ("rnn_relu", dict(batch_first=True)),
    ("lstm", dict(num_layers=2, bidirectional=True)), ("lstm", dict(proj_size=1, batch_first=True)),
    ("gru", dict(num_layers=2, bidirectional=True)), ("gru", dict(batched=False))])
def test_per_sample_gradients_under_vmap(kind, options):
    """torch.func.vmap(grad) of handgrad's op over 3 samples (batched input and initial states, shared parameters)
    equals torch's op differentiated one sample at a time: torch's own op does not run under vmap (its CPU
    cells add in place), so this is the per-sample reference (handgrad.verify's rows opt out of theirs)."""
    batched = options.pop("batched", True)
    batch_first = options.pop("batch_first", False)
    proj_size = options.pop("proj_size", 0)
    module = module_for(kind, proj_size=proj_size, **options)
    samples = [leaves_and_call(kind, module, batched, batch_first, True, seed=seed) for seed in range(3)]
    params = [p.detach() for p in samples[0][2]]
    shape = run(F.__dict__[kind], kind, *samples[0], module, batch_first)[0].shape  # one sample's output
    weights = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))

    def loss(op, x, states, *params):  # a weighted sum of the output, so no symmetry hides an error
        return (run(op, kind, x, list(states), list(params), module, batch_first)[0] * weights).sum()

    argnums = tuple(range(1 + len(params)))
    xs = torch.stack([x.detach() for x, _, _ in samples])
    states = tuple(torch.stack([s[j].detach() for _, s, _ in samples]) for j in range(len(samples[0][1])))
    ours = torch.func.vmap(torch.func.grad(lambda x, s, *p: loss(F.__dict__[kind], x, s, *p), argnums),
                           in_dims=(0, 0, *[None] * len(params)))(xs, states, *params)
    for i, (x, s, _) in enumerate(samples):
        expected = torch.func.grad(lambda x, s, *p: loss(torch_op(kind), x, s, *p), argnums)(
            x.detach(), tuple(t.detach() for t in s), *params)
        for a, b in zip(ours, expected, strict=True):  # the input's, the states' (a tuple), the parameters'
            torch.testing.assert_close(tuple(t[i] for t in a) if isinstance(a, tuple) else a[i], b)
