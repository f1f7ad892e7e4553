"""The layer stack of a recurrent network: forward over layers and directions, backward through
time in reverse, and the forward-mode jvp, for any cell of recurrent.py's kind (rnn.py, lstm.py, gru.py).

Backward runs the layers in reverse; within a layer, each direction's cell backward runs its steps in
reverse (the cells' files have the derivations). A layer's input gradient is the sum over its
directions, which, through the dropout mask, is the previous layer's output gradient.

What backward reads (rule R1 of handgrad's Functions: every tensor a backward reads is an input,
a differentiable output, or has zero derivative): the inputs, the dropout masks (bool), and the
forward's intermediate values, *returned as extra differentiable outputs*: each inner layer's
output, and per layer and direction the cell's activations (LSTM: cell states and gates; GRU:
gates and W_hn h + b_hn; RNN: none, its derivative is read off h_t). The wrappers hand the caller
only torch's outputs; the extras live on in autograd's graph. Backward adds the gradient of every
extra output that has one (None in first order), so differentiating backward's own formulas a second
time is exact. Recomputing the activations in backward instead would run every recurrent matmul twice.

Reference: CS231n rnn_layers.py (step forward/backward, the sequence backward in reverse, weight
gradients summed over time); llm.c train_gpt2.c (gradients accumulated where a tensor is reused).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from handgrad.functional.dropout import as_bytes
from handgrad.functional.recurrent import Cell, Stack, Weights, plus


def forward(cell: Cell, spec: Stack, input: torch.Tensor, states0: Sequence[torch.Tensor],
            masks: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> tuple:
    """The stack's forward: returns (*the caller's outputs, *inner layer outputs, *extras).

    The caller's outputs: (output, h_n[, c_n]) for a sequence, (h'[, c']) for a cell step.
    Layer l + 1 reads dropout(output of layer l) = output_l * mask_l * scale while training.
    """
    x = spec.sequence(input)  # (T, N, H_in)
    initial = [spec.states(s) for s in states0]  # each (L * D, N, .)
    finals: list[list[torch.Tensor]] = [[] for _ in states0]
    inner, extras = [], []
    for layer, layer_weights in enumerate(chunks(spec.weights(params), spec.directions)):
        outputs = []
        for d, weights in enumerate(layer_weights):
            k = layer * spec.directions + d
            hs, final, extra = cell.forward_direction(x, tuple(s[k] for s in initial), weights, d == 1)
            outputs.append(torch.stack(hs))  # (T, N, P)
            for j, state in enumerate(final):
                finals[j].append(state)
            extras.extend(extra)
        output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, 2)  # (T, N, D * P)
        if layer < spec.num_layers - 1:
            inner.append(output)
            x = output if spec.dropout_scale is None else dropped(output, masks[layer], spec.dropout_scale)
    states = tuple(spec.user_states(f) for f in finals)
    user = states if spec.cell else (spec.user_sequence(output), *states)
    return (*user, *inner, *extras)


def backward(cell: Cell, ctx: Any, grads: Sequence) -> tuple:
    """The stack's backward: the gradient of every Function input, in the order the Function takes them
    (input, states0..., spec, masks..., params...).

    The layers run in reverse. In each, a direction's slice of the layer's output gradient is that
    direction's grad_h_all, and grad_h_n[l * D + d] arrives at its final step; the directions'
    input gradients add up (both read the same x); that sum, through the dropout mask, is the
    previous layer's output gradient, to which that output's own gradient (as an extra output) adds.
    """
    spec, saved, needs_input_grad = ctx.spec, saved_tensors(ctx), ctx.needs_input_grad
    n_user = cell.states + (not spec.cell)
    grad_user, grad_inner, grad_extras = grads[:n_user], grads[n_user:n_user + spec.num_layers - 1], \
        grads[n_user + spec.num_layers - 1:]
    grad_output = None if spec.cell or grad_user[0] is None else spec.sequence(grad_user[0])
    grad_finals = [None if g is None else spec.states(g) for g in grad_user[n_user - cell.states:]]

    masks, params, states0 = saved["masks"], saved["params"], saved["states0"]
    initial = [spec.states(s).unbind(0) for s in states0]  # each L * D pieces (N, .)
    grad_finals = [None if g is None else g.unbind(0) for g in grad_finals]
    layer_outputs = [*saved["inner"], spec.sequence(saved["output"])]  # each (T, N, D * P)
    weights = spec.weights(params)
    needs_weights = spec.weights(needs_input_grad[len(needs_input_grad) - len(params):])
    grad_states: list[list] = [[None] * len(weights) for _ in states0]
    grad_params: list = []

    grad_layer_output = grad_output
    for layer in reversed(range(spec.num_layers)):
        output = layer_outputs[layer]
        if layer == 0:
            x, needs_x = spec.sequence(saved["input"]), needs_input_grad[0]
        else:
            x, needs_x = layer_outputs[layer - 1], True
            if spec.dropout_scale is not None:
                x = dropped(x, masks[layer - 1], spec.dropout_scale)
        grad_x, layer_grads = None, []
        h_parts = output.chunk(spec.directions, 2)  # each direction's (T, N, P)
        grad_parts = [None] * spec.directions if grad_layer_output is None else \
            grad_layer_output.chunk(spec.directions, 2)
        for d in range(spec.directions):
            k = layer * spec.directions + d
            g_x, g_states0, g_weights = cell.backward_direction(
                x, tuple(s[k] for s in initial), weights[k], d == 1,
                h_parts[d], saved["extras"][k * cell.extras:(k + 1) * cell.extras], grad_parts[d],
                tuple(None if g is None else g[k] for g in grad_finals),
                grad_extras[k * cell.extras:(k + 1) * cell.extras], needs_weights[k], needs_x)
            grad_x = plus(grad_x, g_x)
            for j, g in enumerate(g_states0):
                grad_states[j][k] = g
            layer_grads += flat_weights(spec, g_weights)
        grad_params = layer_grads + grad_params
        if layer > 0:  # back through the dropout between layer - 1 and this one
            if grad_x is not None and spec.dropout_scale is not None:
                grad_x = dropped(grad_x, masks[layer - 1], spec.dropout_scale)
            grad_layer_output = plus(grad_x, grad_inner[layer - 1])

    grad_input = to_caller(spec, grad_x, saved["input"]) if needs_input_grad[0] and grad_x is not None else None
    grad_states0 = [stacked_states(spec, g, s) if needs_input_grad[1 + j] else None
                    for j, (g, s) in enumerate(zip(grad_states, states0, strict=True))]
    return (grad_input, *grad_states0, None, *([None] * len(masks)), *grad_params)


def jvp(cell: Cell, ctx: Any, tangents: Sequence) -> tuple:
    """The stack's forward-mode derivative: a tangent for every output (the caller's, the inner layers', the
    extras), from the inputs' tangents (None: zero), by a forward sweep of each direction (the cells' jvps)."""
    spec, saved = ctx.spec, saved_tensors(ctx)
    t_input, t_states0 = tangents[0], tangents[1:1 + cell.states]
    t_params = tangents[len(tangents) - len(saved["params"]):]
    initial = [spec.states(s) for s in saved["states0"]]
    t_initial = [None if t is None else spec.states(t) for t in t_states0]
    layer_outputs = [*saved["inner"], spec.sequence(saved["output"])]
    weights, t_weights = spec.weights(saved["params"]), spec.weights(t_params)
    x, t_x = spec.sequence(saved["input"]), None if t_input is None else spec.sequence(t_input)
    t_finals: list[list] = [[] for _ in initial]
    t_inner: list[torch.Tensor] = []
    t_extras: list[torch.Tensor] = []
    for layer in range(spec.num_layers):
        if layer > 0:
            x, t_x = layer_outputs[layer - 1], t_inner[-1]
            if spec.dropout_scale is not None:
                x, t_x = (dropped(v, saved["masks"][layer - 1], spec.dropout_scale) for v in (x, t_x))
        output, t_outputs = layer_outputs[layer], []
        hidden = output.shape[2] // spec.directions
        for d in range(spec.directions):
            k = layer * spec.directions + d
            t_h_all, t_final, t_extra = cell.jvp_direction(
                x, tuple(s[k] for s in initial), weights[k], d == 1, output[:, :, d * hidden:(d + 1) * hidden],
                saved["extras"][k * cell.extras:(k + 1) * cell.extras], t_x,
                tuple(None if t is None else t[k] for t in t_initial), t_weights[k])
            t_outputs.append(t_h_all)
            for j, t in enumerate(t_final):
                t_finals[j].append(t)
            t_extras.extend(t_extra)
        t_output = t_outputs[0] if len(t_outputs) == 1 else torch.cat(t_outputs, 2)
        if layer < spec.num_layers - 1:
            t_inner.append(t_output)
    states = tuple(spec.user_states(t) for t in t_finals)
    user = states if spec.cell else (spec.user_sequence(t_output), *states)
    return (*user, *t_inner, *t_extras)


def save_for_backward(ctx: Any, cell: Cell, inputs: tuple, outputs: tuple) -> None:
    """setup_context of every recurrent Function: the inputs, and the outputs backward reads (the caller's
    first output, the inner layers' outputs, the extras); each output's gradient is handled, None or not."""
    spec: Stack = inputs[1 + cell.states]
    n_user = cell.states + (not spec.cell)
    ctx.set_materialize_grads(False)
    ctx.spec, ctx.counts = spec, (cell.states, spec.masks, len(inputs) - 2 - cell.states - spec.masks,
                                  spec.num_layers - 1)
    tensors = (inputs[0], *inputs[1:1 + cell.states], *inputs[2 + cell.states:], outputs[0], *outputs[n_user:])
    ctx.save_for_backward(*tensors)
    ctx.save_for_forward(*tensors)  # rule R5: the same tensors for jvp


def saved_tensors(ctx: Any) -> dict:
    """What ``save_for_backward`` saved, by name."""
    n_states, n_masks, n_params, n_inner = ctx.counts
    saved = ctx.saved_tensors
    cuts = [1, 1 + n_states, 1 + n_states + n_masks, 1 + n_states + n_masks + n_params]
    return dict(input=saved[0], states0=saved[cuts[0]:cuts[1]], masks=saved[cuts[1]:cuts[2]],
                params=saved[cuts[2]:cuts[3]], output=saved[cuts[3]],
                inner=saved[cuts[3] + 1:cuts[3] + 1 + n_inner], extras=saved[cuts[3] + 1 + n_inner:])


def flat_weights(spec: Stack, w: Weights) -> list:
    """A Weights back in torch's flat order, as ``Stack.weights`` reads it."""
    flat = [w.ih, w.hh]
    if spec.has_biases:
        flat += [w.b_ih, w.b_hh]
    if spec.projections:
        flat.append(w.hr)
    return flat


def to_caller(spec: Stack, grad_x: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
    """The input's gradient, (T, N, H_in) time-major, in the layout of the caller's input."""
    if spec.cell:
        return grad_x.squeeze(0) if spec.batched else grad_x.reshape(input.shape)
    if not spec.batched:
        return grad_x.squeeze(1)
    return grad_x.transpose(0, 1) if spec.batch_first else grad_x


def stacked_states(spec: Stack, grads: list, state: torch.Tensor) -> torch.Tensor:
    """The gradient of an initial state, one (N, .) piece per layer and direction, in its caller's shape."""
    shape = spec.states(state).shape[1:]
    pieces = [state.new_zeros(shape) if g is None else g for g in grads]
    return torch.stack(pieces).reshape(state.shape)


def dropped(t: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """t * mask * scale: dropout's forward with a given bool mask, and (the same product) its backward."""
    return (t * as_bytes(mask)).mul(scale)


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


