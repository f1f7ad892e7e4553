"""Long short-term memory: the LSTM cell, a direction of it over a sequence, and its backward
through time, written out; the layer stack around it is recurrent.py's.

Reference: Hochreiter & Schmidhuber, "Long Short-Term Memory" (1997); torch.nn.LSTM's equations
(gate order i, f, g, o; projections: Sak et al. 2014); CS231n rnn_layers.py; Karpathy's min-char-rnn.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from handgrad.functional import recurrent, recurrent_stack
from handgrad.functional.activations import tanh
from handgrad.functional.function import Autocast, TwinnedFunction, twinned
from handgrad.functional.recurrent import (
    Cell,
    MaybeTensors,
    States,
    Weights,
    earlier,
    plus,
    projected,
    steps,
    tangent_sum,
)


def forward_direction(x: torch.Tensor, states0: States, w: Weights, reverse: bool) -> tuple:
    """One direction over the sequence; x (T, N, H_in), h0 (N, P), c0 (N, H).
    Returns the T hidden states in time order, the final (h, c), and the extras (c_all, gates)."""
    h, c = states0
    hidden = c.shape[1]
    bias = None if w.b_ih is None else w.b_ih + w.b_hh
    gx = recurrent.project_input(x, w.ih, bias)  # (T, N, 4H): x_t W_ih^T + b_ih + b_hh, every t at once
    hs, cs, gates = [torch.empty(0)] * len(x), [torch.empty(0)] * len(x), [torch.empty(0)] * len(x)
    for t in steps(len(x), reverse):
        a = torch.addmm(gx[t], h, w.hh.mT)  # (N, 4H) pre-activations
        act = torch.cat((a[:, :2 * hidden].sigmoid(), a[:, 2 * hidden:3 * hidden].tanh(), a[:, 3 * hidden:].sigmoid()),
                        1)  # [i, f, g, o]
        i, f, g, o = act.chunk(4, 1)
        c = torch.addcmul(f * c, i, g)  # c' = f c + i g
        h = o * torch.tanh(c)  # h' = o tanh(c')
        if w.hr is not None:
            h = h @ w.hr.mT  # (N, P): h' = (o tanh(c')) W_hr^T
        hs[t], cs[t], gates[t] = h, c, act
    return hs, (h, c), (torch.stack(cs), torch.stack(gates))


def backward_direction(x: torch.Tensor, states0: States, w: Weights, reverse: bool, h_all: torch.Tensor,
                       extras: States, grad_h_all: torch.Tensor | None, grad_finals: MaybeTensors,
                       grad_extras: MaybeTensors, needs_w: Weights, needs_x: bool) -> tuple:
    """The direction's backward (LSTM's docstring has the derivation). Returns grad_x, (grad_h0, grad_c0) and
    the weights' gradients."""
    h0, c0 = states0
    c_all, gates = extras  # (T, N, H), (T, N, 4H)
    grad_c_all, grad_gates = grad_extras
    grad_h_last, grad_c_last = grad_finals
    length = len(c_all)
    i, f, g, o = gates.chunk(4, 2)
    tanh_c = tanh(c_all)  # handgrad's: a second differentiation of this backward stays hand-written

    # Local derivatives of every step at once (they do not depend on the recursion).
    d_act = torch.cat((i - i * i, f - f * f, 1 - g * g, o - o * o), 2)  # (T, N, 4H): sigma' and tanh' from outputs
    gate_coef = torch.cat((g, earlier(c_all, c0, reverse), i, tanh_c), 2) * d_act  # dA = [dc, dc, dc, dm] * this
    c_coef = o * (1 - tanh_c * tanh_c)  # dc += dm * this
    extra = None if grad_gates is None else (grad_gates * d_act).unbind(0)  # dA += this
    grad_h = (h_all.new_zeros(h_all.shape) if grad_h_all is None else grad_h_all).unbind(0)
    grad_c = None if grad_c_all is None else grad_c_all.unbind(0)
    c_coef_t, gate_coef_t, f_t = c_coef.unbind(0), gate_coef.unbind(0), f.unbind(0)  # each step's (N, .)

    d_gates, d_h = [torch.empty(0)] * length, [torch.empty(0)] * length
    dc_carry = grad_c_last  # the gradient reaching c_t from step t + 1 (from c_n at the last step)
    da = None
    for t in reversed(steps(length, reverse)):
        if da is None:  # the direction's last step: h_n's gradient arrives here
            dh = grad_h[t] if grad_h_last is None else grad_h[t] + grad_h_last
        else:
            dh = torch.addmm(grad_h[t], da, w.hh)  # dh_t = grad_h_all[t] + dA_{t+1} W_hh
        dm = dh if w.hr is None else dh @ w.hr  # (N, H): the gradient of o tanh(c)
        dc_carry = plus(dc_carry, None if grad_c is None else grad_c[t])
        dc = dm * c_coef_t[t] if dc_carry is None else torch.addcmul(dc_carry, dm, c_coef_t[t])
        da = torch.cat((dc, dc, dc, dm), 1) * gate_coef_t[t]  # (N, 4H), blocks as the gates
        if extra is not None:
            da = da + extra[t]
        dc_carry = dc * f_t[t]
        d_gates[t], d_h[t] = da, dh

    dA = torch.stack(d_gates)  # (T, N, 4H)
    grad_x, grad_w_ih = recurrent.input_weight_grads(dA, x, w.ih, needs_x, needs_w.ih)
    grad_w_hh = recurrent.hidden_weight_grad(dA, earlier(h_all, h0, reverse)) if needs_w.hh else None
    grad_b = dA.sum((0, 1)) if w.b_ih is not None and (needs_w.b_ih or needs_w.b_hh) else None
    grad_w_hr = None
    if w.hr is not None and needs_w.hr:
        grad_w_hr = recurrent.hidden_weight_grad(torch.stack(d_h), o * tanh_c)  # sum_t dh_t^T (o tanh(c_t))
    grad_states0 = (da @ w.hh, dc_carry)
    return grad_x, grad_states0, Weights(grad_w_ih, grad_w_hh, grad_b, None if grad_b is None else grad_b.clone(),
                                         grad_w_hr)


