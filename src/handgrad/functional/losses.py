"""Costs: the squared error (Nielsen's quadratic cost) and softmax cross-entropy.

With ``reduction="mean"`` the cost is averaged over the examples of the batch, so every
gradient that flows back from it is the batch average of the per-example gradients.
"""

from __future__ import annotations

import torch

from handgrad.functional.function import Autocast, TwinnedFunction, twinned

REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(name: str, reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction={reduction!r} is not one of {', '.join(map(repr, REDUCTIONS))}")


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


# --------------------------------------------------------------------------- mse_loss


@twinned
class MSELoss(TwinnedFunction):
    """L = reduce((x - t)^2),  d = x - t        x (*), t (*) -> L () or (*) with "none"

    Per element dL/dx = 2 d * s, where s = 1/n for "mean" (n elements), 1 for "sum",
    and s = grad_L elementwise for "none"; t enters with the opposite sign:
    grad_x =  2 d * s * grad_L
    grad_t = -2 d * s * grad_L                (saves only the difference d)
    """

    autocast = Autocast.FLOAT32  # as torch's mse_loss: float32 under autocast
    once_differentiable = True  # first order only: its backward reads x - t, saved as a non-differentiable output (R1)

    @staticmethod
    def forward(input, target, reduction):
        diff = input - target
        return _reduce(diff * diff, reduction), diff  # d is returned only for setup_context to save

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, _, reduction = inputs
        _, diff = output
        ctx.mark_non_differentiable(diff)
        ctx.save_for_backward(diff)
        ctx.reduction = reduction

    @staticmethod
    def backward(ctx, grad_output, _grad_diff):
        (diff,) = ctx.saved_tensors
        scale = 2 / diff.numel() if ctx.reduction == "mean" else 2
        grad = diff * (grad_output * scale)  # grad_output is () or, for "none", like diff
        grad_input = grad if ctx.needs_input_grad[0] else None
        grad_target = -grad if ctx.needs_input_grad[1] else None
        return grad_input, grad_target, None


def mse_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.mse_loss.

    Unlike torch (which broadcasts with a warning), shapes must match exactly: a silent
    broadcast of (N, 1) against (N,) is a classic bug that makes an (N, N) loss.
    """
    _check_reduction("mse_loss", reduction)
    if input.shape != target.shape:
        raise ValueError(
            f"mse_loss: input of shape {tuple(input.shape)} and target of shape {tuple(target.shape)} differ; "
            "they must match exactly (for class labels, one-hot encode the target to the input's shape)"
        )
    loss, _ = MSELoss.call(input, target, reduction)
    return loss


# --------------------------------------------------------------------------- cross_entropy


@twinned
class CrossEntropy(TwinnedFunction):
    """Softmax cross-entropy of logits x (N, C) against class indices t (N,).

    Forward, with the max subtracted so no exponent is positive:
        log p_n = (x_n - m_n) - log sum_c e^(x_nc - m_n),   m_n = max_c x_nc
        L_n     = -log p_n[t_n]                             -> reduce over n
    Backward, fused through softmax and log (no division by a tiny p):
        dL_n/dx_nc = p_nc - [c = t_n]
        grad_x     = (p - onehot(t)) * s_n               (N, C)
    with s_n = grad_L / N for "mean", grad_L for "sum", grad_L_n for "none".
    Saves p = e^(log p) and t.
    """

    autocast = Autocast.FLOAT32  # as torch's cross_entropy: float32 under autocast
    once_differentiable = True  # first order only: its backward reads p = e^(log p), saved without a graph (R1)

    @staticmethod
    def forward(input, target, reduction):
        shifted = input - input.amax(1, keepdim=True)
        log_p = shifted - torch.log(torch.exp(shifted).sum(1, keepdim=True))  # (N, C)
        loss = -log_p.gather(1, target.unsqueeze(1)).squeeze(1)  # (N,)
        return _reduce(loss, reduction), log_p

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, target, reduction = inputs
        _, log_p = output
        ctx.mark_non_differentiable(log_p)
        ctx.save_for_backward(torch.exp(log_p), target)
        ctx.reduction = reduction

    @staticmethod
    def backward(ctx, grad_loss, _grad_log_p):
        p, target = ctx.saved_tensors
        n = p.shape[0]
        grad = p.scatter_add(1, target.unsqueeze(1), -torch.ones_like(p[:, :1]))  # p - onehot(t)
        if ctx.reduction == "none":
            grad = grad * grad_loss.unsqueeze(1)
        else:
            grad = grad * (grad_loss / n if ctx.reduction == "mean" else grad_loss)
        return grad, None, None


def cross_entropy(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.cross_entropy for logits (N, C) or (C,)
    and integer class indices (N,) or ()."""
    _check_reduction("cross_entropy", reduction)
    unbatched = input.dim() == 1
    if unbatched:
        input, target = input.unsqueeze(0), target.unsqueeze(0)
    if input.dim() != 2:
        raise ValueError(f"cross_entropy: expected logits of shape (N, C) or (C,), got {tuple(input.shape)}")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise TypeError(
            f"cross_entropy: target must hold integer class indices (torch.long), got dtype {target.dtype}; "
            "for one-hot or probability targets use mse_loss, or convert with target.argmax(1)"
        )
    if target.shape != input.shape[:1]:
        raise ValueError(
            f"cross_entropy: logits of shape {tuple(input.shape)} need a target of shape ({input.shape[0]},), "
            f"got {tuple(target.shape)}"
        )
    num_classes = input.shape[1]
    # The range check reads the target's values: a data-dependent branch that would break a torch.compile
    # graph, so compiled code skips it (gather still raises for an index out of range), and that on a GPU
    # would make every step wait for the device, so only the CPU runs it: on CUDA, as with torch's own
    # cross_entropy, an index out of range stops the program with a device-side assert in gather.
    if target.numel() and target.device.type == "cpu" and not torch.compiler.is_compiling():
        low, high = torch.aminmax(target)
        if low < 0 or high >= num_classes:
            bad = int(low) if low < 0 else int(high)
            raise IndexError(
                f"cross_entropy: class index {bad} is out of range for logits of shape {tuple(input.shape)} "
                f"({num_classes} classes: valid indices are 0..{num_classes - 1})"
            )
    loss, _ = CrossEntropy.call(input, target.long(), reduction)
    return loss.squeeze(0) if unbatched and reduction == "none" else loss
