"""Adam and AdamW, written out: a step along the running average of the gradient, divided by the root
of the running average of its square, both corrected for starting at zero.

The update follows torch.optim.Adam's (its default, for-loop implementation on the CPU) operation for
operation, so the two walk the same path bit for bit (tests: 25 steps of every option). Per parameter w,
with t its step count (1 at its first update):

    g_t   = -grad if maximize else grad
    w     = w * (1 - lr * weight_decay)                 AdamW (decoupled_weight_decay): shrink w itself
    g_t   = g_t + weight_decay * w                      Adam: the L2 penalty's gradient joins g_t
    m_t   = m_{t-1} + (1 - beta1) * (g_t - m_{t-1})     = beta1 m_{t-1} + (1 - beta1) g_t   (a lerp)
    v_t   = beta2 * v_{t-1} + (1 - beta2) * g_t * g_t
    u_t   = max(u_{t-1}, v_t)  (amsgrad)  |  v_t        the squares' average the step divides by
    denom = sqrt(u_t) / sqrt(1 - beta2^t) + eps         sqrt of the bias-corrected u_t / (1 - beta2^t)
    w     = w - lr / (1 - beta1^t) * m_t / denom        m_t / (1 - beta1^t): the bias-corrected mean

Bias correction: m_0 = v_0 = 0, so m_t = (1 - beta1) sum_k beta1^(t-k) g_k averages the gradients with
weights summing to 1 - beta1^t, not 1; dividing by that sum makes m_t / (1 - beta1^t) an average
(likewise v_t). Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization", Algorithm 1;
Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization" (AdamW); Reddi et al. 2018,
"On the Convergence of Adam and Beyond" (amsgrad).
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


class Adam(HandOptimizer):
    """Adam (AdamW with ``decoupled_weight_decay=True``), with optional amsgrad and maximize.

    torch.optim.Adam's constructor: the same arguments and defaults, param_group keys and state
    (``step``, a 0-dim float32 tensor; ``exp_avg`` m; ``exp_avg_sq`` v; ``max_exp_avg_sq`` u with amsgrad),
    so a state_dict moves between the two unchanged. ``fused``, ``capturable`` and ``differentiable``
    set to True are refused (handgrad.optim.base), and so are betas given as tensors.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ):
        betas = tuple(betas) if isinstance(betas, list) else betas  # a pair from a YAML config: a tuple, as in torch
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                        foreach=foreach, capturable=capturable, differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    def check_group(self, group: dict) -> None:
        owner = type(self).__name__
        check_lr(owner, group["lr"])
        check_nonnegative(owner, eps=group["eps"], weight_decay=group["weight_decay"])
        betas = group["betas"]
        if not (isinstance(betas, tuple | list) and len(betas) == 2):
            raise ValueError(f"{owner}: betas={betas!r} is not a pair; pass (beta1, beta2), e.g. betas=(0.9, 0.999)")
        check_decay_rate(owner, "betas[0]", betas[0], "betas=(0.9, 0.999)")
        check_decay_rate(owner, "betas[1]", betas[1], "betas=(0.9, 0.999)")

    def update_(self, group: dict, params: list[torch.Tensor], grads: Tensors) -> None:
        adam_step_(group, self.state, params, grads)


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay (w <- w (1 - lr weight_decay) before the Adam step) and
    weight_decay=1e-2 by default; torch.optim.AdamW's constructor, param_group keys and state."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # as torch's AdamW: whatever was saved, the weight decay is decoupled
            group["decoupled_weight_decay"] = True


def adam_step_(group: dict, state: State, params: list[torch.Tensor], grads: Tensors) -> None:
    """One Adam update of ``params`` with ``grads`` as their gradients, in place, for one param group.
    Each line is one line of the formula above, applied to every tensor at once by a foreach op; the
    per-parameter numbers (the bias corrections of each step count t) go in as lists. Call under no_grad.
    """
    lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    for w in params:
        if not state[w]:  # the parameter's first step: t = 0, m = v = 0 (u = 0)
            state[w].update(step=new_step(), exp_avg=zeros(w), exp_avg_sq=zeros(w))
            if group["amsgrad"]:
                state[w]["max_exp_avg_sq"] = zeros(w)
    states = [state[w] for w in params]
    steps = [s["step"] for s in states]
    ms, vs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
    us = [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else vs

    if group["maximize"]:
        grads = torch._foreach_neg(grads)                                   # g = -grad
    count_steps_(steps)                                                     # t <- t + 1
    if weight_decay != 0:
        if group["decoupled_weight_decay"]:
            torch._foreach_mul_(params, float(1 - lr * weight_decay))       # w <- w (1 - lr weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)   # g <- g + weight_decay w
    if any(torch.is_complex(w) for w in params):  # complex: (re, im) pairs from here, as in torch
        params, grads, ms, vs, us = real_views(params, grads, ms, vs, us)
    torch._foreach_lerp_(ms, grads, 1 - beta1)                              # m <- m + (1 - beta1) (g - m)
    torch._foreach_mul_(vs, beta2)                                          # v <- beta2 v
    torch._foreach_addcmul_(vs, grads, grads, 1 - beta2)                    #      + (1 - beta2) g g
    if group["amsgrad"]:
        torch._foreach_maximum_(us, vs)                                     # u <- max(u, v)
    t = [n.item() for n in steps]
    denom = torch._foreach_sqrt(us)                                         # sqrt(u)
    torch._foreach_div_(denom, [(1 - beta2**n) ** 0.5 for n in t])          #   / sqrt(1 - beta2^t)
    torch._foreach_add_(denom, eps)                                         #   + eps
    torch._foreach_addcdiv_(params, ms, denom, [-float(lr / (1 - beta1**n)) for n in t])  # w - lr/(1 - beta1^t) m/denom
