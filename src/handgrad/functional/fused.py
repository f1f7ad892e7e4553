"""Fused ops: several layers in one Function, because the derivation lets them share work.

A chain of small Functions pays a fixed price per node (a Python call into forward and
backward, graph bookkeeping) that dwarfs the arithmetic of a small network: for Nielsen's
784-30-10 net at batch 10, one step is ~10 us of arithmetic, and written as five separate
Functions it runs at half the speed of autograd. Knowing the math, we can do better than
one node per op:

- ``linear_activation``: y = f(x W^T + b) as one node. The pre-activation z is never
  stored: every f here has a derivative that is a function of its output y.
- ``mlp``: the whole stack of layers as one node, whose backward is literally Nielsen's
  backpropagation (BP1-BP4), sweeping from the output layer to the input. It saves what
  those four equations read: the input x, every layer's output a_l, and the weights.
- ``mlp_loss`` and ``mlp_loss_and_grads`` (functional/mlp_loss.py): the same network and
  its cost as one node, and that node's code called with no autograd at all.

The Functions are verified like every other op (handgrad.verify.FUSED_CASES) against the
composition of plain torch ops they replace (and beyond the table in
tests/test_functional_fused.py); scripts/benchmark.py measures what each buys.

Reference: Nielsen, "Neural Networks and Deep Learning", ch. 2 (the four equations of
backpropagation) and ch. 3 (cross-entropy); CS231n layers.py ("sandwich" layers such as
affine_relu_forward).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from handgrad.functional.activations import clamped_sigmoid_
from handgrad.functional.function import Autocast, TwinnedFunction, twinned

# --------------------------------------------------------------------------- activations, from their outputs

# Every activation here has a derivative that is a function of its output a = f(z), so a
# fused layer saves a (which the next layer needs as its input anyway) and never z.
ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "softmax", None)  # None: identity


def activate_(z: torch.Tensor, activation: str | None, negative_slope: float) -> torch.Tensor:
    """a = f(z), in place in z where possible (z is the fused op's own temporary, never a user's tensor)."""
    if activation == "sigmoid":
        return clamped_sigmoid_(z)  # torch's kernel on z >= -86 (float32): e^-z never overflows
    if activation == "tanh":
        return z.tanh_()
    if activation == "relu":
        return z.clamp_min_(0)
    if activation == "leaky_relu":
        return torch.where(z > 0, z, z * negative_slope)
    if activation == "softmax":  # over the features of each row, the max subtracted first
        e = torch.exp(z - z.amax(-1, keepdim=True))
        return e / e.sum(-1, keepdim=True)
    return z


def activation_backward(grad_a: torch.Tensor, a: torch.Tensor, activation: str | None,
                        negative_slope: float) -> torch.Tensor:
    """grad_z = grad_a * f'(z), with f'(z) written in terms of the output a = f(z).

    sigmoid:     f'(z) = a (1 - a)
    tanh:        f'(z) = 1 - a^2
    relu:        f'(z) = [z > 0] = sign(a)        (a = max(z, 0) >= 0: sign(a) is 1 where z > 0, else 0)
    leaky_relu:  f'(z) = 1 where a > 0, else s   (s >= 0, so again a > 0 exactly where z > 0)
    softmax:     grad_z = a * (grad_a - sum_j grad_a_j a_j)   (its Jacobian is not diagonal)
    identity:    f'(z) = 1
    """
    if activation == "sigmoid":
        grad_a_times_a = grad_a * a
        return torch.addcmul(grad_a_times_a, grad_a_times_a, a, value=-1)  # g a - g a a = g a (1 - a)
    if activation == "tanh":
        return torch.addcmul(grad_a, grad_a * a, a, value=-1)  # g - g a a = g (1 - a^2)
    if activation == "relu":
        return grad_a * a.sign()  # two fast kernels; a > 0 makes a bool mask, 5-10x slower on CPU
    if activation == "leaky_relu":
        return torch.where(a > 0, grad_a, grad_a * negative_slope)
    if activation == "softmax":
        return a * (grad_a - (grad_a * a).sum(-1, keepdim=True))
    return grad_a


def as_matmul_operand(t: torch.Tensor) -> torch.Tensor:
    """t as the forward's matmul read it: under autocast, the bf16/fp16 copy autocast made (what
    autograd saves, half the bytes); else t itself. The backward's matmuls then run in that dtype."""
    device = t.device.type
    if torch.is_autocast_enabled(device) and t.is_floating_point() and t.dtype != torch.float64:
        return t.to(torch.get_autocast_dtype(device))
    return t


