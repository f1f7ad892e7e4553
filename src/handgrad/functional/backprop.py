"""The sweeps of a fused stack of layers: forward, tangents forward, gradients backward.

MLP, MLPLoss (functional/fused.py, functional/mlp_loss.py) and the engine-free
``mlp_loss_and_grads`` share these functions, so a fused node and the training step run the
same code. With a_0 = x and, for l = 1 .. L,

    z_l = a_{l-1} @ W_l^T + b_l,   a_l = f_l(z_l)       x (N, D_0), W_l (D_l, D_{l-1}), b_l (D_l,)

- ``forward_layers``: [a_1, .., a_L]. z_l is never kept: every f here has a derivative that is a
  function of its output a_l, which the next layer needs as its input anyway.
- ``forward_tangents``: the jvp, a second forward sweep beside the first,
      t_z_l = t_a_{l-1} @ W_l^T + a_{l-1} @ t_W_l^T + t_b_l,   t_a_l = f_l'(z_l) t_z_l
- ``backpropagate``: Nielsen's BP1-BP4, from the output layer down (see MLP for the equations),
  adding at each layer any gradient the layer's output a_l received directly.

Reference: Nielsen, "Neural Networks and Deep Learning", ch. 2 (the four equations of
backpropagation); CS231n layers.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from handgrad.functional.activations import SIGMOID_CLAMP, clamped_sigmoid_, passes
from handgrad.functional.function import forward_ad, transforms_active, zero_link

ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "softmax", None)  # None: identity


@dataclass(frozen=True)
class Activations:
    """The f_l of an MLP's layers: ``hidden`` for l < L, ``output`` for l = L (None: the identity)."""

    hidden: str | None
    output: str | None
    negative_slope: float = 0.01  # of "leaky_relu"

    def of_layer(self, l: int, num_layers: int) -> str | None:
        return self.output if l == num_layers else self.hidden


# --------------------------------------------------------------------------- activations, from their outputs


def activate_(z: torch.Tensor, activation: str | None, negative_slope: float, inplace: bool = True) -> torch.Tensor:
    """a = f(z); in place in z (the fused op's own temporary, never a user's tensor) when ``inplace``.

    A Function's forward passes ``may_overwrite()``: False under a torch.func transform (rule R3), where
    the out-of-place forms run.
    """
    if activation == "sigmoid":  # torch's kernel on z >= -C (see clamped_sigmoid_): e^-z never overflows
        return clamped_sigmoid_(z) if inplace else torch.sigmoid(z.clamp(min=-SIGMOID_CLAMP[z.dtype == torch.float64]))
    if activation == "tanh":
        return z.tanh_() if inplace else torch.tanh(z)
    if activation == "relu":
        return z.clamp_min_(0) if inplace else z.clamp_min(0)
    if activation == "leaky_relu":
        return torch.where(z > 0, z, z * negative_slope)
    if activation == "softmax":  # over the features of each row, the max subtracted first
        e = torch.exp(z - z.amax(-1, keepdim=True))
        return e / e.sum(-1, keepdim=True)
    return z


def activation_backward(grad_a: torch.Tensor, a: torch.Tensor, activation: str | None, negative_slope: float,
                        inplace: bool = False, from_cost: bool = False) -> torch.Tensor:
    """grad_z = f'(z)^T grad_a, with f'(z) written in terms of the output a = f(z).

    sigmoid:     f'(z) = a (1 - a)
    tanh:        f'(z) = 1 - a^2
    relu:        f'(z) = [z > 0] = passes(a)        (a = max(z, 0): a > 0 exactly where z > 0; 1 at NaN, as torch)
    leaky_relu:  f'(z) = 1 where a > 0, else s     (s >= 0, so again a > 0 exactly where z > 0)
    softmax:     grad_z = a * (grad_a - sum_j grad_a_j a_j)   (its Jacobian diag(a) - a a^T is not diagonal)
    identity:    f'(z) = 1
    Every Jacobian here is symmetric, so the same formula is the jvp: t_a = f'(z) t_z.

    ``inplace`` (a backward where ``may_overwrite(grad_a)``): the result is made in one temporary,
    one tensor allocated where the out-of-place forms take two (sigmoid) or three (relu).
    ``from_cost``: grad_a descends from a cost's gradient alone (MLPLoss, mlp_loss_and_grads), so it is
    NaN wherever a is: a NaN unit makes every output of its row NaN (NaN * w = NaN in the next matmul),
    hence that row's cost gradient and every delta of the row. relu's f' then needs no case for NaN:
    sign(a) (0 there) gives NaN * 0 = NaN, torch's gradient, with one kernel fewer.
    Double backward: each formula is differentiable through a; relu's passes(a) and leaky_relu's
    zero_link keep a graph to a of zero derivative, as torch's threshold_backward and
    leaky_relu_backward have (rule R4).
    """
    if activation == "sigmoid":
        grad_a_times_a = grad_a * a  # g a - g a a = g a (1 - a):
        if inplace:
            return grad_a_times_a.addcmul_(grad_a_times_a, a, value=-1)
        return torch.addcmul(grad_a_times_a, grad_a_times_a, a, value=-1)
    if activation == "tanh":
        return torch.addcmul(grad_a, grad_a * a, a, value=-1)  # g - g a a = g (1 - a^2)
    if activation == "relu":
        if not inplace or grad_a.dtype != a.dtype:  # (a wider grad_a: the product takes its dtype)
            return grad_a * passes(a)
        return (a.sign() if from_cost else a.nan_to_num(nan=1.0).sign_()).mul_(grad_a)
    if activation == "leaky_relu":
        return zero_link(torch.where(a > 0, grad_a, grad_a * negative_slope), a)
    if activation == "softmax":
        return a * (grad_a - (grad_a * a).sum(-1, keepdim=True))
    return grad_a


