"""What handgrad's optimisers share: torch.optim.Optimizer's bookkeeping, one update per param group,
and the checks of each param group's settings.

Each optimiser is a torch.optim.Optimizer subclass with torch's constructor signature, defaults and
param_group keys, so that a state_dict moves between handgrad's and torch's optimiser unchanged, both
ways. A subclass writes its update rule in foreach ops (``update_``, one line of the formula each)
and the checks of its hyperparameters (``check_group``). The options that ask torch for another
*implementation* of the same update are refused, each with a ValueError that names it and the fix:

    fused=True           torch's fused kernel (torch._fused_adam_, ...), not an update written out
    capturable=True      CUDA-graph capture: the step count kept on the device; handgrad reads it on the host
    differentiable=True  autograd through the update itself; handgrad updates under torch.no_grad()

``foreach`` is accepted and stored (None, True or False): the update is in foreach ops whatever its value.
A learning rate may be a one-element tensor, as in torch; the scalars computed from it (lr / (1 - beta1^t),
...) are computed as torch computes them, as tensors, and passed to the foreach ops as numbers.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any, overload

import torch

Tensors = list[torch.Tensor] | tuple[torch.Tensor, ...]
State = MutableMapping[torch.Tensor, Any]  # torch.optim.Optimizer.state: each parameter's buffers by name

# What each refused option asks torch for.
OTHER_IMPLEMENTATIONS = {
    "fused": "asks for torch's fused kernel, not an update written out in foreach ops",
    "capturable": "asks for CUDA-graph capture (the step count kept on the device); handgrad reads it on the host",
    "differentiable": "asks for autograd through the update; handgrad updates in place under torch.no_grad()",
}

# Why each hyperparameter must be >= 0, and a typical value.
NONNEGATIVE = {
    "lr": "a learning rate must be >= 0, e.g. lr=1e-3",
    "eps": "it keeps the denominator away from 0: use a small positive value, e.g. eps=1e-8",
    "weight_decay": "use 0 (no decay) or a small positive value, e.g. weight_decay=1e-2",
    "momentum": "use a value in [0, 1), e.g. momentum=0.9",
    "alpha": "it is the decay rate of the running average of squared gradients: use e.g. alpha=0.99",
    "lr_decay": "use 0 (a constant learning rate) or a small positive value, e.g. lr_decay=1e-4",
    "initial_accumulator_value": "the running sum of squared gradients starts there: use 0 or e.g. 0.1",
}


class HandOptimizer(torch.optim.Optimizer):
    """torch.optim.Optimizer whose ``step`` calls the subclass's ``update_(group, params, grads)`` once per
    param group, on the parameters that have a gradient (the others sit the step out, as in torch).
    ``step(closure)`` runs the closure (Lightning passes one that does forward and backward) first.
    """

    def update_(self, group: dict, params: list[torch.Tensor], grads: Tensors) -> None:
        raise NotImplementedError

    def check_group(self, group: dict) -> None:
        """Raise ValueError naming the value and the fix if a param group's hyperparameters are out of range."""
        raise NotImplementedError

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        group = {**self.defaults, **param_group}
        refuse_other_implementations(type(self).__name__, group)
        self.check_group(group)
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """load_state_dict and unpickling: param groups saved without a newer key get its default (as torch's
        optimisers do); a step count saved as a number becomes a tensor; the settings are checked."""
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
            refuse_other_implementations(type(self).__name__, group)
            self.check_group(group)
        for saved in self.state.values():
            if "step" in saved and not torch.is_tensor(saved["step"]):
                saved["step"] = torch.tensor(float(saved["step"]), dtype=step_dtype())

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
                grads = [w.grad for w in params]
                for w, g in zip(params, grads, strict=True):
                    if g.is_sparse:
                        raise RuntimeError(
                            f"{type(self).__name__}: the gradient of a parameter of shape {tuple(w.shape)} is sparse; "
                            f"handgrad's updates are dense: pass dense gradients (e.g. nn.Embedding(sparse=False)) "
                            f"or use torch.optim.SparseAdam")
                self.update_(group, params, grads)
        return loss


def refuse_other_implementations(owner: str, group: dict) -> None:
    for option, why in OTHER_IMPLEMENTATIONS.items():
        if group.get(option):
            raise ValueError(f"{owner}: {option}=True {why}; use {option}=False (handgrad's update is the same "
                             f"rule in foreach ops) or torch.optim.{owner}({option}=True)")


def check_lr(owner: str, lr: float | torch.Tensor) -> None:
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError(f"{owner}: lr is a tensor of {lr.numel()} elements; a tensor learning rate holds one "
                         f"number, e.g. lr=torch.tensor(1e-3)")
    check_nonnegative(owner, lr=lr)


def check_nonnegative(owner: str, **values: float | torch.Tensor) -> None:
    """ValueError for the first value that is negative or NaN, with why it must be >= 0 (NONNEGATIVE)."""
    for name, value in values.items():
        if not value >= 0:
            problem = "is negative" if value < 0 else "is not a number"
            raise ValueError(f"{owner}: {name}={value} {problem}; {NONNEGATIVE[name]}")


def check_decay_rate(owner: str, name: str, value: float, example: str, one_allowed: bool = False) -> None:
    """A running average's decay rate (Adam's betas, Adadelta's rho) lies in [0, 1), or [0, 1]."""
    interval = "[0, 1]" if one_allowed else "[0, 1)"
    if isinstance(value, torch.Tensor):
        raise ValueError(f"{owner}: {name}={value!r} is a tensor (torch takes those with capturable=True); "
                         f"pass a number, e.g. {example}")
    if not (0 <= value <= 1 if one_allowed else 0 <= value < 1):
        raise ValueError(f"{owner}: {name}={value} is outside {interval}; it is the decay rate of a running "
                         f"average: use e.g. {example}")


ONE = torch.tensor(1.0)


def count_steps_(steps: list[torch.Tensor]) -> None:
    """t <- t + 1 for each parameter's step count (0-dim CPU tensors). Adding the tensor ONE (alpha given to
    pick that overload) takes a third of the time of adding the number 1, which the foreach op would wrap
    into a new tensor for every step count; torch's foreach implementations add a tensor one the same way."""
    torch._foreach_add_(steps, ONE, alpha=1.0)


def step_dtype() -> torch.dtype:
    """The dtype of torch's step counters in state (not fused, not capturable): float32, or float64 when that
    is the default dtype."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def new_step() -> torch.Tensor:
    """A parameter's step count t, 0 before its first update: a 0-dim tensor on the CPU, as in torch."""
    return torch.tensor(0.0, dtype=step_dtype())


def zeros(w: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(w, memory_format=torch.preserve_format)


def real_views(*lists: Tensors) -> list[list[torch.Tensor]]:
    """Each list with its complex tensors as (..., 2) real views, so that an elementwise update treats the
    real and imaginary parts as two real numbers (torch does the same)."""
    return [[torch.view_as_real(t) if torch.is_complex(t) else t for t in tensors] for tensors in lists]
