"""Rows of the recurrent layers (rnn_tanh, rnn_relu, lstm with and without projections, gru, and their one-step
cells), each against torch's own op (torch.rnn_tanh, torch.lstm, ...: what torch.nn's layers call). torch has
no OpInfo for these ops; its ModuleInfos for nn.RNN, GRU, LSTM and the cells run on handgrad.nn's twins.
Every combination of the options, every output at once, runs in tests/test_functional_recurrent.py."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch

import handgrad.functional as F
from handgrad.verify.compare import Inputs, OpCase
from handgrad.verify.inputs import randn, seeded
from handgrad.verify.known import KnownFailure


class RecurrentOps(NamedTuple):
    hand: Callable        # handgrad's op over a sequence
    torch: Callable       # torch's (what torch.nn's layer calls)
    hand_cell: Callable   # handgrad's one-step op
    torch_cell: Callable  # torch's
    gates: int            # gate blocks per cell: weight_ih is (gates * hidden, input_size)


RECURRENT_OPS = {
    "rnn_tanh": RecurrentOps(F.rnn_tanh, torch.rnn_tanh, F.rnn_tanh_cell, torch.rnn_tanh_cell, 1),
    "rnn_relu": RecurrentOps(F.rnn_relu, torch.rnn_relu, F.rnn_relu_cell, torch.rnn_relu_cell, 1),
    "lstm": RecurrentOps(F.lstm, torch.lstm, F.lstm_cell, torch.lstm_cell, 4),
    "gru": RecurrentOps(F.gru, torch.gru, F.gru_cell, torch.gru_cell, 3),
}
PARAMETER_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def flat_parameters(params: dict, num_layers: int, bidirectional: bool) -> list[torch.Tensor]:
    """weight_ih_l0, weight_hh_l0, bias_ih_l0, ..., weight_hr_l1_reverse (torch.nn's names, as keyword
    arguments, so the table names each gradient) -> the flat list in torch.nn's ``_flat_weights`` order."""
    suffixes = ("", "_reverse") if bidirectional else ("",)
    return [params[key] for layer in range(num_layers) for suffix in suffixes
            for key in (f"{name}_l{layer}{suffix}" for name in PARAMETER_NAMES) if key in params]