# --------------------------------------------------------------------------- the affine map


def affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """z = x W^T + b for x (N, D_in): b + x W^T in one kernel when there is a bias."""
    return x @ weight.mT if bias is None else torch.addmm(bias, x, weight.mT)


def affine_tangent(x: torch.Tensor, weight: torch.Tensor, t_x: torch.Tensor | None, t_weight: torch.Tensor | None,
                   t_bias: torch.Tensor | None) -> torch.Tensor:
    """t_z = t_x W^T + x t_W^T + t_b (N, D_out); a missing tangent (None) contributes nothing."""
    terms = [t for t in (None if t_x is None else t_x @ weight.mT, None if t_weight is None else x @ t_weight.mT)
             if t is not None]
    if not terms:  # only b has a tangent, or nothing does
        return x.new_zeros(x.shape[0], weight.shape[0]) if t_bias is None else t_bias.expand(x.shape[0], -1).clone()
    t_z = terms[0] if len(terms) == 1 else terms[0] + terms[1]
    return t_z if t_bias is None else t_z + t_bias


def matmul_operands(input: torch.Tensor, params: Sequence[Any]) -> tuple[torch.Tensor, list]:
    """(x, params) with x and every W_l cast to the autocast dtype where autocast is on for x's device,
    as autocast would cast them for the forward's matmuls; else unchanged.

    The fused wrappers cast in front of the Function, as ``.to`` ops autograd records, so the
    tensors the Function saves for its backward's matmuls (half the bytes of float32) are its
    inputs, differentiable again (rule R1), and the gradients come back in the leaves' dtypes.
    float64 is never cast; the biases are left to the forward's addmm, as autocast does.
    """
    device = input.device.type
    if not torch.is_autocast_enabled(device):
        return input, list(params)
    dtype = torch.get_autocast_dtype(device)

    def cast(t):
        return t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
    return cast(input), [cast(p) if i % 2 == 0 else p for i, p in enumerate(params)]


def jvp_possible() -> bool:
    """Whether this call runs the transform-ready twin (see functional.function.twinned), whose jvp reads
    every saved tensor: a torch.func transform is active or a forward-AD level is open."""
    return transforms_active() or forward_ad._current_level >= 0


# --------------------------------------------------------------------------- the three sweeps


def forward_layers(input: torch.Tensor, params: Sequence[Any], activations: Activations,
                   inplace: bool = True) -> list[torch.Tensor]:
    """[a_1, ..., a_L] for a_0 = x and a_l = f_l(a_{l-1} W_l^T + b_l); params = (W_1, b_1, W_2, b_2, ...)."""
    num_layers = len(params) // 2
    outputs = []
    a = input
    for l, (weight, bias) in enumerate(zip(params[0::2], params[1::2], strict=True), start=1):
        a = activate_(affine(a, weight, bias), activations.of_layer(l, num_layers), activations.negative_slope,
                      inplace)
        outputs.append(a)  # a_l (N, D_l)
    return outputs