def as_cost_operand(t: torch.Tensor) -> torch.Tensor:
    """t as torch's losses read it under autocast (mse_loss and cross_entropy run in float32 there):
    a float32 copy of a bf16/fp16 tensor; else t itself."""
    if t.dtype in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled(t.device.type):
        return t.float()
    return t


def affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """z = x W^T + b for x (N, D_in): b + x W^T in one kernel when there is a bias."""
    return x @ weight.mT if bias is None else torch.addmm(bias, x, weight.mT)


# --------------------------------------------------------------------------- linear + activation


@twinned
class LinearActivation(TwinnedFunction):
    """y = f(z),  z = x @ W^T + b

    Shapes:  x (N, D_in), W (D_out, D_in), b (D_out,)  ->  z, y (N, D_out)
    f is one of ACTIVATIONS; f'(z) is read off the output y (see ``activation_backward``).

    grad_z = grad_y * f'(z)          (N, D_out)   (1) through the activation
    grad_x = grad_z @ W              (N, D_in)    (2) through the weighted sum
    grad_W = grad_z^T @ x            (D_out, D_in)
    grad_b = sum_n grad_z            (D_out,)     b was broadcast over the N rows

    Saves y (not z), x only if grad_W is wanted and W only if grad_x is; under autocast, x and
    W as the forward's matmul read them (see ``as_matmul_operand``).
    """

    autocast = Autocast.AS_WRITTEN  # under the caller's autocast: matmuls in bf16 / fp16 (as_matmul_operand)
    once_differentiable = True  # first order only: under autocast it saves copies made inside, not inputs (R1)

    @staticmethod
    def forward(input, weight, bias, activation, negative_slope):
        return activate_(affine(input, weight, bias), activation, negative_slope)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, _, activation, negative_slope = inputs
        needs_x, needs_w, _, _, _ = ctx.needs_input_grad
        ctx.save_for_backward(as_matmul_operand(input) if needs_w else None,
                              as_matmul_operand(weight) if needs_x else None,
                              output if activation is not None else None)  # f' = 1 needs no y
        ctx.activation, ctx.negative_slope = activation, negative_slope

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, y = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        grad_z = activation_backward(grad_output, y, ctx.activation, ctx.negative_slope)  # (1)

        if ctx.needs_input_grad[0]:
            grad_input = grad_z @ weight  # (2)  (N, D_in)
        if ctx.needs_input_grad[1]:
            grad_weight = grad_z.mT @ input  # (D_out, D_in)
        if ctx.needs_input_grad[2]:  # False for a None bias
            grad_bias = grad_z.sum(0)  # (D_out,)
        return grad_input, grad_weight, grad_bias, None, None


def linear_activation(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      activation: str | None = "relu", negative_slope: float = 0.01) -> torch.Tensor:
    """f(linear(input, weight, bias)) as one hand-written Function, for input (*, D_in).

    ``activation`` is "sigmoid", "tanh", "relu", "leaky_relu" (with ``negative_slope``),
    "softmax" (over the last dimension) or None for the identity.
    """
    _check_activation("linear_activation", activation, negative_slope)
    check_layers("linear_activation", input, [weight], [bias])
    if input.dim() == 2:  # (N, D_in): the common case, without two reshapes
        return LinearActivation.call(input, weight, bias, activation, negative_slope)
    output = LinearActivation.call(input.reshape(-1, input.shape[-1]), weight, bias, activation, negative_slope)
    return output.reshape(*input.shape[:-1], output.shape[-1])


# --------------------------------------------------------------------------- the whole MLP


@dataclass(frozen=True)
class Activations:
    """The f_l of an MLP's layers: ``hidden`` for l < L, ``output`` for l = L (None: the identity)."""

    hidden: str | None
    output: str | None
    negative_slope: float = 0.01  # of "leaky_relu"

    def of_layer(self, l: int, num_layers: int) -> str | None:
        return self.output if l == num_layers else self.hidden


