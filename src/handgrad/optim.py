"""Gradient descent, written out: w <- w - lr * grad, with momentum and weight decay.

The update follows torch.optim.SGD's definition exactly, so the two optimisers walk the
same path (tests check 20+ steps of each setting):

    g_t = grad + weight_decay * w                     (L2 penalty's gradient)
    b_t = g_t                      at the first step,
    b_t = momentum * b_{t-1} + (1 - dampening) * g_t  after it   (if momentum != 0)
    d_t = g_t + momentum * b_t     (nesterov)  |  b_t  (momentum)  |  g_t  (plain)
    w   = w - lr * d_t
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import overload

import torch


class SGD(torch.optim.Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay.

    A ``torch.optim.Optimizer`` subclass, so Lightning, schedulers and checkpoints treat it
    like any other optimiser. ``step(closure)`` runs the closure (Lightning passes one that
    does forward and backward) before updating.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ):
        if lr < 0:
            raise ValueError(f"SGD: lr={lr} is negative; a learning rate must be >= 0 (e.g. lr=0.1)")
        if momentum < 0:
            raise ValueError(f"SGD: momentum={momentum} is negative; use a value in [0, 1), e.g. 0.9")
        if weight_decay < 0:
            raise ValueError(f"SGD: weight_decay={weight_decay} is negative; use 0 or a small positive value")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                f"SGD: nesterov=True needs momentum > 0 and dampening = 0 (got momentum={momentum}, "
                f"dampening={dampening}); set momentum, e.g. 0.9, or nesterov=False"
            )
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
        super().__init__(params, defaults)

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params = [w for w in group["params"] if w.grad is not None]
            if params:
                sgd_step_(group, self.state, params, [w.grad for w in params])
        return loss


Tensors = list[torch.Tensor] | tuple[torch.Tensor, ...]


def sgd_step_(group: dict, state, params: list[torch.Tensor], grads: Tensors) -> None:
    """One SGD update of ``params`` with ``grads`` as their gradients, in place, for one param group
    (its lr, momentum, dampening, weight_decay, nesterov). Momentum buffers live in ``state[w]``
    (the optimiser's state, so checkpoints hold them). Each line is one line of the formula above,
    applied to every tensor at once by a foreach op: one C++ call instead of a Python loop over the
    parameters. ``SGD.step`` calls it with the .grad of each parameter, the fused training step
    (handgrad.lit_module) with gradients it computed itself. Call under torch.no_grad().
    """
    lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
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