def forward_tangents(t_input: torch.Tensor | None, t_params: Sequence[Any], a: Sequence[Any],
                     weights: Sequence[Any], activations: Activations) -> list[torch.Tensor]:
    """[t_a_1, .., t_a_L]: the jvp of every layer's output (module docstring), a = [x, a_1, .., a_L]
    (a_L may be None for an identity output), weights = [W_1, .., W_L], t_params = (t_W_1, t_b_1, ..)."""
    L = len(weights)
    tangents = []
    t_a = t_input
    for l in range(1, L + 1):
        t_z = affine_tangent(a[l - 1], weights[l - 1], t_a, t_params[2 * l - 2], t_params[2 * l - 1])  # (N, D_l)
        t_a = activation_backward(t_z, a[l], activations.of_layer(l, L), activations.negative_slope)
        tangents.append(t_a)
    return tangents


def save_layers(ctx: Any, input: torch.Tensor, params: Sequence[torch.Tensor | None], hidden: Sequence[torch.Tensor],
                y: torch.Tensor | None, needs_x: bool, needs_params: Sequence[bool],
                *extra: torch.Tensor | None) -> None:
    """Save x, W_1 .. W_L, a_1 .. a_L and ``extra``: what ``backpropagate`` reads (None where nothing does),
    and, where a jvp may run, every one of them for ``forward_tangents`` too (rule R5)."""
    first_weight, *weights = params[0::2]
    every = jvp_possible()
    saved = (input if needs_params[0] or every else None,  # x, for grad_W_1 (and the jvp's x t_W_1^T)
             first_weight if needs_x or every else None,  # W_1, for grad_x (and the jvp's t_x W_1^T)
             *weights, *hidden, y, *extra)  # W_2 .. W_L, a_1 .. a_{L-1}, a_L
    ctx.save_for_backward(*saved)
    if every:
        ctx.save_for_forward(*saved)


def saved_layers(ctx: Any) -> tuple[list, list, list]:
    """What ``save_layers`` stored: ([x, a_1, .., a_L], [W_1, .., W_L], extra)."""
    L = ctx.num_layers
    x, *saved = ctx.saved_tensors
    return [x, *saved[L:2 * L]], saved[:L], saved[2 * L:]


def backpropagate(grad_y: torch.Tensor | None, a: Sequence[Any], weights: Sequence[Any], activations: Activations,
                  needs_x: bool, needs_params: Sequence[bool], grad_hidden: Sequence[Any] | None = None,
                  inplace: bool = False, from_cost: bool = False) -> tuple:
    """Nielsen's BP1-BP4 from grad_y = dLoss/dy down to the input (see MLP).

    a = [x, a_1, .., a_L], weights = [W_1, .., W_L]; needs_params flags W_1, b_1, W_2, ...
    grad_hidden: the gradients the hidden outputs a_1 .. a_{L-1} received directly (None: none), added
    into dLoss/da_l before BP2 at layer l; grad_y may be None when only those reach the loss.
    ``inplace``, ``from_cost``: see ``activation_backward`` (False unless the caller knows).
    Returns (grad_x, grad_W_1, grad_b_1, .., grad_W_L, grad_b_L), None where not needed.
    """
    L = len(weights)
    grad_weights: list[torch.Tensor | None] = [None] * L  # index l - 1 holds layer l's
    grad_biases: list[torch.Tensor | None] = [None] * L

    grad_a = grad_y  # dLoss/da_L (N, D_L)
    for l in range(L, 0, -1):  # l = L .. 1
        if grad_hidden is not None and l < L:
            grad_a = plus(grad_a, grad_hidden[l - 1])  # a_l's own gradient, if any
        if grad_a is None:  # nothing from above reaches layer l
            continue
        f = activations.of_layer(l, L)
        delta = activation_backward(grad_a, a[l], f, activations.negative_slope, inplace,
                                    from_cost)  # BP1 (l = L), BP2: (N, D_l)
        if needs_params[2 * l - 2]:
            grad_weights[l - 1] = delta.mT @ a[l - 1]  # BP4 (D_l, D_{l-1})
        if needs_params[2 * l - 1]:
            grad_biases[l - 1] = delta.sum(0)  # BP3 (D_l,)
        if l > 1 or needs_x:
            grad_a = delta @ weights[l - 1]  # dLoss/da_{l-1} = delta_l @ W_l (N, D_{l-1})

    grad_x = grad_a if needs_x else None  # delta_1 @ W_1
    return grad_x, *[g for pair in zip(grad_weights, grad_biases, strict=True) for g in pair]


def plus(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """a + b, where None stands for a gradient that is zero (an output that did not reach the loss)."""
    return b if a is None else a if b is None else a + b