@twinned
class MLP(TwinnedFunction):
    """A stack of L fully connected layers as one node; backward is Nielsen's backpropagation.

    Forward, a_0 = x:
        z_l = a_{l-1} @ W_l^T + b_l,   a_l = f_l(z_l)      l = 1 .. L,   y = a_L
    Shapes:  x (N, D_0), W_l (D_l, D_{l-1}), b_l (D_l,)  ->  a_l (N, D_l),  y (N, D_L)
    f_l = ``activations.hidden`` for l < L and ``activations.output`` for l = L; f_l'(z_l) is
    read off a_l (see ``activation_backward``), so z_l is never stored.

    Backward, with delta_l = dLoss/dz_l (N, D_l), from the output layer down (l = L .. 1):
        delta_L  = grad_y * f_L'(z_L)                         (BP1)
        delta_l  = (delta_{l+1} @ W_{l+1}) * f_l'(z_l)        (BP2)  l < L
        grad_b_l = sum_n delta_l                  (D_l,)      (BP3)  b_l was broadcast over N rows
        grad_W_l = delta_l^T @ a_{l-1}            (D_l, D_{l-1})  (BP4)
        grad_x   = delta_1 @ W_1                  (N, D_0)

    Saves what BP1-BP4 read: x (for grad_W_1), a_1 .. a_L (a_L only if f_L is not the identity),
    W_2 .. W_L, and W_1 only if grad_x is wanted; under autocast, x and the W_l as the
    forward's matmuls read them (see ``as_matmul_operand``). The hidden a_l are returned as
    extra, non-differentiable outputs so setup_context can save them; ``mlp`` returns y alone.

    Arguments after ``activations`` are the parameters, flattened: W_1, b_1, W_2, b_2, ...
    (a bias may be None).
    """

    autocast = Autocast.AS_WRITTEN  # under the caller's autocast: matmuls in bf16 / fp16 (as_matmul_operand)
    once_differentiable = True  # first order only: its backward reads the hidden a_l saved non-differentiable (R1)

    @staticmethod
    def forward(input, activations, *params):
        *hidden, y = forward_layers(input, params, activations)
        return y, *hidden  # y first: the one differentiable output

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, activations, *params = inputs
        y, *hidden = output
        ctx.mark_non_differentiable(*hidden)
        ctx.set_materialize_grads(False)  # the hidden a_l get no gradient: no zero tensors for them
        ctx.activations, ctx.num_layers = activations, len(params) // 2
        needs_x, _, *needs_params = ctx.needs_input_grad
        save_layers(ctx, input, params, hidden, y if activations.output is not None else None,  # f_L' = 1: no y
                    needs_x, needs_params)

    @staticmethod
    def backward(ctx, grad_output, *_grad_hidden):  # the hidden a_l are non-differentiable: no gradients
        if grad_output is None:  # y did not reach the loss
            return None, None, *[None] * (2 * ctx.num_layers)
        a, weights, _ = saved_layers(ctx)
        needs_x, _, *needs_params = ctx.needs_input_grad
        grad_x, *grad_params = backpropagate(grad_output, a, weights, ctx.activations, needs_x, needs_params)
        return grad_x, None, *grad_params


def mlp(input: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None],
        activation: str | None = "relu", output_activation: str | None = None,
        negative_slope: float = 0.01) -> torch.Tensor:
    """The multilayer perceptron f_L(... f_1(x W_1^T + b_1) ... W_L^T + b_L) as one hand-written Function.

    Equal to applying ``linear_activation`` layer by layer, with ``activation`` between the
    layers and ``output_activation`` after the last (None: logits, as cross-entropy wants).
    input (*, D_0), weights[l] (D_{l+1}, D_l), biases[l] (D_{l+1},) or None -> (*, D_L).
    """
    activations = checked_activations("mlp", activation, output_activation, negative_slope)
    check_layers("mlp", input, weights, biases)
    params = [p for weight, bias in zip(weights, biases, strict=True) for p in (weight, bias)]
    if input.dim() == 2:  # (N, D_0): the common case, without two reshapes
        return MLP.call(input, activations, *params)[0]
    output, *_hidden = MLP.call(input.reshape(-1, input.shape[-1]), activations, *params)
    return output.reshape(*input.shape[:-1], output.shape[-1])


# The three steps MLP and MLPLoss share: the forward sweep, what it stores, the backward sweep.


def forward_layers(input: torch.Tensor, params: Sequence[Any],
                   activations: Activations) -> list[torch.Tensor]:
    """[a_1, ..., a_L] for a_0 = x and a_l = f_l(a_{l-1} W_l^T + b_l); params = (W_1, b_1, W_2, b_2, ...)."""
    num_layers = len(params) // 2
    outputs = []
    a = input
    for l, (weight, bias) in enumerate(zip(params[0::2], params[1::2], strict=True), start=1):
        a = activate_(affine(a, weight, bias), activations.of_layer(l, num_layers), activations.negative_slope)
        outputs.append(a)  # a_l (N, D_l)
    return outputs


def save_layers(ctx, input, params, hidden, y, needs_x: bool, needs_params: Sequence[bool], *extra) -> None:
    """Save x, W_1 .. W_L, a_1 .. a_L and ``extra``: what ``backpropagate`` reads (None where nothing does)."""
    first_weight, *weights = params[0::2]
    ctx.save_for_backward(as_matmul_operand(input) if needs_params[0] else None,  # x, for grad_W_1 only
                          as_matmul_operand(first_weight) if needs_x else None,  # W_1, for grad_x only
                          *[as_matmul_operand(weight) for weight in weights],  # W_2 .. W_L
                          *hidden, y,  # a_1 .. a_{L-1}, a_L
                          *extra)


