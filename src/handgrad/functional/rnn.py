"""The Elman RNN: h' = tanh (or relu) of an affine map of the input and the previous hidden state,
over a sequence, and its backward through time, written out; the layer stack is recurrent.py's.

Reference: Elman, "Finding Structure in Time" (1990); torch.nn.RNN's equations; CS231n
rnn_layers.py (rnn_step_forward / rnn_step_backward, rnn_forward / rnn_backward).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from handgrad.functional import recurrent, recurrent_stack
from handgrad.functional.function import Autocast, TwinnedFunction, twinned
from handgrad.functional.recurrent import Cell, MaybeTensors, States, Weights, earlier, projected, steps, tangent_sum


def forward_direction(x: torch.Tensor, states0: States, w: Weights, reverse: bool, nonlinearity: str) -> tuple:
    """One direction over the sequence; x (T, N, H_in), h0 (N, H). Returns the T hidden states in time
    order, the final (h,), and no extras: backward reads h_t itself (an output)."""
    (h,) = states0
    gx = recurrent.project_input(x, w.ih, w.b_ih)  # (T, N, H): x_t W_ih^T + b_ih, every t at once
    activation = torch.tanh if nonlinearity == "tanh" else torch.relu
    hs = [torch.empty(0)] * len(x)
    for t in steps(len(x), reverse):
        # h_t = phi((h_{t-1} W_hh^T + b_hh) + gx_t), in the order of torch's CPU cell: under autocast the bf16
        # roundings then fall where torch's do
        h = activation(recurrent.project_hidden(h, w) + gx[t])
        hs[t] = h
    return hs, (h,), ()


def backward_direction(x: torch.Tensor, states0: States, w: Weights, reverse: bool, h_all: torch.Tensor,
                       extras: States, grad_h_all: torch.Tensor | None, grad_finals: MaybeTensors,
                       grad_extras: MaybeTensors, needs_w: Weights, needs_x: bool, nonlinearity: str) -> tuple:
    """The direction's backward (RNN's docstring has the derivation)."""
    (h0,) = states0
    (grad_h_last,) = grad_finals
    # phi'(a_t) from the output, every step at once: tanh' = 1 - h^2; relu' = sign(h) (h >= 0), which keeps
    # a graph to h with zero derivative, as torch's threshold_backward has.
    d_act = (1 - h_all * h_all if nonlinearity == "tanh" else h_all.sign()).unbind(0)  # T steps' (N, H)
    grad_h = (h_all.new_zeros(h_all.shape) if grad_h_all is None else grad_h_all).unbind(0)

    d_pre = [torch.empty(0)] * len(x)
    da = None
    for t in reversed(steps(len(x), reverse)):
        if da is None:  # the direction's last step: h_n's gradient arrives here
            dh = grad_h[t] if grad_h_last is None else grad_h[t] + grad_h_last
        else:
            dh = torch.addmm(grad_h[t], da, w.hh)  # dh_t = grad_h_all[t] + da_{t+1} W_hh
        da = dh * d_act[t]  # da_t = dh_t * phi'(a_t)
        d_pre[t] = da

    dA = torch.stack(d_pre)  # (T, N, H)
    grad_x, grad_w_ih = recurrent.input_weight_grads(dA, x, w.ih, needs_x, needs_w.ih)
    grad_w_hh = recurrent.hidden_weight_grad(dA, earlier(h_all, h0, reverse)) if needs_w.hh else None
    grad_b = dA.sum((0, 1)) if w.b_ih is not None and (needs_w.b_ih or needs_w.b_hh) else None
    return grad_x, (da @ w.hh,), Weights(grad_w_ih, grad_w_hh, grad_b, None if grad_b is None else grad_b.clone())


def jvp_direction(x: torch.Tensor, states0: States, w: Weights, reverse: bool, h_all: torch.Tensor, extras: States,
                  t_x: torch.Tensor | None, t_states0: MaybeTensors, t_w: Weights, nonlinearity: str) -> tuple:
    """The direction's forward-mode derivative, a sweep in step order (None tangents are zero):
    t_h_t = phi'(a_t) * (t_x W_ih^T + x t_W_ih^T + t_h_{t-1} W_hh^T + h_{t-1} t_W_hh^T + t_b_ih + t_b_hh)."""
    (h0,) = states0
    d_act = 1 - h_all * h_all if nonlinearity == "tanh" else h_all.sign()
    t_gx = tangent_sum(h_all.shape, projected(t_x, w.ih), projected(x, t_w.ih),
                       projected(earlier(h_all, h0, reverse), t_w.hh), t_w.b_ih, t_w.b_hh)
    t_gx = torch.zeros(h_all.shape, dtype=h_all.dtype, device=h_all.device) if t_gx is None else t_gx
    t_h = torch.zeros_like(h0) if t_states0[0] is None else t_states0[0]
    t_hs = [torch.empty(0)] * len(x)
    for t in steps(len(x), reverse):
        t_h = d_act[t] * torch.addmm(t_gx[t], t_h, w.hh.mT)
        t_hs[t] = t_h
    return torch.stack(t_hs), (t_h,), ()


