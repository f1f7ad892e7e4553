"""The whole MLP and its cost as one node, and the same code with no autograd at all.

- ``mlp_loss``: an MLP (functional/fused.py) and its cost (mse or cross-entropy) as one node:
  the cost's gradient enters Nielsen's BP1 directly, e.g. delta_L = (softmax(z_L) - onehot(t)) / N.
- ``mlp_loss_and_grads``: the same forward and backward code called directly, with no graph, no
  engine and no .grad accumulation: Nielsen's training loop, and handgrad.steps' fused step.

Verified like every other op (handgrad.verify.FUSED_CASES) against the torch ops it replaces, and
``mlp_loss_and_grads`` against autograd's gradients (tests/test_functional_mlp_loss.py).

Reference: Nielsen, "Neural Networks and Deep Learning", ch. 2 (the four equations of
backpropagation) and ch. 3 (cross-entropy: the sigma' factor cancels from delta_L).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from handgrad.functional.autocast import autocast_on_any_device
from handgrad.functional.backprop import (
    Activations,
    backpropagate,
    forward_layers,
    forward_tangents,
    matmul_operands,
    plus,
    save_layers,
    saved_layers,
)
from handgrad.functional.function import Autocast, TwinnedFunction, may_overwrite, transforms_active, twinned
from handgrad.functional.fused import check_layers, checked_activations

# --------------------------------------------------------------------------- the cost

LOSSES = ("mse", "cross_entropy")
REDUCTIONS = ("mean", "sum")


def cost(y: torch.Tensor, target: torch.Tensor, loss: str, reduction: str,
         inplace: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, r): the cost of y against target and its residual r (see MLPLoss); float32 under autocast.
    ``inplace``: r is built in place in the cost's own temporary (a Function's forward: ``may_overwrite()``)."""
    y, target = as_cost_operand(y), as_cost_operand(target)
    if loss == "mse":
        residual = y - target  # r (N, D_L)
        per_element = residual * residual
        return per_element.mean() if reduction == "mean" else per_element.sum(), residual
    index = target.unsqueeze(1)  # (N, 1)
    log_p = torch.log_softmax(y, 1)  # (N, C)
    picked = log_p.gather(1, index)  # log p_n[t_n] (N, 1); an index outside 0..C-1 raises here
    value = -(picked.mean() if reduction == "mean" else picked.sum())
    p, minus_one = torch.exp(log_p), torch.full_like(picked, -1)
    return value, p.scatter_add_(1, index, minus_one) if inplace else p.scatter_add(1, index, minus_one)  # p - onehot


def as_cost_operand(t: torch.Tensor) -> torch.Tensor:
    """t as torch's losses read it under autocast (mse_loss and cross_entropy run in float32 there):
    a float32 copy of a bf16/fp16 tensor; else t itself."""
    if t.dtype in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled(t.device.type):
        return t.float()
    return t


def residual_scale(residual: torch.Tensor, loss: str, reduction: str) -> float:
    """c with dL/dr = c r ("mse": c = 2 s) or dL/dz_L = c r ("cross_entropy": c = s); s = 1/n or 1."""
    n = residual.numel() if loss == "mse" else residual.shape[0]
    s = 1 / n if reduction == "mean" else 1
    return 2 * s if loss == "mse" else s