def saved_layers(ctx) -> tuple[list, list, list]:
    """What ``save_layers`` stored: ([x, a_1, .., a_L], [W_1, .., W_L], extra)."""
    L = ctx.num_layers
    x, *saved = ctx.saved_tensors
    return [x, *saved[L:2 * L]], saved[:L], saved[2 * L:]


def backpropagate(grad_y: torch.Tensor, a: Sequence[Any], weights: Sequence[Any],
                  activations: Activations, needs_x: bool, needs_params: Sequence[bool]) -> tuple:
    """Nielsen's BP1-BP4 from grad_y = dLoss/dy down to the input (see MLP).

    a = [x, a_1, .., a_L], weights = [W_1, .., W_L]; needs_params flags W_1, b_1, W_2, ...
    Returns (grad_x, grad_W_1, grad_b_1, .., grad_W_L, grad_b_L), None where not needed.
    """
    L = len(weights)
    grad_weights: list[torch.Tensor | None] = [None] * L  # index l - 1 holds layer l's
    grad_biases: list[torch.Tensor | None] = [None] * L

    grad_a = grad_y  # dLoss/da_L (N, D_L)
    for l in range(L, 0, -1):  # l = L .. 1
        f = activations.of_layer(l, L)
        delta = activation_backward(grad_a, a[l], f, activations.negative_slope)  # BP1 (l = L), BP2: (N, D_l)
        if needs_params[2 * l - 2]:
            grad_weights[l - 1] = delta.mT @ a[l - 1]  # BP4 (D_l, D_{l-1})
        if needs_params[2 * l - 1]:
            grad_biases[l - 1] = delta.sum(0)  # BP3 (D_l,)
        if l > 1 or needs_x:
            grad_a = delta @ weights[l - 1]  # dLoss/da_{l-1} = delta_l @ W_l (N, D_{l-1})

    grad_x = grad_a if needs_x else None  # delta_1 @ W_1
    return grad_x, *[g for pair in zip(grad_weights, grad_biases, strict=True) for g in pair]


# --------------------------------------------------------------------------- argument checks


def checked_activations(name: str, activation: str | None, output_activation: str | None,
                 negative_slope: float) -> Activations:
    _check_activation(name, activation, negative_slope)
    _check_activation(name, output_activation, negative_slope)
    return Activations(activation, output_activation, negative_slope)


def _check_activation(name: str, activation: str | None, negative_slope: float) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{name}: unknown activation {activation!r}; choose one of "
                         f"{', '.join(map(repr, ACTIVATIONS))} (None is the identity)")
    if activation == "leaky_relu" and negative_slope < 0:
        raise ValueError(f"{name}: negative_slope={negative_slope} is negative; the fused backward reads "
                         "f'(z) off the output's sign, which needs negative_slope >= 0 (use "
                         "handgrad.functional.leaky_relu for a negative slope)")


def check_layers(name: str, input: torch.Tensor, weights: Sequence[torch.Tensor],
                  biases: Sequence[torch.Tensor | None]) -> None:
    """Raise unless each weight (D_l, D_{l-1}) takes the width below it (the input's last
    dimension for the first) and each bias is None or (D_l,). Messages are built only on error."""
    single = name == "linear_activation"  # its arguments are "weight" and "bias", not lists
    weight_name = (lambda i: "weight") if single else (lambda i: f"weights[{i}]")
    bias_name = (lambda i: "bias") if single else (lambda i: f"biases[{i}]")
    if len(weights) == 0 or len(weights) != len(biases):
        raise ValueError(f"{name}: need one bias (or None) per weight and at least one layer; "
                         f"got {len(weights)} weights and {len(biases)} biases")
    features = input.shape[-1] if input.dim() else 0
    for i, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        if weight.dim() != 2:
            raise ValueError(f"{name}: {weight_name(i)} must be 2-D (out_features, in_features), got shape "
                             f"{tuple(weight.shape)}")
        if weight.shape[1] != features:
            source = (f"the input of shape {tuple(input.shape)}" if i == 0
                      else f"{weight_name(i - 1)} of shape {tuple(weights[i - 1].shape)}")
            raise ValueError(f"{name}: {weight_name(i)} of shape {tuple(weight.shape)} expects {weight.shape[1]} "
                             f"input features, but {source} gives {features}")
        if bias is not None and bias.shape != (weight.shape[0],):
            raise ValueError(f"{name}: {bias_name(i)} of shape {tuple(bias.shape)} does not match "
                             f"{weight_name(i)} of shape {tuple(weight.shape)}; expected ({weight.shape[0]},)")
        features = weight.shape[0]
