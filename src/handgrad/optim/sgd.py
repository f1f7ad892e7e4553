"""Gradient descent, written out: w <- w - lr * grad, with momentum and weight decay.

The update follows torch.optim.SGD's definition exactly, so the two optimisers walk the
same path (tests check 25 steps of each setting, bit for bit):

    g_t = -grad if maximize else grad
    g_t = g_t + weight_decay * w                      (L2 penalty's gradient)
    b_t = g_t                      at the first step,
    b_t = momentum * b_{t-1} + (1 - dampening) * g_t  after it   (if momentum != 0)
    d_t = g_t + momentum * b_t     (nesterov)  |  b_t  (momentum)  |  g_t  (plain)
    w   = w - lr * d_t
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from handgrad.optim.base import HandOptimizer, State, Tensors, check_lr, check_nonnegative


class SGD(HandOptimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay.

    torch.optim.SGD's constructor: the same arguments and defaults, the same param_group keys and the
    same state (``momentum_buffer``), so a state_dict moves between the two unchanged. ``foreach`` is
    accepted (the update is in foreach ops anyway); ``fused=True`` and ``differentiable=True`` are
    refused (handgrad.optim.base).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                        maximize=maximize, foreach=foreach, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults)

    def check_group(self, group: dict) -> None:
        check_lr("SGD", group["lr"])
        check_nonnegative("SGD", momentum=group["momentum"], weight_decay=group["weight_decay"])
        momentum, dampening = group["momentum"], group["dampening"]
        if group["nesterov"] and (momentum <= 0 or dampening != 0):
            raise ValueError(
                f"SGD: nesterov=True needs momentum > 0 and dampening = 0 (got momentum={momentum}, "
                f"dampening={dampening}); set momentum, e.g. 0.9, or nesterov=False"
            )

    def update_(self, group: dict, params: list[torch.Tensor], grads: Tensors) -> None:
        sgd_step_(group, self.state, params, grads)


def sgd_step_(group: dict, state: State, params: list[torch.Tensor], grads: Tensors) -> None:
    """One SGD update of ``params`` with ``grads`` as their gradients, in place, for one param group
    (its lr, momentum, dampening, weight_decay, nesterov, maximize). Momentum buffers live in ``state[w]``
    (the optimiser's state, so checkpoints hold them). Each line is one line of the formula above,
    applied to every tensor at once by a foreach op: one C++ call instead of a Python loop over the
    parameters. ``SGD.step`` calls it with the .grad of each parameter, the fused training step
    (handgrad.steps) with gradients it computed itself. Call under torch.no_grad().
    """
    lr, momentum, dampening = float(group["lr"]), group["momentum"], group["dampening"]
    if group["maximize"]:
        grads = torch._foreach_neg(grads)  # g = -grad
    if group["weight_decay"] != 0:
        grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])  # g + weight_decay * w
    if momentum != 0:
        has_buffer = ["momentum_buffer" in state[w] for w in params]
        if any(has_buffer):  # b <- momentum * b + (1 - dampening) * g
            buffers = [state[w]["momentum_buffer"] for w, h in zip(params, has_buffer, strict=True) if h]
            torch._foreach_mul_(buffers, momentum)
            torch._foreach_add_(buffers, [g for g, h in zip(grads, has_buffer, strict=True) if h], alpha=1 - dampening)
        for w, g, h in zip(params, grads, has_buffer, strict=True):
            if not h:  # the first step: b = g
                state[w]["momentum_buffer"] = g.clone()
        buffers = [state[w]["momentum_buffer"] for w in params]
        grads = torch._foreach_add(grads, buffers, alpha=momentum) if group["nesterov"] else buffers  # g + m b | b
    torch._foreach_add_(params, grads, alpha=-lr)  # w <- w - lr * d
