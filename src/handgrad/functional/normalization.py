"""Standardisation, the step batch norm (batch_norm.py) and layer norm (layer_norm.py) share: x is
centred and scaled by statistics of a set of m elements (a channel over the batch, or one row):

    mean = (1/m) sum x,   var = (1/m) sum (x - mean)^2   (biased),   r = 1 / sqrt(var + eps)
    x_hat = (x - mean) r

The statistics depend on every x of the set, so the gradient has three chain-rule terms: through
x_hat directly, through the mean and through the variance (standardized_grad). They collapse to

    grad_x = r (g - mean(g) - x_hat mean(g x_hat)),    g = dL/dx_hat,

with the means taken over the same m elements. Both Functions also return their statistics as
differentiable outputs (rule R1 of function.py: backward recomputes r and x_hat from them, so a
backward differentiated again reaches the statistics' own derivatives), and their gradients add

    (4) through the mean:      d mean / dx = 1/m                     ->  grad_mean / m
    (5) through the variance:  d var / dx = 2 (x - mean) / m         ->  grad_var 2 (x - mean) / m
        (layer norm returns r: dr/dvar = -r^3 / 2                    ->  -grad_r r^3 (x - mean) / m)

The tangent (forward mode) follows the same three terms, with t = t_x:

    t_mean = mean(t),   t_var = 2 mean((x - mean) t) = (2 / r) mean(x_hat t),   t_r = -r^2 mean(x_hat t)
    t_x_hat = (t - t_mean) r + (x - mean) t_r = r (t - mean(t) - x_hat mean(x_hat t))   (standardized_tangent)

Reference: Ioffe & Szegedy, "Batch Normalization" (ICML 2015), section 3; Ba, Kiros &
Hinton, "Layer Normalization" (2016); CS231n "batchnorm_backward_alt".
"""

from __future__ import annotations

import torch


def standardized_grad(grad_xhat: torch.Tensor, xhat: torch.Tensor, scale: torch.Tensor, mean_g: torch.Tensor,
                      mean_g_xhat: torch.Tensor, overwrite: bool) -> torch.Tensor:
    """grad_x of x_hat = (x - mean) * r, where mean and var = mean((x - mean)^2) come from the
    m elements x is standardised with. With g = dL/dx_hat and means over those m elements:

        (1) through x_hat directly:  g * r
        (2) through the mean:        dL/dmean = -r * sum(g)   (var's share is 0: sum(x - mean) = 0),
                                     dmean/dx = 1/m                 ->  -r * mean(g)
        (3) through the variance:    dL/dvar = -r^3 / 2 * sum(g * (x - mean)),
                                     dvar/dx = 2 (x - mean) / m     ->  -r * x_hat * mean(g * x_hat)

    ``scale`` is r (times the weight, constant over the m elements), ``mean_g`` and ``mean_g_xhat`` come
    precomputed, shaped to broadcast. With ``overwrite`` (may_overwrite(): rule R3) it writes into
    ``xhat``'s memory, a temporary of the caller's, instead of allocating three more tensors of the
    input's size; otherwise the same arithmetic runs out of place, so autograd can differentiate it.
    """
    if not overwrite:
        return (grad_xhat - mean_g - xhat * mean_g_xhat) * scale  # (1) + (2) + (3)
    grad_input = xhat.mul_(-mean_g_xhat)  # (3), before its factor r
    grad_input += grad_xhat  # (1)
    grad_input -= mean_g  # (2)
    return grad_input.mul_(scale)


def standardized_tangent(t_input: torch.Tensor, xhat: torch.Tensor, invstd: torch.Tensor, mean_t: torch.Tensor,
                         mean_xhat_t: torch.Tensor) -> torch.Tensor:
    """t_x_hat = r (t - mean(t) - x_hat mean(x_hat t)): the tangent of x_hat for a tangent t of x (module
    docstring), the means over the m elements precomputed and shaped to broadcast, as ``invstd`` (r)."""
    return (t_input - mean_t - xhat * mean_xhat_t) * invstd
