"""Adadelta, written out: the gradient scaled by the ratio of two running roots, of the past updates'
squares over the gradients' squares, so the step carries the parameter's units.

The update follows torch.optim.Adadelta's (its default, for-loop implementation on the CPU) operation
for operation, so the two walk the same path bit for bit (tests: 25 steps of every option). Per
parameter w:

    g_t  = -grad if maximize else grad
    g_t  = g_t + weight_decay * w                        the L2 penalty's gradient
    v_t  = rho * v_{t-1} + (1 - rho) * g_t * g_t         running average of the squared gradient
    d_t  = sqrt(u_{t-1} + eps) / sqrt(v_t + eps) * g_t   the update: RMS[d]_{t-1} / RMS[g]_t * g_t
    u_t  = rho * u_{t-1} + (1 - rho) * d_t * d_t         running average of the squared update
    w    = w - lr * d_t

Zeiler 2012, "ADADELTA: An Adaptive Learning Rate Method", Algorithm 1 (there lr = 1, torch's default).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from handgrad.optim.base import (
    HandOptimizer,
    State,
    Tensors,
    check_decay_rate,
    check_lr,
    check_nonnegative,
    count_steps_,
    new_step,
    real_views,
    zeros,
)


class Adadelta(HandOptimizer):
    """Adadelta with optional weight decay and maximize.

    torch.optim.Adadelta's constructor: the same arguments and defaults, param_group keys and state
    (``step``; ``square_avg`` v; ``acc_delta`` u), so a state_dict moves between the two unchanged.
    ``capturable`` and ``differentiable`` set to True are refused (handgrad.optim.base).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float | torch.Tensor = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
    ):
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        capturable=capturable, foreach=foreach, differentiable=differentiable)
        super().__init__(params, defaults)

    def check_group(self, group: dict) -> None:
        check_lr("Adadelta", group["lr"])
        check_decay_rate("Adadelta", "rho", group["rho"], "rho=0.9", one_allowed=True)
        check_nonnegative("Adadelta", eps=group["eps"], weight_decay=group["weight_decay"])

    def update_(self, group: dict, params: list[torch.Tensor], grads: Tensors) -> None:
        adadelta_step_(group, self.state, params, grads)


def adadelta_step_(group: dict, state: State, params: list[torch.Tensor], grads: Tensors) -> None:
    """One Adadelta update of ``params`` with ``grads`` as their gradients, in place, for one param group.
    Each line is one line of the formula above, applied to every tensor at once by a foreach op."""
    lr, rho, eps = float(group["lr"]), group["rho"], group["eps"]
    for w in params:
        if not state[w]:  # the parameter's first step: v = u = 0
            state[w].update(step=new_step(), square_avg=zeros(w), acc_delta=zeros(w))
    states = [state[w] for w in params]
    vs, us = [s["square_avg"] for s in states], [s["acc_delta"] for s in states]

    count_steps_([s["step"] for s in states])                                    # t <- t + 1
    if group["maximize"]:
        grads = torch._foreach_neg(grads)                                        # g = -grad
    if group["weight_decay"] != 0:
        grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])   # g <- g + weight_decay w
    if any(torch.is_complex(w) for w in params):  # complex: (re, im) pairs from here, as in torch
        params, grads, vs, us = real_views(params, grads, vs, us)
    torch._foreach_mul_(vs, rho)                                                 # v <- rho v
    torch._foreach_addcmul_(vs, grads, grads, 1 - rho)                           #      + (1 - rho) g g
    rms_g = torch._foreach_add(vs, eps)
    torch._foreach_sqrt_(rms_g)                                                  # sqrt(v + eps)
    d = torch._foreach_add(us, eps)
    torch._foreach_sqrt_(d)                                                      # sqrt(u + eps)
    torch._foreach_div_(d, rms_g)                                                # d = sqrt(u + eps) / sqrt(v + eps)
    torch._foreach_mul_(d, grads)                                                #     * g
    torch._foreach_mul_(us, rho)                                                 # u <- rho u
    torch._foreach_addcmul_(us, d, d, 1 - rho)                                   #      + (1 - rho) d d
    torch._foreach_add_(params, d, alpha=-lr)                                    # w <- w - lr d
