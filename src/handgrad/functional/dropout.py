"""Inverted dropout: zero each element with probability p while training, and scale the
survivors by 1 / (1 - p) so that the expected output equals the input and evaluation
needs no rescaling. Channel dropout (dropout1d, dropout2d, dropout3d) zeroes whole channels
instead: one draw per (example, channel), broadcast over the channel's positions, since
neighbouring positions of a feature map are strongly correlated and dropping single ones
regularises little.

Reference: Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from
Overfitting" (JMLR 2014); Tompson et al., "Efficient Object Localization Using Convolutional
Networks" (CVPR 2015), section 3.2 (channel dropout); torch.nn.functional.dropout, dropout2d.
"""

from __future__ import annotations

import warnings

import torch

from handgrad.functional.function import Autocast, TwinnedFunction, may_overwrite, twinned


@twinned
class Dropout(TwinnedFunction):
    """y = x * m / (1 - p),   m ~ Bernoulli(1 - p)       x (*), m bool broadcastable to x  ->  y (*)

    m is drawn once per element (dropout: m (*)) or once per channel (channel dropout: m (N, C, 1, ...),
    broadcast over the positions of x (N, C, *)). The mask is an input, drawn by the wrapper, so the
    Function itself is deterministic (under torch.vmap the wrapper's draw follows vmap's ``randomness``
    argument, as torch's dropout does).
    dy/dx = m / (1 - p), a constant per element:
    grad_x = grad_y * m / (1 - p)                 (saves the bool mask m, one byte a draw)
    t_y    = t_x * m / (1 - p)                    (jvp)
    Double backward: grad_x is linear in grad_y and has no graph to x, as torch's (its
    native_dropout_backward reads only the mask).
    """

    autocast = Autocast.INPUT_DTYPE  # as torch's: runs in its input's dtype

    @staticmethod
    def forward(input, mask, scale):
        kept = input * as_bytes(mask)
        return kept.mul_(scale) if may_overwrite() else kept * scale

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, mask, ctx.scale = inputs
        ctx.save_for_backward(mask)
        ctx.save_for_forward(mask)

    @staticmethod
    def backward(ctx, grad_output):
        (mask,) = ctx.saved_tensors
        kept = grad_output * as_bytes(mask)
        return kept.mul_(ctx.scale) if may_overwrite(grad_output) else kept * ctx.scale, None, None

    @staticmethod
    def jvp(ctx, t_input, _t_mask, _t_scale):
        (mask,) = ctx.saved_tensors
        return t_input * as_bytes(mask) * ctx.scale


def as_bytes(mask: torch.Tensor) -> torch.Tensor:
    """The bool mask's memory read as uint8 0 / 1: multiplying by it is 2x faster on CPU than by the bool
    tensor itself (whose conversion to the float's dtype is a slow kernel)."""
    return mask.view(torch.uint8)


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.dropout (``inplace`` is ignored: the result is a new tensor).

    Like torch, p = 0 or training=False returns ``input`` itself, and the mask is drawn from the
    global generator with ``bernoulli_(1 - p)``, so a given seed drops the same elements as torch.
    """
    _check_probability(p)
    if not training or p == 0 or input.numel() == 0:
        return input
    if p == 1:  # every element dropped; 1 / (1 - p) would be inf
        return Dropout.call(input, torch.zeros_like(input, dtype=torch.bool), 0.0)
    mask = torch.empty_like(input, dtype=torch.bool).bernoulli_(1 - p)  # True = kept
    return Dropout.call(input, mask, 1 / (1 - p))


def _check_probability(p: float) -> None:
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


# --------------------------------------------------------------------------- channel dropout


def channel_dropout(input: torch.Tensor, p: float, training: bool, name: str) -> torch.Tensor:
    """Dropout of whole channels of an (N, C, *) input: torch's feature dropout, which its dropout1d,
    dropout2d and dropout3d call. As there, p = 0, training=False or an empty input return ``input``
    itself, p = 1 draws nothing, and otherwise the mask is drawn with ``bernoulli_(1 - p)`` on the global
    generator over (N, C, 1, ...), the shape torch draws its noise in: a seed drops the same channels.
    Only a draw needs the (N, C) dims: p = 1 zeroes any input, as torch's does."""
    if not training or p == 0 or input.numel() == 0:
        return input
    if p == 1:  # every channel dropped (one False broadcast over all); 1 / (1 - p) would be inf
        return Dropout.call(input, input.new_zeros((), dtype=torch.bool), 0.0)
    if input.dim() < 2:
        raise ValueError(f"{name}: channel dropout needs an input of shape (N, C, *), got {tuple(input.shape)}; "
                         "use dropout to drop single elements")
    mask_shape = (input.shape[0], input.shape[1]) + (1,) * (input.dim() - 2)  # one draw per (example, channel)
    mask = input.new_empty(mask_shape, dtype=torch.bool).bernoulli_(1 - p)  # True = kept; new_empty, as torch:
    return Dropout.call(input, mask, 1 / (1 - p))  # under vmap it is batched, so randomness="different" works


def dropout1d(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.dropout1d: whole channels of an (N, C, L) input, or of an
    unbatched (C, L) one (``inplace`` is ignored: the result is a new tensor)."""
    _check_probability(p)
    if input.dim() not in (2, 3):
        raise ValueError(f"dropout1d: expected a 3-D input (N, C, L) or a 2-D one (C, L), got shape "
                         f"{tuple(input.shape)}; dropout2d and dropout3d take 2 and 3 spatial dimensions")
    if input.dim() == 2:
        return channel_dropout(input.unsqueeze(0), p, training, "dropout1d").squeeze(0)
    return channel_dropout(input, p, training, "dropout1d")


def dropout2d(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.dropout2d: whole channels of an (N, C, H, W) input
    (``inplace`` is ignored: the result is a new tensor).

    As torch's, a 3-D input is taken as (N, C, L) (channel dropout of 1-D maps, with a warning), not
    as an unbatched (C, H, W) one, and other dimensionalities run with a warning.
    """
    _check_probability(p)
    if input.dim() == 3:
        warnings.warn("dropout2d: a 3-D input is taken as (N, C, L), as torch's dropout2d takes it, and "
                      "whole channels of each example are dropped; for channel dropout of 1-D maps call "
                      "dropout1d, and for an unbatched (C, H, W) image pass image.unsqueeze(0)", stacklevel=2)
    elif input.dim() != 4:
        warnings.warn(f"dropout2d: expected a 4-D input (N, C, H, W), got shape {tuple(input.shape)}; its dims 0 "
                      "and 1 are taken as (N, C), as torch's (deprecated) dropout2d does; use dropout to drop "
                      "single elements", stacklevel=2)
    return channel_dropout(input, p, training, "dropout2d")


def dropout3d(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.dropout3d: whole channels of an (N, C, D, H, W) input, or of
    an unbatched (C, D, H, W) one (``inplace`` is ignored: the result is a new tensor).

    As torch's, any input that is not 5-D is taken as unbatched (a batch of one is added and removed),
    and one that is not 4-D either runs with a warning.
    """
    _check_probability(p)
    if input.dim() not in (4, 5):
        warnings.warn(f"dropout3d: expected a 5-D input (N, C, D, H, W) or a 4-D one (C, D, H, W), got shape "
                      f"{tuple(input.shape)}; its dim 0 is taken as the channels of one example, as torch's "
                      "(deprecated) dropout3d does; use dropout to drop single elements", stacklevel=2)
    if input.dim() != 5:
        return channel_dropout(input.unsqueeze(0), p, training, "dropout3d").squeeze(0)
    return channel_dropout(input, p, training, "dropout3d")
