"""The gated recurrent unit in torch's exact form (the reset gate multiplies W_hn h + b_hn, after
the matmul), over a sequence, and its backward through time, written out; the layer stack is
recurrent.py's.

Reference: Cho et al., "Learning Phrase Representations using RNN Encoder-Decoder" (2014);
torch.nn.GRU's equations (gate order r, z, n); CS231n rnn_layers.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from handgrad.functional import recurrent, recurrent_stack
from handgrad.functional.function import Autocast, TwinnedFunction, twinned
from handgrad.functional.recurrent import Cell, MaybeTensors, States, Weights, earlier, projected, steps, tangent_sum


def forward_direction(x: torch.Tensor, states0: States, w: Weights, reverse: bool) -> tuple:
    """One direction over the sequence; x (T, N, H_in), h0 (N, H). Returns the T hidden states in time
    order, the final (h,), and the extras (gates [r, z, n] (T, N, 3H), W_hn h + b_hn (T, N, H))."""
    (h,) = states0
    hidden = h.shape[1]
    gx = recurrent.project_input(x, w.ih, w.b_ih)  # (T, N, 3H): x_t W_ih^T + b_ih, every t at once
    hs, gates, hns = [torch.empty(0)] * len(x), [torch.empty(0)] * len(x), [torch.empty(0)] * len(x)
    for t in steps(len(x), reverse):  # each line in the order of torch's CPU GRU cell (the same bf16 roundings)
        gh = recurrent.project_hidden(h, w)  # (N, 3H): h W_hh^T + b_hh
        rz = (gh[:, :2 * hidden] + gx[t, :, :2 * hidden]).sigmoid()  # [r, z]
        hn = gh[:, 2 * hidden:]  # W_hn h + b_hn
        n = (gx[t, :, 2 * hidden:] + hn * rz[:, :hidden]).tanh()  # n = tanh(W_in x + b_in + r hn)
        h = (h - n) * rz[:, hidden:] + n  # h' = (1 - z) n + z h = (h - n) z + n
        hs[t], gates[t], hns[t] = h, torch.cat((rz, n), 1), hn
    return hs, (h,), (torch.stack(gates), torch.stack(hns))


def backward_direction(x: torch.Tensor, states0: States, w: Weights, reverse: bool, h_all: torch.Tensor,
                       extras: States, grad_h_all: torch.Tensor | None, grad_finals: MaybeTensors,
                       grad_extras: MaybeTensors, needs_w: Weights, needs_x: bool) -> tuple:
    """The direction's backward (GRU's docstring has the derivation)."""
    (h0,) = states0
    gates, hn = extras  # (T, N, 3H), (T, N, H)
    grad_gates, grad_hn = grad_extras
    (grad_h_last,) = grad_finals
    length, n_rows, hidden = hn.shape
    r, z, n = gates.chunk(3, 2)

    # Local derivatives of every step at once: dA_x = dh * gx_coef, dA_h = dh * gh_coef.
    d_n = (1 - z) * (1 - n * n)  # dh'/d(pre-activation of n)
    d_z = (earlier(h_all, h0, reverse) - n) * (z - z * z)  # dh'/d(pre-activation of z)
    d_r = d_n * hn * (r - r * r)  # dh'/d(pre-activation of r)
    gx_coef = torch.cat((d_r, d_z, d_n), 2)  # (T, N, 3H)
    gh_coef = torch.cat((d_r, d_z, d_n * r), 2)  # the n block of W_hh h + b_hh is multiplied by r
    extra_x = extra_h = None
    if grad_gates is not None or grad_hn is not None:  # the extra outputs' gradients (zero in first order)
        g_r, g_z, g_n = (None, None, None) if grad_gates is None else grad_gates.chunk(3, 2)
        e_n = torch.zeros_like(n) if g_n is None else g_n * (1 - n * n)
        e_z = torch.zeros_like(z) if g_z is None else g_z * (z - z * z)
        e_r = (e_n * hn if g_r is None else e_n * hn + g_r) * (r - r * r)
        extra_x = torch.cat((e_r, e_z, e_n), 2).unbind(0)
        extra_h = torch.cat((e_r, e_z, e_n * r if grad_hn is None else e_n * r + grad_hn), 2).unbind(0)
    grad_h = (h_all.new_zeros(h_all.shape) if grad_h_all is None else grad_h_all).unbind(0)
    gx_coef_t, gh_coef_t, z_t = gx_coef.unbind(0), gh_coef.unbind(0), z.unbind(0)  # each step's (N, .)

    d_x, d_h = [torch.empty(0)] * length, [torch.empty(0)] * length
    dh = dgh = torch.empty(0)
    next_t = length  # the step processed before t (the next one in time order)
    for visited, t in enumerate(reversed(steps(length, reverse))):
        if visited == 0:  # the direction's last step: h_n's gradient arrives here
            dh = grad_h[t] if grad_h_last is None else grad_h[t] + grad_h_last
        else:  # dh_t = grad_h_all[t] + dh_{t+1} z_{t+1} + dA_h,{t+1} W_hh
            dh = torch.addmm(torch.addcmul(grad_h[t], dh, z_t[next_t]), dgh, w.hh)
        dgx = (dh.unsqueeze(1) * gx_coef_t[t].reshape(n_rows, 3, hidden)).reshape(n_rows, 3 * hidden)
        dgh = (dh.unsqueeze(1) * gh_coef_t[t].reshape(n_rows, 3, hidden)).reshape(n_rows, 3 * hidden)
        if extra_x is not None and extra_h is not None:
            dgx, dgh = dgx + extra_x[t], dgh + extra_h[t]
        d_x[t], d_h[t], next_t = dgx, dgh, t

    dA_x, dA_h = torch.stack(d_x), torch.stack(d_h)  # (T, N, 3H) each
    grad_x, grad_w_ih = recurrent.input_weight_grads(dA_x, x, w.ih, needs_x, needs_w.ih)
    grad_w_hh = recurrent.hidden_weight_grad(dA_h, earlier(h_all, h0, reverse)) if needs_w.hh else None
    grad_b_ih = dA_x.sum((0, 1)) if w.b_ih is not None and needs_w.b_ih else None
    grad_b_hh = dA_h.sum((0, 1)) if w.b_hh is not None and needs_w.b_hh else None
    grad_h0 = torch.addmm(dh * z_t[next_t], dgh, w.hh)
    return grad_x, (grad_h0,), Weights(grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh)


def jvp_direction(x: torch.Tensor, states0: States, w: Weights, reverse: bool, h_all: torch.Tensor, extras: States,
                  t_x: torch.Tensor | None, t_states0: MaybeTensors, t_w: Weights) -> tuple:
    """The direction's forward-mode derivative, a sweep in step order (None tangents are zero):
    t_gx = t_x W_ih^T + x t_W_ih^T + t_b_ih,  t_gh = t_h_{t-1} W_hh^T + h_{t-1} t_W_hh^T + t_b_hh,
    t_r = r(1-r) (t_gx_r + t_gh_r),  t_z = z(1-z) (t_gx_z + t_gh_z),  t_n = (1-n^2) (t_gx_n + t_r gh_n + r t_gh_n),
    t_h = (1 - z) t_n + t_z (h_{t-1} - n) + z t_h_{t-1}."""
    (h0,) = states0
    gates, hn = extras
    hidden = hn.shape[2]
    r, z, n = gates.chunk(3, 2)
    h_prev = earlier(h_all, h0, reverse)
    t_gx = tangent_sum(gates.shape, projected(t_x, w.ih), projected(x, t_w.ih), t_w.b_ih)
    t_ghw = tangent_sum(gates.shape, projected(h_prev, t_w.hh), t_w.b_hh)
    t_gx, t_ghw = (torch.zeros_like(gates) if t is None else t for t in (t_gx, t_ghw))
    t_h = torch.zeros_like(h0) if t_states0[0] is None else t_states0[0]
    d_rz = torch.cat((r - r * r, z - z * z), 2)
    t_hs, t_gates, t_hns = [torch.empty(0)] * len(x), [torch.empty(0)] * len(x), [torch.empty(0)] * len(x)
    for t in steps(len(x), reverse):
        t_gh = torch.addmm(t_ghw[t], t_h, w.hh.mT)  # (N, 3H)
        t_rz = d_rz[t] * (t_gx[t, :, :2 * hidden] + t_gh[:, :2 * hidden])
        t_r, t_z = t_rz.chunk(2, 1)
        t_hn = t_gh[:, 2 * hidden:]
        t_n = (1 - n[t] * n[t]) * (t_gx[t, :, 2 * hidden:] + t_r * hn[t] + r[t] * t_hn)
        t_h = (1 - z[t]) * t_n + t_z * (h_prev[t] - n[t]) + z[t] * t_h
        t_hs[t], t_gates[t], t_hns[t] = t_h, torch.cat((t_rz, t_n), 1), t_hn
    return torch.stack(t_hs), (t_h,), (torch.stack(t_gates), torch.stack(t_hns))


GRU_CELL = Cell("GRU", states=1, extras=2, forward_direction=forward_direction,
                backward_direction=backward_direction, jvp_direction=jvp_direction)


@twinned
class GRU(TwinnedFunction):
    """A stack of GRU layers over a sequence (recurrent.py), each direction this recurrence:

        gx_t = x_t W_ih^T + b_ih,   gh_t = h_{t-1} W_hh^T + b_hh        (N, 3H)  blocks [r, z, n]
        r = sigma(gx_r + gh_r),   z = sigma(gx_z + gh_z)
        n = tanh(gx_n + r * gh_n)
        h_t = (1 - z) * n + z * h_{t-1}

    Shapes: x (T, N, H_in), h0 (N, H), W_ih (3H, H_in), W_hh (3H, H), b_ih, b_hh (3H,).

    Backward, the steps in reverse, carrying dh from step t + 1:
        dh_t  = grad_h_all[t] + dh_{t+1} * z_{t+1} + dA_h,{t+1} @ W_hh    (grad_h_n joins at the last step)
        da_n  = dh_t * (1 - z) * (1 - n^2)            (the pre-activation gx_n + r gh_n)
        da_z  = dh_t * (h_{t-1} - n) * z (1 - z)
        da_r  = da_n * gh_n * r (1 - r)
        dA_x  = [da_r, da_z, da_n]                    the gradient of gx_t   (N, 3H)
        dA_h  = [da_r, da_z, da_n * r]                the gradient of gh_t   (N, 3H)
    then, summed over time as one matmul each over the (T * N) rows:
        grad_W_ih = sum_t dA_x,t^T x_t     grad_b_ih = sum_t sum_n dA_x,t
        grad_W_hh = sum_t dA_h,t^T h_{t-1}     grad_b_hh = sum_t sum_n dA_h,t
        grad_x_t  = dA_x,t @ W_ih,   grad_h0 = dh_1 * z_1 + dA_h,1 @ W_hh
    Extra outputs (rule R1, recurrent.py): gates [r, z, n] and gh_n. Their gradients enter where the
    forward used them: grad_n (1 - n^2) adds to da_n (and so, times gh_n, to dr), grad_z z(1 - z) to
    da_z, grad_r r(1 - r) to da_r, grad_gh_n to dA_h's n block. The products of the local
    derivatives are computed for every step at once; the loop carries only the recursion.
    """

    autocast = Autocast.AS_WRITTEN  # torch's dtypes under autocast: recurrent.autocast_in_front

    @staticmethod
    def forward(input, hx, spec, *tensors):
        masks, params = tensors[:spec.masks], tensors[spec.masks:]
        return recurrent_stack.forward(GRU_CELL, spec, input, (hx,), masks, params)

    @staticmethod
    def setup_context(ctx, inputs, output):
        recurrent_stack.save_for_backward(ctx, GRU_CELL, inputs, output)

    @staticmethod
    def backward(ctx, *grads):
        return recurrent_stack.backward(GRU_CELL, ctx, grads)

    @staticmethod
    def jvp(ctx, *tangents):
        return recurrent_stack.jvp(GRU_CELL, ctx, tangents)


def gru(input: torch.Tensor, hx: torch.Tensor, params: Sequence[torch.Tensor | None], has_biases: bool = True,
        num_layers: int = 1, dropout: float = 0.0, train: bool = True, bidirectional: bool = False,
        batch_first: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-written twin of torch.gru (what torch.nn.GRU calls): (output, h_n); params in torch.nn.GRU's
    ``_flat_weights`` order; also takes unbatched (T, H_in) input with (L * D, H) states."""
    return recurrent.call_stack(GRU, GRU_CELL, input, (hx,), params, has_biases, num_layers, dropout, train,
                                bidirectional, batch_first)


def gru_cell(input: torch.Tensor, hx: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
             b_ih: torch.Tensor | None = None, b_hh: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written twin of torch.gru_cell: one GRU step, h' for input (N, H_in) or (H_in,)."""
    return recurrent.call_cell(GRU, GRU_CELL, input, (hx,), w_ih, w_hh, b_ih, b_hh)