def softmax_of(residual: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """p = r + onehot(t), the softmax of the logits, from cross-entropy's residual r = p - onehot(t)."""
    index = target.unsqueeze(1)
    return residual.scatter_add(1, index, torch.ones_like(index, dtype=residual.dtype))


@twinned
class MLPLoss(TwinnedFunction):
    """An MLP's cost against a target (see MLP), as one node: the cost's gradient enters BP1.

    Forward, y = MLP(x) (N, D_L), reduced with s = 1/n for "mean" and s = 1 for "sum":
        "mse":            L = s * sum_nk r_nk^2,  r = y - t                  t (N, D_L),  n = N * D_L
        "cross_entropy":  L = -s * sum_n log p_n[t_n],  p = softmax(y),  r = p - onehot(t)
                          t (N,) class indices,  n = N  (log p by torch.log_softmax, which subtracts
                          each row's max: stable; y holds logits: output_activation must be None)
    Outputs (L, y, r, a_1 .. a_{L-1}), all differentiable, so that backward reads only inputs and
    outputs; ``mlp_loss`` returns L and y detached. Backward, with grad_L the upstream gradient of
    L and grad_y, grad_r, grad_a_l those of the other outputs (None unless used: double backward):
        "mse":            g_r     = 2 s r * grad_L + grad_r        (N, D_L)   the whole gradient of r
                          grad_t  = -g_r,   dLoss/dy = g_r + grad_y,   then BP1: delta_L = dLoss/dy * f_L'
        "cross_entropy":  delta_L = s r * grad_L                   (softmax's Jacobian and the log's 1/p
                                    + p * (grad_r - sum_j p_j grad_r_j)   cancel: nothing divides by p)
                                    + grad_y                        (f_L is the identity: y = z_L)
    and BP2-BP4 exactly as in MLP, grad_a_l added at layer l. The residual r is formed in the
    forward, where its pieces are; p = r + onehot(t) is rebuilt only for a grad_r.
    jvp: t_a_l and t_y by MLP's forward sweep of tangents, then
        "mse":            t_r = t_y - t_t,                        t_L = 2 s sum r * t_r
        "cross_entropy":  t_r = p * (t_y - sum_j p_j t_y_j),      t_L = s sum r * t_y

    Saves MLP's tensors, r, and for cross-entropy the target (integer: zero derivative).
    """

    autocast = Autocast.AS_WRITTEN  # the wrapper casts the matmul operands; the cost runs in float32 under autocast

    @staticmethod
    def forward(input, target, loss, reduction, activations, *params):
        inplace = may_overwrite()
        *hidden, y = forward_layers(input, params, activations, inplace)
        value, residual = cost(y, target, loss, reduction, inplace)
        return value, y, residual, *hidden

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, loss, reduction, activations, *params = inputs
        _, y, residual, *hidden = output
        ctx.set_materialize_grads(False)  # an unused output's gradient is None, not a tensor of zeros
        ctx.activations, ctx.num_layers, ctx.output_dtype = activations, len(params) // 2, y.dtype
        ctx.loss, ctx.c = loss, residual_scale(residual, loss, reduction)
        needs_x, _, _, _, _, *needs_params = ctx.needs_input_grad
        save_layers(ctx, input, params, hidden, y if activations.output is not None else None,  # f_L' = 1: no y
                    needs_x, needs_params, residual, target if loss == "cross_entropy" else None)

    @staticmethod
    def backward(ctx, grad_loss, grad_y, grad_residual, *grad_hidden):
        a, weights, (residual, target) = saved_layers(ctx)
        needs_x, needs_target, _, _, _, *needs_params = ctx.needs_input_grad
        from_cost = grad_y is None and grad_residual is None and grad_hidden.count(None) == len(grad_hidden)
        grad_r = None if grad_loss is None else residual * (grad_loss * ctx.c)  # dL/dr ("mse"), dL/dz_L ("ce")
        if grad_residual is not None:  # r's own gradient, through r = y - t, or r = softmax(y) - onehot(t)
            if ctx.loss == "cross_entropy":
                p = softmax_of(residual, target)
                grad_residual = p * (grad_residual - (p * grad_residual).sum(1, keepdim=True))
            grad_r = plus(grad_r, grad_residual)
        grad_target = -grad_r if needs_target and grad_r is not None else None  # only "mse" has a float target
        if grad_r is not None and grad_r.dtype != ctx.output_dtype:  # under autocast r is float32 (see cost)
            grad_r = grad_r.to(ctx.output_dtype)
        grad_x, *grad_params = backpropagate(plus(grad_r, grad_y), a, weights, ctx.activations, needs_x, needs_params,
                                             grad_hidden, may_overwrite(grad_loss), from_cost)
        return grad_x, grad_target, None, None, None, *grad_params

    @staticmethod
    def jvp(ctx, t_input, t_target, _t_loss, _t_reduction, _t_activations, *t_params):
        a, weights, (residual, target) = saved_layers(ctx)
        *t_hidden, t_y = forward_tangents(t_input, t_params, a, weights, ctx.activations)
        t_cost = t_y.to(residual.dtype)  # float32 under autocast, as the cost
        if ctx.loss == "mse":
            t_residual = t_cost if t_target is None else t_cost - t_target.to(residual.dtype)
            t_loss = ctx.c * (residual * t_residual).sum()
        else:
            p = softmax_of(residual, target)
            t_residual = p * (t_cost - (p * t_cost).sum(1, keepdim=True))
            t_loss = ctx.c * (residual * t_cost).sum()
        return t_loss, t_y, t_residual, *t_hidden


def mlp_loss(input: torch.Tensor, target: torch.Tensor, weights: Sequence[torch.Tensor],
             biases: Sequence[torch.Tensor | None], activation: str | None = "relu",
             output_activation: str | None = None, loss: str = "cross_entropy", reduction: str = "mean",
             negative_slope: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, output) of an MLP (see ``mlp``) against ``target``, as one hand-written Function.

    loss="cross_entropy": ``output_activation`` must be None (the output is logits (N, C)) and
    ``target`` holds class indices (N,), as for ``cross_entropy``. loss="mse": ``target`` has the
    output's shape (N, D_L), e.g. one-hot, as for ``mse_loss``. ``reduction`` is "mean" or "sum".
    The loss equals ``cross_entropy(mlp(...), target)`` (or ``mse_loss``); the output is returned
    detached, for metrics such as accuracy, without a second forward pass.
    """
    activations, target = _check_mlp_loss_args("mlp_loss", input, target, weights, biases, activation,
                                               output_activation, loss, reduction, negative_slope)
    params = [p for weight, bias in zip(weights, biases, strict=True) for p in (weight, bias)]
    if autocast_on_any_device():
        input, params = matmul_operands(input, params)
    value, output, *_ = MLPLoss.call(input, target, loss, reduction, activations, *params)
    return value, output.detach()


@torch.no_grad()
def mlp_loss_and_grads(input: torch.Tensor, target: torch.Tensor, weights: Sequence[torch.Tensor],
                       biases: Sequence[torch.Tensor | None], activation: str | None = "relu",
                       output_activation: str | None = None, loss: str = "cross_entropy", reduction: str = "mean",
                       negative_slope: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:
    """(loss, output, [grad_W_1, grad_b_1, .., grad_W_L, grad_b_L]) with no autograd at all: Nielsen's loop.

    The very code of MLPLoss's forward and backward (``forward_layers``, ``cost``,
    ``backpropagate``), called directly under no_grad with grad_L = 1: no graph is recorded,
    the autograd engine never runs and nothing accumulates into .grad. The gradients are those
    ``mlp_loss(...)[0].backward()`` leaves in .grad (None for a None bias); set them as .grad
    and call an optimizer's step, or update the weights directly. Same arguments as ``mlp_loss``.
    """
    activations, target = _check_mlp_loss_args("mlp_loss_and_grads", input, target, weights, biases, activation,
                                               output_activation, loss, reduction, negative_slope)
    params = [p for weight, bias in zip(weights, biases, strict=True) for p in (weight, bias)]
    inplace = not transforms_active()  # in place in its own temporaries, but not under torch.vmap (rule R3)
    *hidden, y = forward_layers(input, params, activations, inplace)
    value, residual = cost(y, target, loss, reduction, inplace)
    scale = residual_scale(residual, loss, reduction)
    grad_y = residual.mul_(scale) if inplace else residual * scale  # dL/dy ("mse") or delta_L ("cross_entropy")
    needs_params = [p is not None for p in params]
    _, *grads = backpropagate(grad_y, [input, *hidden, y], weights, activations, False, needs_params, None, inplace,
                              from_cost=True)
    return value, y, grads


# --------------------------------------------------------------------------- argument checks


def _check_mlp_loss_args(name: str, input: torch.Tensor, target: torch.Tensor, weights: Sequence[torch.Tensor],
                         biases: Sequence[torch.Tensor | None], activation: str | None, output_activation: str | None,
                         loss: str, reduction: str, negative_slope: float) -> tuple[Activations, torch.Tensor]:
    """The checks of ``mlp_loss``: (its Activations, the target as int64 indices for cross-entropy)."""
    activations = checked_activations(name, activation, output_activation, negative_slope)
    check_layers(name, input, weights, biases)
    if input.dim() != 2:
        raise ValueError(f"{name}: expected an input of shape (N, {weights[0].shape[1]}), got {tuple(input.shape)}; "
                         "flatten it first, e.g. input.flatten(1)")
    _check_target(name, input, target, weights[-1].shape[0], loss, reduction, output_activation)
    if loss == "cross_entropy" and target.dtype != torch.long:
        target = target.long()  # gather and scatter index with int64
    return activations, target


def _check_target(name: str, input: torch.Tensor, target: torch.Tensor, num_outputs: int, loss: str,
                  reduction: str, output_activation: str | None) -> None:
    if loss not in LOSSES:
        raise ValueError(f"{name}: loss={loss!r} is not one of {', '.join(map(repr, LOSSES))}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction={reduction!r} is not one of {', '.join(map(repr, REDUCTIONS))} "
                         "(for per-example losses use mlp and cross_entropy or mse_loss with reduction='none')")
    expected = (input.shape[0], num_outputs) if loss == "mse" else (input.shape[0],)
    if target.shape != expected:
        raise ValueError(f"{name}: for loss={loss!r}, an input of shape {tuple(input.shape)} and an output of "
                         f"{num_outputs} features need a target of shape {expected}, got {tuple(target.shape)}")
    if loss == "mse":
        return
    if output_activation is not None:
        raise ValueError(f"{name}: cross_entropy takes logits, but output_activation={output_activation!r}; "
                         "set output_activation=None (the softmax is part of the cost)")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise TypeError(f"{name}: cross_entropy's target must hold integer class indices (torch.long), got "
                        f"dtype {target.dtype}")
    # An index outside 0..C-1 is left to gather ("index 10 is out of bounds for dimension 1 with
    # size 10"): checking it here would cost two host syncs a step, a stall on a GPU.
