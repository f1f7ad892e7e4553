"""What the losses share: torch's reduction argument (and its legacy form), the reduction itself, the
argument checks every loss makes, and whether a wrapper may read a tensor's values on the host.

A loss computes one value per element (or per example) and then reduces:

    "none"  the values themselves
    "sum"   their sum
    "mean"  their sum divided by how many there are (or, where the loss says so, by a sum of weights)

torch's older arguments ``size_average`` and ``reduce`` still override ``reduction`` when either is
given (with torch's deprecation warning); ``"elementwise_mean"`` is an older name of ``"mean"``.
"""

from __future__ import annotations

import warnings

import torch

from handgrad.functional.function import is_dynamo_compiling, transforms_active

REDUCTIONS = ("mean", "sum", "none")


def reduction_of(name: str, reduction: str, size_average: bool | None = None, reduce: bool | None = None,
                 allowed: tuple[str, ...] = REDUCTIONS) -> str:
    """The reduction a loss applies, from its arguments as torch reads them; a ValueError names a bad one."""
    if size_average is not None or reduce is not None:
        reduction = legacy_reduction(size_average, reduce)
    if reduction == "elementwise_mean":
        warnings.warn("reduction='elementwise_mean' is deprecated. Please use reduction='mean' instead.",
                      stacklevel=3)
        reduction = "mean"
    if reduction not in allowed:
        raise ValueError(f"{name}: reduction={reduction!r} is not one of {', '.join(map(repr, allowed))}")
    return reduction


def legacy_reduction(size_average: bool | None, reduce: bool | None) -> str:
    """torch's reading of the deprecated pair: reduce=False -> "none", else size_average=False -> "sum",
    else "mean" (None counts as True); with torch's warning."""
    reduction = "none" if reduce is False else "sum" if size_average is False else "mean"
    warnings.warn(f"size_average and reduce args will be deprecated, please use reduction='{reduction}' instead.",
                  stacklevel=4)
    return reduction


def reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """The per-element ``loss`` reduced: its mean, its sum, or itself ("none")."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def may_read_values(tensor: torch.Tensor) -> bool:
    """Whether a wrapper may check ``tensor``'s values on the host (a class index in range, a probability in
    [0, 1]): on the CPU only (on a GPU the check would make every step wait for the device), and never under
    a torch.func transform (a batched tensor has many values: rule R7) or while dynamo traces (a graph
    break). Where it may not, the check is skipped, as torch's CUDA kernels check inside the kernel."""
    return tensor.device.type == "cpu" and not transforms_active() and not is_dynamo_compiling()


def check_floating(name: str, **tensors: torch.Tensor | None) -> None:
    """A TypeError naming the first of ``tensors`` (given by name) that is not floating point."""
    for what, tensor in tensors.items():
        if tensor is not None and not tensor.is_floating_point():
            raise TypeError(f"{name}: {what} of dtype {tensor.dtype} is not floating point; convert it, "
                            f"e.g. {what}.float()")


def check_constant(name: str, **tensors: torch.Tensor | None) -> None:
    """A ValueError for a weight that requires grad where torch's op is not differentiable in it."""
    for what, tensor in tensors.items():
        if tensor is not None and tensor.requires_grad:
            raise ValueError(f"{name}: {what} requires grad, but the loss is not differentiable with respect to "
                             f"{what} (as in torch); pass {what}.detach()")


def broadcast_shape(name: str, *named: tuple[str, torch.Tensor]) -> torch.Size:
    """The shape the named tensors broadcast to; a ValueError naming their shapes if they do not."""
    try:
        return torch.broadcast_shapes(*(tensor.shape for _, tensor in named))
    except RuntimeError:
        shapes = " and ".join(f"{what} of shape {tuple(tensor.shape)}" for what, tensor in named)
        raise ValueError(f"{name}: {shapes} do not broadcast to one shape; give them the same shape") from None