def jvp_direction(x: torch.Tensor, states0: States, w: Weights, reverse: bool, h_all: torch.Tensor, extras: States,
                  t_x: torch.Tensor | None, t_states0: MaybeTensors, t_w: Weights) -> tuple:
    """The direction's forward-mode derivative, a sweep in step order (None tangents are zero):
    t_a = t_x W_ih^T + x t_W_ih^T + t_h_{t-1} W_hh^T + h_{t-1} t_W_hh^T + t_b,  [t_i, t_f, t_g, t_o] = act' * t_a,
    t_c = t_f c_{t-1} + f t_c_{t-1} + t_i g + i t_g,  t_m = t_o tanh(c) + o (1 - tanh^2(c)) t_c,
    t_h = t_m (or t_m W_hr^T + m t_W_hr^T)."""
    h0, c0 = states0
    c_all, gates = extras
    i, f, g, o = gates.chunk(4, 2)
    tanh_c = tanh(c_all)
    d_act = torch.cat((i - i * i, f - f * f, 1 - g * g, o - o * o), 2)
    c_prev = earlier(c_all, c0, reverse)
    t_gx = tangent_sum(gates.shape, projected(t_x, w.ih), projected(x, t_w.ih),
                       projected(earlier(h_all, h0, reverse), t_w.hh), t_w.b_ih, t_w.b_hh)
    t_gx = torch.zeros_like(gates) if t_gx is None else t_gx
    t_h, t_c = (torch.zeros_like(s) if t is None else t for s, t in zip(states0, t_states0, strict=True))
    t_hs, t_cs, t_gates = [torch.empty(0)] * len(x), [torch.empty(0)] * len(x), [torch.empty(0)] * len(x)
    for t in steps(len(x), reverse):
        t_act = d_act[t] * torch.addmm(t_gx[t], t_h, w.hh.mT)  # (N, 4H)
        t_i, t_f, t_g, t_o = t_act.chunk(4, 1)
        t_c = t_f * c_prev[t] + f[t] * t_c + t_i * g[t] + i[t] * t_g
        t_h = t_o * tanh_c[t] + o[t] * (1 - tanh_c[t] * tanh_c[t]) * t_c
        if w.hr is not None:
            t_h = t_h @ w.hr.mT if t_w.hr is None else t_h @ w.hr.mT + (o[t] * tanh_c[t]) @ t_w.hr.mT
        t_hs[t], t_cs[t], t_gates[t] = t_h, t_c, t_act
    return torch.stack(t_hs), (t_h, t_c), (torch.stack(t_cs), torch.stack(t_gates))


LSTM_CELL = Cell("LSTM", states=2, extras=2, forward_direction=forward_direction,
                 backward_direction=backward_direction, jvp_direction=jvp_direction)


