"""Recurrent layers, forward + backward over a sequence: handgrad's hand-written backward through time
against autograd through the same cell equations, and against torch's native kernels.

    python -m handgrad.benchmarks.recurrent                         # LSTM and GRU, markdown table to stdout
    python -m handgrad.benchmarks.recurrent --kinds lstm --repeats 50 --length 16

What is timed: one forward and backward (``output.backward(g)`` with g fixed) of one layer over a whole
sequence, default T=64 steps, batch 32, input 64, hidden 128, float32, three contenders on the same input
and parameters:
- handgrad: ``handgrad.functional.lstm`` / ``gru`` (the hand-written Functions);
- autograd: the same cell equations from torch ops in a Python loop (``composed_stack``: the input
  projection x W_ih^T for every step in one matmul, as handgrad does, then per step the recurrent matmul
  and the gates), differentiated by autograd;
- native: ``torch.lstm`` / ``torch.gru``, what torch.nn.LSTM / GRU call (on CPU, float32: oneDNN's LSTM
  kernel; torch's C++ GRU cell loop).
One intra-op thread (``torch.set_num_threads(1)``). The contenders alternate call by call, the order
rotating every repeat, so a burst of load on a shared machine hits all alike. Reported: the median time of
each, the median of the paired ratios handgrad / autograd (target <= 1.0) and handgrad / native, and the
bytes each saves for backward (every tensor autograd keeps, counted once per storage; the input and the
parameters, alive anyway, excluded).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import torch
import torch.nn.functional as torch_F

import handgrad.functional as F
from handgrad.benchmarks.timing import paired_ratio

SIZES = dict(length=64, batch=32, input_size=64, hidden=128)
NATIVE: dict[str, Callable] = {"lstm": torch.lstm, "gru": torch.gru}  # what torch.nn.LSTM / GRU call


# --------------------------------------------------------------------------- the autograd reference


def composed_step(kind: str, gx: torch.Tensor, state: list[torch.Tensor], w_hh, b_hh, w_hr=None) -> list:
    """One step of the cell equations in torch ops, from gx = x_t W_ih^T + b_ih (torch.nn's documented forms)."""
    h = state[0]
    gh = torch_F.linear(h, w_hh, b_hh)
    if kind == "lstm":
        i, f, g, o = (gx + gh).chunk(4, 1)
        c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return [h if w_hr is None else h @ w_hr.T, c]
    if kind == "gru":
        x_r, x_z, x_n = gx.chunk(3, 1)
        h_r, h_z, h_n = gh.chunk(3, 1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return [(1 - z) * n + z * h]
    return [(torch.tanh if kind == "rnn_tanh" else torch.relu)(gx + gh)]


def composed_stack(kind: str, x: torch.Tensor, states: list[torch.Tensor], params: list[torch.Tensor],
                   has_biases: bool = True, num_layers: int = 1, bidirectional: bool = False):
    """A stack of layers over time-major x (T, N, H_in), states (L * D, N, .), params in torch.nn's
    ``_flat_weights`` order: (output (T, N, D * P), [h_n, (c_n)]), every op differentiated by autograd."""
    directions = 2 if bidirectional else 1
    per = len(params) // (num_layers * directions)
    finals: list[list[torch.Tensor]] = [[] for _ in states]
    for layer in range(num_layers):
        outputs = []
        for d in range(directions):
            k = layer * directions + d
            w = params[k * per:(k + 1) * per]
            b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
            w_hr = w[-1] if per in (3, 5) and kind == "lstm" else None
            gx = torch_F.linear(x, w[0], b_ih)  # (T, N, G*H): every step's input projection in one matmul
            state = [s[k] for s in states]
            hs = [torch.empty(0)] * len(x)
            for t in (reversed(range(len(x))) if d else range(len(x))):
                state = composed_step(kind, gx[t], state, w[1], b_hh, w_hr)
                hs[t] = state[0]
            outputs.append(torch.stack(hs))
            for j, s in enumerate(state):
                finals[j].append(s)
        x = torch.cat(outputs, 2)
    return x, [torch.stack(f) for f in finals]


# --------------------------------------------------------------------------- the contenders


@dataclass
class Contenders:
    """The three contenders on the same tensors: ``forward(name)`` runs one forward, ``runs[name]()`` one
    forward and backward (gradients cleared after)."""

    forward: Callable[[str], torch.Tensor]
    runs: dict[str, Callable[[], None]]
    leaves: list[torch.Tensor]


def contenders(kind: str, sizes: dict, seed: int = 0) -> Contenders:
    g = torch.Generator().manual_seed(seed)
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](sizes["input_size"], sizes["hidden"])
    params = [p.detach().requires_grad_() for p in module._flat_weights]
    x = torch.randn(sizes["length"], sizes["batch"], sizes["input_size"], generator=g).requires_grad_()
    h0 = [torch.zeros(1, sizes["batch"], sizes["hidden"]) for _ in range(2 if kind == "lstm" else 1)]
    grad = torch.randn(sizes["length"], sizes["batch"], sizes["hidden"], generator=g)
    hx = h0 if kind == "lstm" else h0[0]

    def forward(name: str) -> torch.Tensor:
        if name == "handgrad":
            return getattr(F, kind)(x, hx, params, True, 1, 0.0, False, False, False)[0]
        if name == "autograd":
            return composed_stack(kind, x, h0, params)[0]
        return NATIVE[kind](x, hx, params, True, 1, 0.0, False, False, False)[0]

    def run(name: str) -> Callable[[], None]:
        def forward_and_backward() -> None:
            forward(name).backward(grad)
            for t in (x, *params):
                t.grad = None
        return forward_and_backward
    return Contenders(forward, {name: run(name) for name in ("handgrad", "autograd", "native")}, [x, *params])


def saved_bytes(forward, leaves: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for the backward of ``forward()``, leaves excluded."""
    excluded = {t.untyped_storage().data_ptr() for t in leaves}
    storages: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in excluded:
            storages[storage.data_ptr()] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = forward()
    del output
    return sum(storages.values())


def times(runs: dict, repeats: int, warmup: int = 3) -> dict[str, list[float]]:
    """Seconds per call of each contender; they alternate, the order rotating every repeat."""
    names = list(runs)
    for run in runs.values():
        for _ in range(warmup):
            run()
    result: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            runs[name]()
            result[name].append(time.perf_counter() - start)
    return result


def recurrent_rows(kinds=("lstm", "gru"), repeats: int = 30, sizes: dict | None = None) -> list[dict]:
    """One row per layer kind: median ms of each contender, paired ratios, saved bytes."""
    sizes = sizes or SIZES
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [row(kind, repeats, sizes) for kind in kinds]
    finally:
        torch.set_num_threads(threads)


def row(kind: str, repeats: int, sizes: dict) -> dict:
    c = contenders(kind, sizes)
    t = times(c.runs, repeats)
    result = dict(kind=kind, repeats=repeats, **sizes)
    for name in c.runs:
        result[f"{name}_ms"] = 1e3 * statistics.median(t[name])
        result[f"{name}_saved_mb"] = saved_bytes(lambda name=name: c.forward(name), c.leaves) / 2**20
    for other in ("autograd", "native"):
        result[f"ratio_{other}"] = paired_ratio(t["handgrad"], t[other])[0]
    return result


def markdown(rows: list[dict]) -> str:
    lines = ["| layer | handgrad ms | autograd ms | native ms | handgrad / autograd | handgrad / native "
             "| saved MB: handgrad / autograd / native |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kind'].upper()} | {r['handgrad_ms']:.1f} | {r['autograd_ms']:.1f} | {r['native_ms']:.1f} "
                     f"| {r['ratio_autograd']:.2f} | {r['ratio_native']:.2f} | {r['handgrad_saved_mb']:.1f} / "
                     f"{r['autograd_saved_mb']:.1f} / {r['native_saved_mb']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=["lstm", "gru"], choices=["lstm", "gru"])
    parser.add_argument("--repeats", type=int, default=30)
    for name, default in SIZES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    args = parser.parse_args(argv)
    sizes = {name: getattr(args, name) for name in SIZES}
    rows = recurrent_rows(tuple(args.kinds), args.repeats, sizes)
    print(f"{date.today()}, torch {torch.__version__}, one thread; forward + backward of one layer, "
          f"T={sizes['length']}, batch {sizes['batch']}, input {sizes['input_size']}, hidden {sizes['hidden']}, "
          f"float32; medians of {args.repeats} interleaved calls\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
