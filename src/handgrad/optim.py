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

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
            weight_decay, nesterov = group["weight_decay"], group["nesterov"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                grad = w.grad
                if weight_decay != 0:
                    grad = grad.add(w, alpha=weight_decay)  # grad + weight_decay * w
                if momentum != 0:
                    state = self.state[w]
                    if "momentum_buffer" not in state:
                        buf = state["momentum_buffer"] = grad.clone()
                    else:
                        buf = state["momentum_buffer"]
                        buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                    grad = grad.add(buf, alpha=momentum) if nesterov else buf  # g + momentum * b  |  b
                w.add_(grad, alpha=-lr)  # w <- w - lr * grad
        return loss
