"""RMSprop, written out: the gradient divided by the root of a running average of its square.

The update follows torch.optim.RMSprop's (its default, for-loop implementation on the CPU) operation
for operation, so the two walk the same path bit for bit (tests: 25 steps of every option). Per
parameter w:

    g_t   = -grad if maximize else grad
    g_t   = g_t + weight_decay * w                      the L2 penalty's gradient
    v_t   = alpha * v_{t-1} + (1 - alpha) * g_t * g_t   running average of the squared gradient
    a_t   = a_{t-1} + (1 - alpha) * (g_t - a_{t-1})     centered: running average of the gradient (a lerp)
    s_t   = sqrt(v_t - a_t * a_t) + eps  (centered)  |  sqrt(v_t) + eps
                                                        centered: v_t - a_t^2 estimates the variance
    b_t   = momentum * b_{t-1} + g_t / s_t   (momentum > 0; b_0 = 0)
    w     = w - lr * b_t                     (momentum > 0)  |  w - lr * g_t / s_t

eps is added after the root, as torch does (Graves adds it under the root). Hinton, Srivastava &
Swersky, Neural Networks for Machine Learning, lecture 6e (2012); Graves 2013, "Generating Sequences
With Recurrent Neural Networks" (the centered form, with momentum).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from handgrad.optim.base import (
    HandOptimizer,
    State,
    Tensors,
    check_lr,
    check_nonnegative,
    count_steps_,
    new_step,
    real_views,
    zeros,
)


class RMSprop(HandOptimizer):
    """RMSprop with optional momentum, centering, weight decay and maximize.

    torch.optim.RMSprop's constructor: the same arguments and defaults, param_group keys and state
    (``step``; ``square_avg`` v; ``momentum_buffer`` b when momentum > 0; ``grad_avg`` a when centered),
    so a state_dict moves between the two unchanged. ``capturable`` and ``differentiable`` set to True
    are refused (handgrad.optim.base).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float | torch.Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
    ):
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered, weight_decay=weight_decay,
                        capturable=capturable, foreach=foreach, maximize=maximize, differentiable=differentiable)
        super().__init__(params, defaults)

    def check_group(self, group: dict) -> None:
        check_lr("RMSprop", group["lr"])
        check_nonnegative("RMSprop", eps=group["eps"], momentum=group["momentum"],
                          weight_decay=group["weight_decay"], alpha=group["alpha"])

    def update_(self, group: dict, params: list[torch.Tensor], grads: Tensors) -> None:
        rmsprop_step_(group, self.state, params, grads)


def rmsprop_step_(group: dict, state: State, params: list[torch.Tensor], grads: Tensors) -> None:
    """One RMSprop update of ``params`` with ``grads`` as their gradients, in place, for one param group.
    Each line is one line of the formula above, applied to every tensor at once by a foreach op."""
    lr, alpha, eps, momentum = float(group["lr"]), group["alpha"], group["eps"], group["momentum"]
    for w in params:
        if not state[w]:  # the parameter's first step: v = 0 (b = 0, a = 0)
            state[w].update(step=new_step(), square_avg=zeros(w))
            if momentum > 0:
                state[w]["momentum_buffer"] = zeros(w)
            if group["centered"]:
                state[w]["grad_avg"] = zeros(w)
    states = [state[w] for w in params]
    vs = [s["square_avg"] for s in states]
    bs = [s["momentum_buffer"] for s in states] if momentum > 0 else []
    avgs = [s["grad_avg"] for s in states] if group["centered"] else []

    if group["maximize"]:
        grads = torch._foreach_neg(grads)                                        # g = -grad
    count_steps_([s["step"] for s in states])                                    # t <- t + 1
    if group["weight_decay"] != 0:
        grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])   # g <- g + weight_decay w
    if any(torch.is_complex(w) for w in params):  # complex: (re, im) pairs from here, as in torch
        params, grads, vs, bs, avgs = real_views(params, grads, vs, bs, avgs)
    torch._foreach_mul_(vs, alpha)                                               # v <- alpha v
    torch._foreach_addcmul_(vs, grads, grads, 1 - alpha)                         #      + (1 - alpha) g g
    if group["centered"]:
        torch._foreach_lerp_(avgs, grads, 1 - alpha)                             # a <- a + (1 - alpha) (g - a)
        s = torch._foreach_addcmul(vs, avgs, avgs, -1)                           # s = v - a a
        torch._foreach_sqrt_(s)                                                  # s = sqrt(v - a a)
    else:
        s = torch._foreach_sqrt(vs)                                              # s = sqrt(v)
    torch._foreach_add_(s, eps)                                                  #     + eps
    if momentum > 0:
        torch._foreach_mul_(bs, momentum)                                        # b <- momentum b
        torch._foreach_addcdiv_(bs, grads, s)                                    #      + g / s
        torch._foreach_add_(params, bs, alpha=-lr)                               # w <- w - lr b
    else:
        torch._foreach_addcdiv_(params, grads, s, -lr)                           # w <- w - lr g / s
