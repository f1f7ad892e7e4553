"""Adagrad, written out: the gradient divided by the root of the sum of all its past squares, so each
coordinate's step shrinks as that coordinate accumulates gradient.

The update follows torch.optim.Adagrad's (its default, for-loop implementation on the CPU) operation
for operation, so the two walk the same path bit for bit (tests: 25 steps of every option). Per
parameter w, with t its step count (1 at its first update):

    g_t   = -grad if maximize else grad
    g_t   = g_t + weight_decay * w                       the L2 penalty's gradient
    lr_t  = lr / (1 + (t - 1) * lr_decay)                the decayed learning rate
    s_t   = s_{t-1} + g_t * g_t                          s_0 = initial_accumulator_value
    w     = w - lr_t * g_t / (sqrt(s_t) + eps)

Duchi, Hazan & Singer 2011, "Adaptive Subgradient Methods for Online Learning and Stochastic
Optimization" (the diagonal form).
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
)


class Adagrad(HandOptimizer):
    """Adagrad with optional learning-rate decay, weight decay and maximize.

    torch.optim.Adagrad's constructor: the same arguments and defaults, param_group keys and state
    (``step``; ``sum`` s), so a state_dict moves between the two unchanged. As in torch, the state of
    every parameter is made in the constructor, and every sum starts at the constructor's
    ``initial_accumulator_value`` (a param group's own value is kept in its dict but not read).
    ``fused`` and ``differentiable`` set to True are refused (handgrad.optim.base).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float | torch.Tensor = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ):
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach, maximize=maximize,
                        differentiable=differentiable, fused=fused)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for w in group["params"]:
                self.state[w].update(step=new_step(), sum=self.initial_sum(w))

    def initial_sum(self, w: torch.Tensor) -> torch.Tensor:
        """s_0: initial_accumulator_value everywhere (in both parts of a complex parameter)."""
        value = self.defaults["initial_accumulator_value"]
        return torch.full_like(w, complex(value, value) if torch.is_complex(w) else value,
                               memory_format=torch.preserve_format)

    def check_group(self, group: dict) -> None:
        check_lr("Adagrad", group["lr"])
        check_nonnegative("Adagrad", lr_decay=group["lr_decay"], weight_decay=group["weight_decay"],
                          initial_accumulator_value=group["initial_accumulator_value"], eps=group["eps"])

    def share_memory(self) -> None:
        """Move each parameter's sum into shared memory (torch.optim.Adagrad.share_memory)."""
        for group in self.param_groups:
            for w in group["params"]:
                self.state[w]["sum"].share_memory_()

    def update_(self, group: dict, params: list[torch.Tensor], grads: Tensors) -> None:
        for w in params:
            if not self.state[w]:  # a parameter added after the constructor (add_param_group)
                self.state[w].update(step=new_step(), sum=self.initial_sum(w))
        adagrad_step_(group, self.state, params, grads)


def adagrad_step_(group: dict, state: State, params: list[torch.Tensor], grads: Tensors) -> None:
    """One Adagrad update of ``params`` with ``grads`` as their gradients, in place, for one param group
    (the state made already). Each line is one line of the formula above, applied to every tensor at
    once by a foreach op; the decayed learning rate of each parameter's step count goes in as a list."""
    lr, lr_decay = group["lr"], group["lr_decay"]
    states = [state[w] for w in params]
    steps, sums = [s["step"] for s in states], [s["sum"] for s in states]

    count_steps_(steps)                                                          # t <- t + 1
    if group["maximize"]:
        grads = torch._foreach_neg(grads)                                        # g = -grad
    if group["weight_decay"] != 0:
        grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])   # g <- g + weight_decay w
    if any(torch.is_complex(w) for w in params):  # complex: (re, im) pairs from here, as in torch
        params, grads, sums = real_views(params, grads, sums)
    lr_t = [lr / (1 + (n.item() - 1) * lr_decay) for n in steps]                 # lr / (1 + (t - 1) lr_decay)
    torch._foreach_addcmul_(sums, grads, grads, 1)                               # s <- s + g g
    std = torch._foreach_sqrt(sums)
    torch._foreach_add_(std, group["eps"])                                       # sqrt(s) + eps
    torch._foreach_addcdiv_(params, grads, std, [-float(r) for r in lr_t])       # w <- w - lr_t g / (sqrt(s) + eps)