def rnn_cell(nonlinearity: str) -> Cell:
    return Cell(f"RNN_{nonlinearity.upper()}", states=1, extras=0,
                forward_direction=functools.partial(forward_direction, nonlinearity=nonlinearity),
                backward_direction=functools.partial(backward_direction, nonlinearity=nonlinearity),
                jvp_direction=functools.partial(jvp_direction, nonlinearity=nonlinearity))


RNN_CELLS = {"tanh": rnn_cell("tanh"), "relu": rnn_cell("relu")}


@twinned
class RNN(TwinnedFunction):
    """A stack of Elman RNN layers over a sequence (recurrent.py), each direction this recurrence:

        a_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh         (N, H)
        h_t = phi(a_t),   phi = tanh or relu

    Shapes: x (T, N, H_in), h0 (N, H), W_ih (H, H_in), W_hh (H, H), b_ih, b_hh (H,).

    Backward, the steps in reverse (CS231n's rnn_backward), carrying dh from step t + 1:
        dh_t  = grad_h_all[t] + da_{t+1} @ W_hh      (grad_h_n joins at the last step)
        da_t  = dh_t * phi'(a_t)                      tanh' = 1 - h_t^2,  relu' = [h_t > 0]
    then, summed over time as one matmul each over the (T * N) rows:
        grad_W_ih = sum_t da_t^T x_t                  (H, H_in)
        grad_W_hh = sum_t da_t^T h_{t-1}              (H, H)
        grad_b_ih = grad_b_hh = sum_t sum_n da_t      (H,)
        grad_x_t  = da_t @ W_ih,   grad_h0 = da_1 @ W_hh
    phi' is read off the output h_t for every step at once: the loop is one matmul and one product a step.
    """

    autocast = Autocast.AS_WRITTEN  # torch's dtypes under autocast: recurrent.autocast_in_front

    @staticmethod
    def forward(input, hx, spec, *tensors):
        masks, params = tensors[:spec.masks], tensors[spec.masks:]
        return recurrent_stack.forward(RNN_CELLS[spec.nonlinearity], spec, input, (hx,), masks, params)

    @staticmethod
    def setup_context(ctx, inputs, output):
        recurrent_stack.save_for_backward(ctx, RNN_CELLS[inputs[2].nonlinearity], inputs, output)

    @staticmethod
    def backward(ctx, *grads):
        return recurrent_stack.backward(RNN_CELLS[ctx.spec.nonlinearity], ctx, grads)

    @staticmethod
    def jvp(ctx, *tangents):
        return recurrent_stack.jvp(RNN_CELLS[ctx.spec.nonlinearity], ctx, tangents)



def rnn_tanh(input: torch.Tensor, hx: torch.Tensor, params: Sequence[torch.Tensor | None], has_biases: bool = True,
             num_layers: int = 1, dropout: float = 0.0, train: bool = True, bidirectional: bool = False,
             batch_first: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-written twin of torch.rnn_tanh (what torch.nn.RNN calls): (output, h_n); params in
    torch.nn.RNN's ``_flat_weights`` order; also takes unbatched (T, H_in) input with (L * D, H) states."""
    return recurrent.call_stack(RNN, RNN_CELLS["tanh"], input, (hx,), params, has_biases, num_layers, dropout, train,
                                bidirectional, batch_first)


def rnn_relu(input: torch.Tensor, hx: torch.Tensor, params: Sequence[torch.Tensor | None], has_biases: bool = True,
             num_layers: int = 1, dropout: float = 0.0, train: bool = True, bidirectional: bool = False,
             batch_first: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-written twin of torch.rnn_relu: as rnn_tanh, with h_t = relu(a_t)."""
    return recurrent.call_stack(RNN, RNN_CELLS["relu"], input, (hx,), params, has_biases, num_layers, dropout, train,
                                bidirectional, batch_first)


def rnn_tanh_cell(input: torch.Tensor, hx: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
                  b_ih: torch.Tensor | None = None, b_hh: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written twin of torch.rnn_tanh_cell: h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh)."""
    return recurrent.call_cell(RNN, RNN_CELLS["tanh"], input, (hx,), w_ih, w_hh, b_ih, b_hh)


def rnn_relu_cell(input: torch.Tensor, hx: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
                  b_ih: torch.Tensor | None = None, b_hh: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written twin of torch.rnn_relu_cell: h' = relu(x W_ih^T + b_ih + h W_hh^T + b_hh)."""
    return recurrent.call_cell(RNN, RNN_CELLS["relu"], input, (hx,), w_ih, w_hh, b_ih, b_hh)
