"""Recurrent networks (RNN, LSTM, GRU): how a call is described, the arithmetic the cells share, and
the wrappers' side (argument checks, dropout masks, the Function call).

A recurrent layer runs a cell along the time axis, in one direction or in both; a stack of
num_layers such layers feeds each layer's output (dropped out while training) to the next.
- ``Stack`` describes one call: layers, directions, dropout, and the layout of the caller's
  tensors (time-major, batch_first, unbatched, or a single cell step, as torch's *_cell ops);
- ``Cell`` is what a cell file (rnn.py, lstm.py, gru.py) hands the stack (recurrent_stack.py):
  its forward, backward through time and jvp over one direction;
- ``call_stack`` / ``call_cell`` check the arguments, draw the dropout masks as torch does, and
  apply the Function.

Reference: torch.nn.RNN / LSTM / GRU's documentation (the stack's semantics, parameter layout).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from handgrad.functional.function import TwinnedFunction


class Weights(NamedTuple):
    """One direction of one layer, in torch's ``_flat_weights`` order (absent ones None)."""

    # The same record carries the weights' gradients, tangents (None: zero) and needs_input_grad flags.
    ih: Any              # (G*H, H_in)   G: gates per cell (RNN 1, GRU 3, LSTM 4)
    hh: Any              # (G*H, P)      P = H, or proj_size (LSTM)
    b_ih: Any            # (G*H,)
    b_hh: Any            # (G*H,)
    hr: Any = None       # (P, H)        LSTM with proj_size > 0


@dataclass(frozen=True)
class Cell:
    """A recurrent cell, as the stack calls it (see rnn.py, lstm.py, gru.py).

    forward_direction(x (T, N, H_in), states0, weights, reverse) -> (hs, finals, extras): the hidden
        states of every step in time order, the final states, and the extra outputs (T, N, .).
    backward_direction(x, states0, weights, reverse, h_all, extras, grad_h_all, grad_finals,
        grad_extras, needs_weights, needs_x) -> (grad_x, grad_states0, grad_weights as a Weights).
    jvp_direction(x, states0, weights, reverse, h_all, extras, t_x, t_states0, t_weights) ->
        (t_h_all (T, N, P), t_finals, t_extras): tangents, None standing for zero on the way in.
    """

    name: str
    states: int  # 1 (h), or 2 (h, c) for LSTM
    extras: int  # extra outputs per layer and direction
    forward_direction: Callable
    backward_direction: Callable
    jvp_direction: Callable


@dataclass(frozen=True)
class Stack:
    """What one call of a recurrent Function computes, and how the caller's tensors are laid out."""

    num_layers: int
    bidirectional: bool
    has_biases: bool
    projections: bool       # LSTM's proj_size > 0: a w_hr per direction
    batch_first: bool       # (N, T, .) instead of (T, N, .); ignored when not batched, as torch does
    batched: bool           # False: an unbatched (T, H_in) sequence, or a (H_in,) cell input
    cell: bool              # one step of one layer, (N, H_in) -> h' (and c'), as torch's *_cell ops
    dropout_scale: float | None  # 1 / (1 - p) with a bool mask per inner layer; None: no dropout
    nonlinearity: str = "tanh"   # RNN's phi: tanh or relu

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def masks(self) -> int:
        return 0 if self.dropout_scale is None else self.num_layers - 1

    @property
    def per_direction(self) -> int:
        return 2 + 2 * self.has_biases + self.projections

    def sequence(self, t: torch.Tensor) -> torch.Tensor:
        """The caller's sequence (input, output, or its gradient) as a time-major (T, N, .) view."""
        if self.cell:
            return t.unsqueeze(0) if self.batched else t.view(1, 1, -1)
        if not self.batched:
            return t.unsqueeze(1)
        return t.transpose(0, 1) if self.batch_first else t

    def states(self, t: torch.Tensor) -> torch.Tensor:
        """The caller's states (h_0, h_n, or a gradient) as a (L * D, N, .) view."""
        if self.cell:
            return t.unsqueeze(0) if self.batched else t.view(1, 1, -1)
        return t if self.batched else t.unsqueeze(1)

    def user_sequence(self, t: torch.Tensor) -> torch.Tensor:
        """A new tensor (never a view: the caller may modify it in place) in the caller's layout."""
        if not self.batched:
            return t.squeeze(1).clone()
        return t.transpose(0, 1).clone(memory_format=torch.contiguous_format) if self.batch_first else t

    def user_states(self, finals: list[torch.Tensor]) -> torch.Tensor:
        """The final states of every layer and direction, (L * D, N, .), in the caller's layout."""
        if self.cell:
            return finals[0] if self.batched else finals[0][0].clone()
        return torch.stack(finals) if self.batched else torch.cat(finals)  # (L * D, N, .) or (L * D, .)

    def weights(self, params: Sequence[torch.Tensor | None]) -> list[Weights]:
        """The flat parameter list (torch's order) as one Weights per layer and direction."""
        k = self.per_direction
        grouped = []
        for start in range(0, len(params), k):
            w = list(params[start:start + k])
            w_ih, w_hh = w[0], w[1]
            b_ih, b_hh = (w[2], w[3]) if self.has_biases else (None, None)
            w_hr = w[-1] if self.projections else None
            grouped.append(Weights(w_ih, w_hh, b_ih, b_hh, w_hr))
        return grouped