@twinned
class LSTM(TwinnedFunction):
    """A stack of LSTM layers over a sequence (recurrent.py), each direction this recurrence:

        a_t = x_t W_ih^T + b_ih + b_hh + h_{t-1} W_hh^T            (N, 4H)  blocks [a_i, a_f, a_g, a_o]
        i = sigma(a_i),  f = sigma(a_f),  g = tanh(a_g),  o = sigma(a_o)
        c_t = f * c_{t-1} + i * g                                    (N, H)
        m_t = o * tanh(c_t),   h_t = m_t  (or m_t W_hr^T with proj_size P: h_t (N, P))

    Shapes: x (T, N, H_in), h0 (N, P), c0 (N, H), W_ih (4H, H_in), W_hh (4H, P), b (4H,), W_hr (P, H).

    Backward, the steps in reverse, carrying dh_t and dc_t from step t + 1:
        dh_t   = grad_h_all[t] + dA_{t+1} @ W_hh      (grad_h_n joins at the last step)
        dm     = dh_t                                 (dh_t @ W_hr with projections)
        dc_t   = dc_carry + dm * o * (1 - tanh^2(c_t))   (dc_carry: dc_{t+1} * f_{t+1}, or grad_c_n)
        di = dc_t * g,   df = dc_t * c_{t-1},   dg = dc_t * i,   do = dm * tanh(c_t)
        dA_t   = [di * i(1-i), df * f(1-f), dg * (1 - g^2), do * o(1-o)]     (N, 4H)
        dc_carry = dc_t * f
    then, summed over time as one matmul each over the (T * N) rows:
        grad_W_ih = sum_t dA_t^T x_t                  (4H, H_in)
        grad_W_hh = sum_t dA_t^T h_{t-1}              (4H, P)
        grad_b_ih = grad_b_hh = sum_t sum_n dA_t      (4H,)
        grad_W_hr = sum_t dh_t^T m_t                  (P, H)
        grad_x_t  = dA_t @ W_ih,   grad_h0 = dA_1 @ W_hh,   grad_c0 = dc_carry after step 1.
    Extra outputs c_all and gates (rule R1, see recurrent.py) add grad_c_all[t] to dc_t and
    grad_gates[t] * act' to dA_t. The local derivatives (act', the products with g, c_{t-1}, i,
    tanh(c_t)) are computed for every step at once before the loop: the loop carries only the recursion.
    """

    autocast = Autocast.AS_WRITTEN  # torch's dtypes under autocast: recurrent.autocast_in_front

    @staticmethod
    def forward(input, hx, cx, spec, *tensors):
        masks, params = tensors[:spec.masks], tensors[spec.masks:]
        return recurrent_stack.forward(LSTM_CELL, spec, input, (hx, cx), masks, params)

    @staticmethod
    def setup_context(ctx, inputs, output):
        recurrent_stack.save_for_backward(ctx, LSTM_CELL, inputs, output)

    @staticmethod
    def backward(ctx, *grads):
        return recurrent_stack.backward(LSTM_CELL, ctx, grads)

    @staticmethod
    def jvp(ctx, *tangents):
        return recurrent_stack.jvp(LSTM_CELL, ctx, tangents)


def lstm(input: torch.Tensor, hx: Sequence[torch.Tensor], params: Sequence[torch.Tensor | None],
         has_biases: bool = True, num_layers: int = 1, dropout: float = 0.0, train: bool = True,
         bidirectional: bool = False, batch_first: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hand-written twin of torch.lstm (what torch.nn.LSTM calls): (output, h_n, c_n) for hx = (h_0, c_0)
    and params in torch.nn.LSTM's ``_flat_weights`` order; also takes unbatched (T, H_in) input with
    (L * D, .) states, as torch.nn.LSTM does. proj_size is read off the parameters (a W_hr each)."""
    return recurrent.call_stack(LSTM, LSTM_CELL, input, tuple(hx), params, has_biases, num_layers, dropout, train,
                                bidirectional, batch_first)


def lstm_cell(input: torch.Tensor, hx: Sequence[torch.Tensor], w_ih: torch.Tensor, w_hh: torch.Tensor,
              b_ih: torch.Tensor | None = None, b_hh: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-written twin of torch.lstm_cell: one step, (h', c') for hx = (h, c); input (N, H_in) or (H_in,)."""
    return recurrent.call_cell(LSTM, LSTM_CELL, input, tuple(hx), w_ih, w_hh, b_ih, b_hh)
