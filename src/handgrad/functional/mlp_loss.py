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

from handgrad.functional.function import Autocast, TwinnedFunction, twinned
from handgrad.functional.fused import (
    Activations,
    as_cost_operand,
    backpropagate,
    check_layers,
    checked_activations,
    forward_layers,
    save_layers,
    saved_layers,
)

# --------------------------------------------------------------------------- the cost

LOSSES = ("mse", "cross_entropy")
REDUCTIONS = ("mean", "sum")


def cost(y: torch.Tensor, target: torch.Tensor, loss: str, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, r): the cost of y against target and its residual r (see MLPLoss); float32 under autocast."""
    y, target = as_cost_operand(y), as_cost_operand(target)
    if loss == "mse":
        residual = y - target  # r (N, D_L)
        per_element = residual * residual
        return per_element.mean() if reduction == "mean" else per_element.sum(), residual
    index = target.unsqueeze(1)  # (N, 1)
    log_p = torch.log_softmax(y, 1)  # (N, C)
    picked = log_p.gather(1, index)  # log p_n[t_n] (N, 1); an index outside 0..C-1 raises here
    value = -(picked.mean() if reduction == "mean" else picked.sum())
    return value, torch.exp(log_p).scatter_add_(1, index, torch.full_like(picked, -1))  # r = p - onehot(t)


def residual_scale(residual: torch.Tensor, loss: str, reduction: str) -> float:
    """c with dL/dy = c r ("mse": c = 2 s) or dL/dz_L = c r ("cross_entropy": c = s); s = 1/n or 1."""
    n = residual.numel() if loss == "mse" else residual.shape[0]
    s = 1 / n if reduction == "mean" else 1
    return 2 * s if loss == "mse" else s


@twinned
class MLPLoss(TwinnedFunction):
    """An MLP's cost against a target (see MLP), as one node: the cost's gradient enters BP1.

    Forward, y = MLP(x) (N, D_L), reduced with s = 1/n for "mean" and s = 1 for "sum":
        "mse":            L = s * sum_nk r_nk^2,  r = y - t                  t (N, D_L),  n = N * D_L
        "cross_entropy":  L = -s * sum_n log p_n[t_n],  p = softmax(y)       t (N,) class indices,  n = N
                          (log p by torch.log_softmax, which subtracts each row's max: stable;
                          y holds logits: output_activation must be None)
    Backward, with grad_L the upstream gradient of the scalar L:
        "mse":            grad_y  = 2 s r * grad_L          (N, D_L)   then BP1: delta_L = grad_y * f_L'
                          grad_t  = -grad_y
        "cross_entropy":  delta_L = s r * grad_L,  r = p - onehot(t)   (softmax's Jacobian and the
                          log's 1/p cancel, so nothing divides by a tiny p)
    and BP2-BP4 exactly as in MLP. The residual r is formed in the forward, where its pieces are.

    Returns (L, y, r, a_1 .. a_{L-1}); only L is differentiable, y is returned for metrics.
    Saves MLP's tensors plus r.
    """

    autocast = Autocast.AS_WRITTEN  # under the caller's autocast: matmuls in bf16 / fp16, the cost in float32
    once_differentiable = True  # first order only: its backward reads r, y, a_l saved non-differentiable (R1)

    @staticmethod
    def forward(input, target, loss, reduction, activations, *params):
        *hidden, y = forward_layers(input, params, activations)
        value, residual = cost(y, target, loss, reduction)
        return value, y, residual, *hidden

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, loss, reduction, activations, *params = inputs
        _, y, residual, *hidden = output
        ctx.mark_non_differentiable(y, residual, *hidden)
        ctx.set_materialize_grads(False)
        ctx.activations, ctx.num_layers, ctx.output_dtype = activations, len(params) // 2, y.dtype
        ctx.c = residual_scale(residual, loss, reduction)
        needs_x, _, _, _, _, *needs_params = ctx.needs_input_grad
        save_layers(ctx, input, params, hidden, y if activations.output is not None else None,  # f_L' = 1: no y
                    needs_x, needs_params, residual)

    @staticmethod
    def backward(ctx, grad_loss, *_grad_others):  # y, r and the hidden a_l are non-differentiable
        if grad_loss is None:  # the loss did not reach the final result
            return None, None, None, None, None, *[None] * (2 * ctx.num_layers)
        a, weights, (residual,) = saved_layers(ctx)
        needs_x, needs_target, _, _, _, *needs_params = ctx.needs_input_grad
        grad_y = residual * (grad_loss * ctx.c)  # "mse": dL/dy = 2 s r grad_L; "cross_entropy": delta_L = s r grad_L
        grad_target = -grad_y if needs_target else None  # only "mse" has a differentiable target
        if grad_y.dtype != ctx.output_dtype:  # under autocast r is float32 (see cost); the matmuls run in y's
            grad_y = grad_y.to(ctx.output_dtype)
        grad_x, *grad_params = backpropagate(grad_y, a, weights, ctx.activations, needs_x, needs_params)
        return grad_x, grad_target, None, None, None, *grad_params


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
    value, output, *_ = MLPLoss.call(input, target, loss, reduction, activations, *params)
    return value, output


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
    *hidden, y = forward_layers(input, params, activations)
    value, residual = cost(y, target, loss, reduction)
    grad_y = residual * residual_scale(residual, loss, reduction)  # dL/dy ("mse") or delta_L ("cross_entropy")
    needs_params = [p is not None for p in params]
    _, *grads = backpropagate(grad_y, [input, *hidden, y], weights, activations, False, needs_params)
    return value, y, grads


# --------------------------------------------------------------------------- argument checks


def _check_mlp_loss_args(name, input, target, weights, biases, activation, output_activation, loss, reduction,
                         negative_slope) -> tuple[Activations, torch.Tensor]:
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