# --------------------------------------------------------------------------- helpers the cells share


def steps(length: int, reverse: bool) -> range:
    """The time steps in the order a direction visits them."""
    return range(length - 1, -1, -1) if reverse else range(length)


def earlier(all_steps: torch.Tensor, initial: torch.Tensor, reverse: bool) -> torch.Tensor:
    """(T, N, .): at each step, the state the step started from (``initial`` at the direction's first step).

    Backward code takes its pieces of a tensor with split, chunk and unbind, never by indexing or slicing: their
    derivatives are cat and stack, where those of select and slice are aten's select_backward and
    slice_backward, which a double backward would then run (handgrad's backwards stay clear of aten's)."""
    length = len(all_steps)
    if reverse:
        return torch.cat((all_steps.split([1, length - 1])[1], initial.unsqueeze(0)))
    return torch.cat((initial.unsqueeze(0), all_steps.split([length - 1, 1])[0]))


def project_input(x: torch.Tensor, w_ih: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x W_ih^T + bias for every step at once: one (T * N, H_in) @ (H_in, G * H) matmul -> (T, N, G * H)."""
    rows = x.reshape(-1, x.shape[-1])
    product = rows @ w_ih.mT if bias is None else torch.addmm(bias, rows, w_ih.mT)
    return product.view(x.shape[0], x.shape[1], -1)


def project_hidden(h: torch.Tensor, w: Weights) -> torch.Tensor:
    """h W_hh^T + b_hh for one step: (N, P) -> (N, G * H)."""
    return h @ w.hh.mT if w.b_hh is None else torch.addmm(w.b_hh, h, w.hh.mT)


def input_weight_grads(d_gates: torch.Tensor, x: torch.Tensor, w_ih: torch.Tensor, needs_x: bool,
                       needs_w: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """grad_x = dA W_ih (T, N, H_in) and grad_W_ih = sum_t dA_t^T x_t (G*H, H_in), the sum over time and
    batch as one matmul of the (T * N) rows, for dA (T, N, G*H) the gradient of x W_ih^T."""
    rows = d_gates.reshape(-1, d_gates.shape[-1])
    grad_x = d_gates @ w_ih if needs_x else None
    grad_w = rows.mT @ x.reshape(-1, x.shape[-1]) if needs_w else None
    return grad_x, grad_w


def hidden_weight_grad(d_gates: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
    """grad_W_hh = sum_t dA_t^T h_{t-1} (G*H, P), as one matmul of the (T * N) rows."""
    return d_gates.reshape(-1, d_gates.shape[-1]).mT @ h_prev.reshape(-1, h_prev.shape[-1])


def plus(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """a + b, where None stands for a gradient that is zero (an output nobody used)."""
    if a is None:
        return b
    return a if b is None else a + b


def tangent_sum(shape: tuple, *terms: torch.Tensor | None) -> torch.Tensor | None:
    """The sum of the tangent terms that are not None (a bias's broadcast to ``shape``), or None if all are."""
    total = None
    for term in terms:
        if term is not None:
            total = term.expand(shape) if total is None else total + term
    return total


def projected(rows: torch.Tensor | None, weight: torch.Tensor | None) -> torch.Tensor | None:
    """rows W^T for (T, N, .) rows (one matmul), or None if either is None (a zero tangent)."""
    return None if rows is None or weight is None else project_input(rows, weight, None)


# --------------------------------------------------------------------------- the wrappers' side: checks, masks, call

States = tuple[torch.Tensor, ...]  # one direction's states: (h,), or (h, c) for LSTM; or its extras
MaybeTensors = Sequence[torch.Tensor | None]  # gradients or tangents of States (None: zero)

GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def call_stack(function: type[TwinnedFunction], cell: Cell, input: torch.Tensor, states: tuple,
               params: Sequence[torch.Tensor | None], has_biases: bool,
               num_layers: int, dropout: float, train: bool, bidirectional: bool, batch_first: bool) -> tuple:
    """Check the arguments of a whole-sequence call, draw the dropout masks, apply ``function``, and return the
    caller's outputs: (output, h_n) or (output, h_n, c_n)."""
    name = cell.name.lower()
    if input.dim() not in (2, 3):
        raise ValueError(f"{name}: expected input of shape (T, N, H_in), (N, T, H_in) with batch_first, or "
                         f"unbatched (T, H_in), got shape {tuple(input.shape)}")
    if not 0 <= dropout <= 1:
        raise ValueError(f"{name}: dropout must be a probability in [0, 1], got {dropout}")
    directions = 2 if bidirectional else 1
    per_direction = 2 + 2 * has_biases
    projections = cell.states == 2 and len(params) == num_layers * directions * (per_direction + 1)
    if len(params) != num_layers * directions * (per_direction + projections):
        raise ValueError(f"{name}: expected {num_layers * directions * per_direction} parameters (num_layers="
                         f"{num_layers} x {directions} direction(s) x {per_direction}: w_ih, w_hh"
                         f"{', b_ih, b_hh' if has_biases else ''}), got {len(params)}; pass the module's "
                         "_flat_weights, or set has_biases / num_layers / bidirectional to match them")
    batched = input.dim() == 3
    spec = Stack(num_layers, bidirectional, has_biases, projections, batch_first, batched, cell=False,
                 dropout_scale=None if not (train and dropout > 0 and num_layers > 1) else
                 (0.0 if dropout == 1 else 1 / (1 - dropout)), nonlinearity=cell.name[4:].lower())
    check_states(name, spec, input, states)
    check_params(name, cell, spec, input, states, params)
    length = input.shape[1 if batched and batch_first else 0]
    batch = input.shape[0 if batch_first else 1] if batched else 1
    masks = [dropout_mask((length, batch, directions * states[0].shape[-1]), dropout, input.device)
             for _ in range(spec.masks)]
    input, states, params = autocast_in_front(cell, spec, input, states, params)
    outputs = function.call(input, *states, spec, *masks, *params)
    return tuple(outputs[:1 + cell.states])


def call_cell(function: type[TwinnedFunction], cell: Cell, input: torch.Tensor, states: tuple, w_ih: torch.Tensor,
              w_hh: torch.Tensor, b_ih: torch.Tensor | None, b_hh: torch.Tensor | None) -> Any:
    """Check the arguments of one cell step, apply ``function``, and return h' (or (h', c'))."""
    name = f"{cell.name.lower()}_cell"
    if input.dim() not in (1, 2):
        raise ValueError(f"{name}: expected input of shape (N, H_in) or unbatched (H_in,), got shape "
                         f"{tuple(input.shape)}")
    if (b_ih is None) != (b_hh is None):
        raise ValueError(f"{name}: got {'b_ih' if b_hh is None else 'b_hh'} without the other bias; pass both "
                         "b_ih and b_hh, or neither")
    # torch's own checks, in its order and words (aten's check_rnn_cell_forward_input / _hidden), with the fix
    if input.shape[-1] != w_ih.shape[1]:
        raise RuntimeError(f"{name}: input has inconsistent input_size: got {input.shape[-1]} expected "
                           f"{w_ih.shape[1]}; w_ih of shape {tuple(w_ih.shape)} reads inputs of {w_ih.shape[1]} "
                           "features")
    for j, state in enumerate(states):
        if state.dim() != input.dim():
            raise ValueError(f"{name}: input is {input.dim()}-D but hx[{j}] is {state.dim()}-D; pass both batched "
                             "(N, H_in) and (N, H), or both unbatched (H_in,) and (H,)")
        if input.dim() == 2 and state.shape[0] != input.shape[0]:
            raise RuntimeError(f"{name}: Input batch size {input.shape[0]} doesn't match hidden{j} batch size "
                               f"{state.shape[0]}; pass one state row per input row")
        if state.shape[-1] != w_hh.shape[1]:
            raise RuntimeError(f"{name}: hidden{j} has inconsistent hidden_size: got {state.shape[-1]}, expected "
                               f"{w_hh.shape[1]}; w_hh of shape {tuple(w_hh.shape)} reads states of "
                               f"{w_hh.shape[1]} features")
    params = [w_ih, w_hh] + ([b_ih, b_hh] if b_ih is not None else [])
    spec = Stack(1, False, b_ih is not None, False, False, input.dim() == 2, cell=True, dropout_scale=None,
                 nonlinearity=cell.name[4:].lower())
    check_params(name, cell, spec, input, states, params)
    input, states, params = autocast_in_front(cell, spec, input, states, params)
    outputs = function.call(input, *states, spec, *params)
    return outputs[0] if cell.states == 1 else (outputs[0], outputs[1])


def autocast_in_front(cell: Cell, spec: Stack, input: torch.Tensor, states: tuple, params: Sequence) -> tuple:
    """Under autocast, what torch's own op does with its inputs. The recurrent Functions run as written
    (Autocast.AS_WRITTEN: their matmuls in the autocast dtype, the rest in the operands' dtypes), as torch's
    CPU GRU, RNN and cells do, being composed of ops. Where torch's op is one lower-precision kernel, the
    floating inputs are cast in front (autograd records the casts): CPU LSTM over a sequence (oneDNN's
    mkldnn_rnn_layer) and every recurrent op on CUDA (cuDNN, the fused cells)."""
    device = input.device.type
    if not torch.is_autocast_enabled(device) or (device == "cpu" and (cell.name != "LSTM" or spec.cell)):
        return input, states, params
    dtype = torch.get_autocast_dtype(device)
    cast = [t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t for t in (input, *states, *params)]
    return cast[0], tuple(cast[1:1 + len(states)]), cast[1 + len(states):]


def dropout_mask(shape: tuple, p: float, device: torch.device) -> torch.Tensor:
    """True = kept. Drawn as torch's CPU RNN draws it between layers (bernoulli_(1 - p) over the time-major
    layer output, one mask per inner layer, in layer order), so a seed drops the same elements; p = 1
    drops everything and, as in torch, draws nothing."""
    if p == 1:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    return torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(1 - p)


def check_states(name: str, spec: Stack, input: torch.Tensor, states: tuple) -> None:
    """The initial states' shapes, against the input's batch size and the stack's layers and directions."""
    layers = spec.num_layers * spec.directions
    batch = (input.shape[0 if spec.batch_first else 1],) if spec.batched else ()
    for label, state in zip(("h_0", "c_0"), states, strict=False):
        expected = (layers, *batch, state.shape[-1] if state.dim() else 0)
        if tuple(state.shape) != expected:
            layout = ("(N, T, H_in)" if spec.batch_first else "(T, N, H_in)") if spec.batched else "unbatched (T, H_in)"
            raise RuntimeError(
                f"{name}: {label} has shape {tuple(state.shape)}, expected {expected} for input of shape "
                f"{tuple(input.shape)} read as {layout} with num_layers * directions = {layers}; pass {label} of "
                f"shape {expected}, or leave the states out (zeros) in the nn module")


def check_params(name: str, cell: Cell, spec: Stack, input: torch.Tensor, states: tuple, params: Sequence) -> None:
    """Every parameter's shape, named as torch.nn names it (weight_ih_l0, bias_hh_l1_reverse, ...), and
    every tensor's dtype and device, against the input's."""
    autocast = torch.is_autocast_enabled(input.device.type)  # then autocast casts the floating tensors, as torch's
    for tensor in (*states, *params):
        if (tensor.dtype != input.dtype and not autocast) or tensor.device != input.device:
            raise ValueError(f"{name}: input is {input.dtype} on {input.device} but a state or parameter is "
                             f"{tensor.dtype} on {tensor.device}; convert the input (input.to(...)) or the "
                             "module (module.to(...)) so that they match")
    gates = GATES[cell.name]
    hidden, proj = states[-1].shape[-1], states[0].shape[-1]  # H (from c_0 for LSTM), P
    for k, w in enumerate(spec.weights(params)):
        layer, suffix = divmod(k, spec.directions)
        tag = ("" if spec.cell else f"_l{layer}") + ("_reverse" if suffix else "")
        in_features = input.shape[-1] if layer == 0 else spec.directions * proj
        expected = dict(weight_ih=(w.ih, (gates * hidden, in_features)), weight_hh=(w.hh, (gates * hidden, proj)),
                        bias_ih=(w.b_ih, (gates * hidden,)), bias_hh=(w.b_hh, (gates * hidden,)),
                        weight_hr=(w.hr, (proj, hidden)))
        for label, (tensor, shape) in expected.items():
            if tensor is not None and tuple(tensor.shape) != shape:
                what = ("the input's last dimension is its input_size" if label == "weight_ih" and layer == 0
                        else "the hidden size comes from the initial states' last dimension")
                raise RuntimeError(f"{name}: {label}{tag} has shape {tuple(tensor.shape)}, expected {shape} "
                                   f"({what}); pass input and states that match the parameters")