def recurrent_by_name(input, h_0=None, c_0=None, kind="lstm", returns="output", num_layers=1, bidirectional=False,
                      batch_first=False, dropout=0.0, train=False, reference=False, **params):
    """One of (output, h_n, c_n) of handgrad's recurrent op (or torch's, with ``reference``), ``returns`` naming
    it; missing initial states are zeros, unbatched (T, H_in) input is unsqueezed for torch's ops."""
    hand, theirs = RECURRENT_OPS[kind].hand, RECURRENT_OPS[kind].torch
    flat = flat_parameters(params, num_layers, bidirectional)
    has_biases = "bias_ih_l0" in params
    batched = input.dim() == 3
    size = {"h_0": flat[-1].shape[0] if "weight_hr_l0" in params else flat[1].shape[1], "c_0": flat[1].shape[0] // 4}
    batch = (input.shape[0 if batch_first else 1],) if batched else ()
    states = [s if s is not None else torch.zeros(num_layers * (1 + bidirectional), *batch, size[n], dtype=input.dtype)
              for n, s in (("h_0", h_0), ("c_0", c_0))[:1 + (kind == "lstm")]]
    if reference and not batched:
        input, states = input.unsqueeze(1 - batch_first), [s.unsqueeze(1) for s in states]
    fn = theirs if reference else hand
    with warnings.catch_warnings():  # torch's CPU LSTM with projections notes that it leaves oneDNN
        warnings.filterwarnings("ignore", "LSTM with projections is not supported with oneDNN")
        outputs = fn(input, states if kind == "lstm" else states[0], flat, has_biases, num_layers, dropout, train,
                     bidirectional, batch_first)
    chosen = outputs[("output", "h_n", "c_n").index(returns)]
    if reference and not batched:
        chosen = chosen.squeeze(1 - batch_first if returns == "output" else 1)
    return chosen


def recurrent_reference(input, **kwargs):
    """torch's own op (torch.rnn_tanh, torch.rnn_relu, torch.lstm, torch.gru: what torch.nn's layers call)."""
    return recurrent_by_name(input, reference=True, **kwargs)


def cell_by_name(input, hx, cx=None, kind="lstm", returns="h", reference=False, **params):
    """h' (or c', ``returns``) of handgrad's cell op, or of torch's with ``reference`` (unbatched input unsqueezed)."""
    cell = RECURRENT_OPS[kind].torch_cell if reference else RECURRENT_OPS[kind].hand_cell
    state = (hx, cx) if kind == "lstm" else hx
    batched = input.dim() == 2
    if reference and not batched:
        input, state = input[None], (hx[None], cx[None]) if kind == "lstm" else hx[None]
    result = cell(input, state, params["weight_ih"], params["weight_hh"], params.get("bias_ih"), params.get("bias_hh"))
    chosen = result[("h", "c").index(returns)] if kind == "lstm" else result
    return chosen if batched or not reference else chosen[0]


def _recurrent_inputs(kind: str, num_layers: int = 1, bidirectional: bool = False, bias: bool = True,
                      batch_first: bool = False, batched: bool = True, initial: bool = True, proj_size: int = 0,
                      length: int = 3, batch: int = 2, input_size: int = 2, hidden: int = 2):
    """A sequence, initial states (or None) and every parameter, named and shaped as torch.nn's layer holds them."""
    gates, directions = RECURRENT_OPS[kind].gates, 1 + bidirectional
    out = proj_size or hidden

    def make(dtype, g):
        shape = ((batch, length) if batch_first else (length, batch)) if batched else (length,)
        inputs: Inputs = dict(input=randn(*shape, input_size, dtype=dtype, generator=g))
        lead = (num_layers * directions, *((batch,) if batched else ()))
        inputs["h_0"] = randn(*lead, out, dtype=dtype, generator=g) if initial else None
        if kind == "lstm":
            inputs["c_0"] = randn(*lead, hidden, dtype=dtype, generator=g) if initial else None
        for layer in range(num_layers):
            for suffix in ("", "_reverse")[:directions]:
                d_in = input_size if layer == 0 else directions * out
                sizes = dict(weight_ih=(gates * hidden, d_in), weight_hh=(gates * hidden, out),
                             bias_ih=(gates * hidden,), bias_hh=(gates * hidden,), weight_hr=(out, hidden))
                for name, size in sizes.items():
                    if (name.startswith("bias") and not bias) or (name == "weight_hr" and not proj_size):
                        continue
                    inputs[f"{name}_l{layer}{suffix}"] = randn(*size, dtype=dtype, generator=g, scale=0.5)
        return inputs
    return make


def _cell_inputs(kind: str, bias: bool = True, batched: bool = True, batch: int = 3, input_size: int = 3,
                 hidden: int = 4):
    gates = RECURRENT_OPS[kind].gates

    def make(dtype, g):
        lead = (batch,) if batched else ()
        inputs: Inputs = dict(input=randn(*lead, input_size, dtype=dtype, generator=g),
                              hx=randn(*lead, hidden, dtype=dtype, generator=g))
        if kind == "lstm":
            inputs["cx"] = randn(*lead, hidden, dtype=dtype, generator=g)
        sizes = dict(weight_ih=(gates * hidden, input_size), weight_hh=(gates * hidden, hidden),
                     **(dict(bias_ih=(gates * hidden,), bias_hh=(gates * hidden,)) if bias else {}))
        inputs.update({name: randn(*size, dtype=dtype, generator=g, scale=0.5) for name, size in sizes.items()})
        return inputs
    return make


# torch's CPU RNN ops and cells add in place inside their composite cells (linear_hh(h).add_(gx)), which vmap
# refuses where h is unbatched: there is no torch reference for per-sample gradients. handgrad's vmap(grad) is
# checked against torch's op run one sample at a time instead (tests/test_functional_recurrent.py).
NO_VMAP_REFERENCE = {"vmap_grad": "torch fails: torch's own op fails under vmap (its CPU cell adds in place, "
                                  "linear_hh(h).add_(gx), \"output with shape [N, H] doesn't match the broadcast "
                                  "shape\")"}


def _recurrent_cases(kind: str) -> list[OpCase]:
    """Rows that between them take every option: layers 1-2, bidirectional, batch_first, bias, h_0 given or
    not, unbatched, dropout (seeded), and every output (output, h_n, c_n); tests/test_functional_recurrent.py
    runs every combination."""
    last_state = "c_n" if kind == "lstm" else "h_n"
    rows: list[tuple[str, dict, dict]] = [
        ("", dict(), {}),
        ("2 layers, bidirectional", dict(num_layers=2, bidirectional=True), dict(returns="h_n")),
        ("batch_first, no bias, no h_0", dict(batch_first=True, bias=False, initial=False), {}),
        ("unbatched, bidirectional", dict(batched=False, bidirectional=True), dict(returns=last_state)),
        ("2 layers, batch_first, bidirectional, no h_0", dict(num_layers=2, batch_first=True, bidirectional=True,
                                                              initial=False), dict(returns=last_state)),
    ]
    cases = [OpCase(f"{kind}({label or '1 layer'})", recurrent_by_name, recurrent_reference,
                    _recurrent_inputs(kind, **options), dict(kind=kind, **kwargs, **{
                        k: options[k] for k in ("num_layers", "bidirectional", "batch_first") if k in options}),
                    opt_out=NO_VMAP_REFERENCE)
             for label, options, kwargs in rows]
    cases.append(OpCase(f"{kind}(3 layers, dropout=0.4, training, seeded)", seeded(recurrent_by_name),
                        seeded(recurrent_reference), _recurrent_inputs(kind, num_layers=3),
                        dict(kind=kind, num_layers=3, dropout=0.4, train=True), opt_out=NO_VMAP_REFERENCE))
    cases += [OpCase(f"{kind}_cell{label}", cell_by_name, functools.partial(cell_by_name, reference=True),
                     _cell_inputs(kind, **options), dict(kind=kind, **kwargs), opt_out=NO_VMAP_REFERENCE)
              for label, options, kwargs in [("", {}, {}), ("(unbatched, no bias)", dict(batched=False, bias=False),
                                                            dict(returns="c") if kind == "lstm" else {})]]
    return cases


CASES: list[OpCase] = [
    *(case for kind in RECURRENT_OPS for case in _recurrent_cases(kind)),
    OpCase("lstm(proj_size=2, 2 layers, bidirectional)", recurrent_by_name, recurrent_reference,
           _recurrent_inputs("lstm", num_layers=2, bidirectional=True, proj_size=2, hidden=3),
           dict(kind="lstm", num_layers=2, bidirectional=True), opt_out=NO_VMAP_REFERENCE),
    OpCase("lstm(proj_size=2, unbatched, no h_0) -> h_n", recurrent_by_name, recurrent_reference,
           _recurrent_inputs("lstm", batched=False, initial=False, proj_size=2, hidden=3),
           dict(kind="lstm", returns="h_n"), opt_out=NO_VMAP_REFERENCE),
]

TORCH_OPS: dict[str, tuple[str, ...]] = {}
# handgrad ops whose torch namesake has no OpInfo (torch tests its RNNs through nn's ModuleInfos, below)
WITHOUT_OPINFO: tuple[str, ...] = ("rnn_tanh", "rnn_relu", "lstm", "gru", "rnn_tanh_cell", "rnn_relu_cell",
                                   "lstm_cell", "gru_cell")
TORCH_MODULES: tuple[str, ...] = ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")
KNOWN_FAILURES: list[KnownFailure] = []
