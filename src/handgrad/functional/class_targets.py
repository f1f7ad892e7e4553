"""Class-index targets, as nll_loss and cross_entropy read them: the checks, the ignored targets and class
weights, and the loss as a linear map of the log-probabilities, with its adjoint.

Shapes: log-probabilities z (N, C, d1, ..., dk) with the classes along dim 1 (k >= 0; an unbatched (C,)
input is read as (1, C)), targets t (N, d1, ..., dk), one class index per example i = (n, d1, ..., dk).

With class weights w (C,) (all 1 without), ignore_index ig and label smoothing eps (0 for nll_loss):

    r_i = [t_i != ig] w_{t_i}                   the row weight ("rows"; None when every r_i = 1)
    u_i = [t_i != ig]                           the mask ("mask"; None when nothing is ignored, and
                                                None without weights, where u = r: ``smoothing_mask``)
    L_i = -(1 - eps) r_i z_{i, t_i} - (eps / C) u_i sum_c w_c z_ic          (Lambda, linear in z)
        = -u_i sum_c w_c q_ic z_ic,   q_i = (1 - eps) onehot(t_i) + eps / C   (the smoothed target)
    L   = L_i ("none"),  sum_i L_i ("sum"),  sum_i L_i / W ("mean"),  W = sum_i r_i

torch's weighted mean: sum_n w_{t_n} L_n / sum_n w_{t_n} [t_n != ig], the smoothing term divided by the
same W. Every target ignored: W = 0 and the mean is 0 / 0 = nan, as torch's; its gradient is 0 there.
The gradient of Lambda (its adjoint), for an upstream gradient g:

    dL/dz_ic = -s_i ((1 - eps) r_i [c = t_i] + (eps / C) u_i w_c)
    s_i = g_i ("none"),  g ("sum"),  g / W ("mean"; g / 1 where W = 0, so ignored rows get 0, not nan)

An ignored target is replaced by class 0 before any gather: its row weight is 0, so it adds nothing.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from handgrad.functional.autocast import autocast_on_any_device
from handgrad.functional.reduction import check_constant, may_read_values


class ClassTargets(NamedTuple):
    input: torch.Tensor  # (N, C, *d): the unbatched (C,) as (1, C)
    target: torch.Tensor  # (N, *d) int64, ignored targets replaced by 0
    rows: torch.Tensor | None  # r (N, *d); None: every r_i = 1
    mask: torch.Tensor | None  # u (N, *d); None: nothing ignored, or no weights (u = r then)
    unbatched: bool


def class_targets(name: str, input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                  ignore_index: int) -> ClassTargets:
    """The checks torch makes of a class-index target (its shape, its dtype, the weight's shape, each index in
    0..C-1 or ignore_index), each a handgrad error raised before any kernel, and the targets as Lambda reads them.

    The range check reads the target's values (one host sync, CPU only: ``may_read_values``). It also tells
    whether any target is ignored; where it cannot run (GPU, torch.func transforms, torch.compile) every
    target is treated as one that might be, and an index out of range fails in gather, as in torch on a GPU.
    """
    if input.dim() == 0:
        raise ValueError(f"{name}: input is a 0-d tensor; expected logits of shape (C,), (N, C) or (N, C, d1, ...)")
    if target.dtype not in (torch.int64, torch.uint8):
        raise TypeError(f"{name}: target of dtype {target.dtype} must hold class indices (torch.long, or "
                        "torch.uint8); convert it with target.long(), or for class probabilities give the target "
                        f"the input's shape {tuple(input.shape)}")
    expected = () if input.dim() == 1 else (input.shape[0], *input.shape[2:])
    if target.shape != expected:
        raise ValueError(f"{name}: logits of shape {tuple(input.shape)} need a target of class indices of shape "
                         f"{expected}, got {tuple(target.shape)}")
    classes = input.shape[0 if input.dim() == 1 else 1]
    if weight is not None:
        check_weight(name, weight, input, classes)
        check_constant(name, weight=weight)
    unbatched = input.dim() == 1
    if unbatched:
        input, target = input.unsqueeze(0), target.unsqueeze(0)
    target = target.long()

    may_be_ignored = target.numel() > 0
    if may_be_ignored and may_read_values(target):
        low, high = (int(value) for value in torch.aminmax(target))
        if low < 0 or high >= classes:
            check_range(name, target, classes, ignore_index, tuple(input.shape))
        may_be_ignored = low <= ignore_index <= high
    if not may_be_ignored:
        rows = None if weight is None else weight[target]
        return ClassTargets(input, target, rows, None, unbatched)
    kept = target != ignore_index
    target = torch.where(kept, target, 0)
    if weight is None:  # r = u: passed once (a Function may not take one tensor twice under torch.compile)
        return ClassTargets(input, target, kept.to(input.dtype), None, unbatched)
    mask = kept.to(weight.dtype)
    return ClassTargets(input, target, mask * weight[target], mask, unbatched)


def check_weight(name: str, weight: torch.Tensor, input: torch.Tensor, classes: int) -> None:
    """torch's checks of the class weights: one per class, the input's device and dtype (under autocast both are
    cast to float32 first, as torch's autocast casts them)."""
    if weight.shape != (classes,):
        raise ValueError(f"{name}: weight of shape {tuple(weight.shape)} must hold one weight per class: shape "
                         f"({classes},) for logits of shape {tuple(input.shape)}")
    cast = autocast_on_any_device() and torch.is_autocast_enabled(input.device.type)
    if weight.device != input.device or (weight.dtype != input.dtype and not cast):
        raise TypeError(f"{name}: weight ({weight.dtype}, {weight.device}) must have the input's dtype and device "
                        f"({input.dtype}, {input.device}); convert it with weight.to(input)")


def check_range(name: str, target: torch.Tensor, classes: int, ignore_index: int, shape: tuple) -> None:
    """An IndexError naming the first class index outside 0..C-1 that is not ignore_index, if there is one."""
    outside = ((target < 0) | (target >= classes)) & (target != ignore_index)
    if outside.any():
        bad = int(target[outside][0])
        raise IndexError(f"{name}: class index {bad} is out of range for logits of shape {shape} ({classes} classes: "
                         f"valid indices are 0..{classes - 1}, or ignore_index={ignore_index})")


def class_view(weight: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """w (C,) as (1, C, 1, ..., 1), to broadcast against ``like`` (N, C, *d)."""
    return weight.view(1, -1, *([1] * (like.dim() - 2)))


def row_count(target: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor | int:
    """W, the divisor of "mean": the sum of the row weights, or the number of targets without any."""
    return target.numel() if rows is None else rows.sum()


def smoothing_mask(rows: torch.Tensor | None, mask: torch.Tensor | None,
                   weight: torch.Tensor | None) -> torch.Tensor | None:
    """u, as the smoothing term reads it: the mask, or the row weights where they are the mask (no weights)."""
    return mask if mask is not None or weight is not None else rows


def linear_loss(z: torch.Tensor, target: torch.Tensor, rows: torch.Tensor | None, mask: torch.Tensor | None,
                weight: torch.Tensor | None, reduction: str, smoothing: float) -> torch.Tensor:
    """Lambda(z): the loss, linear in the log-probabilities z (module docstring). The forward applies it to
    log p, the jvp to the tangent of log p."""
    loss = -z.gather(1, target.unsqueeze(1)).squeeze(1)  # -z_{i, t_i}   (N, *d)
    if rows is not None:
        loss = loss * rows
    if smoothing:
        uniform = -(z if weight is None else z * class_view(weight, z)).sum(1)  # -sum_c w_c z_ic
        mask = smoothing_mask(rows, mask, weight)
        if mask is not None:
            uniform = uniform * mask
        hard, uniform = (1 - smoothing) * loss, (smoothing / z.shape[1]) * uniform
        if reduction == "mean":  # the two terms apart, as torch: every target ignored gives nan, not inf
            divisor = row_count(target, rows)
            return hard.sum() / divisor + uniform.sum() / divisor
        loss = hard + uniform
    if reduction == "mean":
        return loss.mean() if rows is None else loss.sum() / rows.sum()
    return loss.sum() if reduction == "sum" else loss


def loss_scale(grad_loss: torch.Tensor, target: torch.Tensor, rows: torch.Tensor | None,
               reduction: str) -> torch.Tensor:
    """s: g_i ("none", (N, *d)), g ("sum"), g / W ("mean"; g / 1 where W = 0: every target ignored)."""
    if reduction != "mean":
        return grad_loss
    if rows is None:
        return grad_loss / max(target.numel(), 1)  # W = the number of targets
    divisor = rows.sum()
    return grad_loss / torch.where(divisor == 0, 1, divisor)


def per_row(scale: torch.Tensor, factor: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor:
    """s_i f_i as (N, 1, *d), to broadcast along the classes (f = r or u; 1 where None)."""
    scaled = scale if factor is None else scale * factor
    return scaled.expand(target.shape).unsqueeze(1)


def linear_loss_adjoint(grad_loss: torch.Tensor, like: torch.Tensor, target: torch.Tensor,
                        rows: torch.Tensor | None, mask: torch.Tensor | None, weight: torch.Tensor | None,
                        reduction: str, smoothing: float) -> torch.Tensor:
    """dL/dz for the upstream gradient ``grad_loss`` (module docstring), shaped like ``like`` (N, C, *d)."""
    scale = loss_scale(grad_loss, target, rows, reduction)
    hard = -(1 - smoothing) * per_row(scale, rows, target)  # -(1 - eps) s_i r_i   (N, 1, *d)
    grad = torch.zeros_like(like).scatter(1, target.unsqueeze(1), hard)  # at c = t_i, 0 elsewhere
    if smoothing:
        uniform = (smoothing / like.shape[1]) * per_row(scale, smoothing_mask(rows, mask, weight), target)
        grad = grad - (uniform if weight is None else uniform * class_view(weight, like))  # (eps/C) s_i u_i w_c
    return grad
