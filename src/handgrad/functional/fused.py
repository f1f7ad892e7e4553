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
- ``mlp_loss``: the same network and its cost (mse or cross-entropy) as one node: the
  cost's gradient enters BP1 directly, e.g. delta_L = (softmax(z_L) - onehot(t)) / N.
- ``mlp_loss_and_grads``: the same forward and backward code called directly, with no
  autograd at all (no graph, no engine, no .grad accumulation): Nielsen's training loop.

The Functions are verified like every other op (handgrad.verify.FUSED_CASES) against the
composition of plain torch ops they replace, and ``mlp_loss_and_grads`` against autograd's
gradients (tests/test_functional_fused.py); scripts/benchmark.py measures what each buys.

Reference: Nielsen, "Neural Networks and Deep Learning", ch. 2 (the four equations of
backpropagation) and ch. 3 (cross-entropy); CS231n layers.py ("sandwich" layers such as
affine_relu_forward).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.autograd import Function

from handgrad.functional.function import Autocast, combined_forward

# --------------------------------------------------------------------------- activations, from their outputs

# Every activation here has a derivative that is a function of its output a = f(z), so a
# fused layer saves a (which the next layer needs as its input anyway) and never z.
ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "softmax", None)  # None: identity


def activate_(z: torch.Tensor, activation: str | None, negative_slope: float) -> torch.Tensor:
    """a = f(z), in place in z where possible (z is the fused op's own temporary, never a user's tensor)."""
    if activation == "sigmoid":
        return z.sigmoid_()  # torch's sigmoid kernel is the stable one: never exponentiates a positive number
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


@combined_forward
class LinearActivation(Function):
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
    _check_layers("linear_activation", input, [weight], [bias])
    if input.dim() == 2:  # (N, D_in): the common case, without two reshapes
        return LinearActivation.apply(input, weight, bias, activation, negative_slope)
    output = LinearActivation.apply(input.reshape(-1, input.shape[-1]), weight, bias, activation, negative_slope)
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


@combined_forward
class MLP(Function):
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
    activations = _activations("mlp", activation, output_activation, negative_slope)
    _check_layers("mlp", input, weights, biases)
    params = [p for weight, bias in zip(weights, biases) for p in (weight, bias)]
    if input.dim() == 2:  # (N, D_0): the common case, without two reshapes
        return MLP.apply(input, activations, *params)[0]
    output, *_hidden = MLP.apply(input.reshape(-1, input.shape[-1]), activations, *params)
    return output.reshape(*input.shape[:-1], output.shape[-1])


# The three steps MLP and MLPLoss share: the forward sweep, what it stores, the backward sweep.


def forward_layers(input: torch.Tensor, params: Sequence[torch.Tensor | None],
                   activations: Activations) -> list[torch.Tensor]:
    """[a_1, ..., a_L] for a_0 = x and a_l = f_l(a_{l-1} W_l^T + b_l); params = (W_1, b_1, W_2, b_2, ...)."""
    num_layers = len(params) // 2
    outputs = []
    a = input
    for l, (weight, bias) in enumerate(zip(params[0::2], params[1::2]), start=1):
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


def backpropagate(grad_y: torch.Tensor, a: Sequence[torch.Tensor | None], weights: Sequence[torch.Tensor | None],
                  activations: Activations, needs_x: bool, needs_params: Sequence[bool]) -> tuple:
    """Nielsen's BP1-BP4 from grad_y = dLoss/dy down to the input (see MLP).

    a = [x, a_1, .., a_L], weights = [W_1, .., W_L]; needs_params flags W_1, b_1, W_2, ...
    Returns (grad_x, grad_W_1, grad_b_1, .., grad_W_L, grad_b_L), None where not needed.
    """
    L = len(weights)
    grad_weights, grad_biases = [None] * L, [None] * L  # index l - 1 holds layer l's

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
    return grad_x, *[g for pair in zip(grad_weights, grad_biases) for g in pair]


# --------------------------------------------------------------------------- the whole MLP and its cost

LOSSES = ("mse", "cross_entropy")
REDUCTIONS = ("mean", "sum")


def cost(y: torch.Tensor, target: torch.Tensor, loss: str, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, r): the cost of y against target and its residual r (see MLPLoss); float32 under autocast."""
    y, target = as_cost_operand(y), as_cost_operand(target)
    if loss == "mse":
        residual = y - target  # r (N, D_L)
        per_element = residual * residual
        return per_element.mean() if reduction == "mean" else per_element.sum(), residual
    index = target.unsqueeze(1)  # (N, 1)
    log_p = torch.log_softmax(y, 1)  # (N, C)
    picked = log_p.gather(1, index)  # log p_n[t_n] (N, 1); an index outside 0..C-1 raises here
    value = -(picked.mean() if reduction == "mean" else picked.sum())
    return value, torch.exp(log_p).scatter_add_(1, index, torch.full_like(picked, -1))  # r = p - onehot(t)


def residual_scale(residual: torch.Tensor, loss: str, reduction: str) -> float:
    """c with dL/dy = c r ("mse": c = 2 s) or dL/dz_L = c r ("cross_entropy": c = s); s = 1/n or 1."""
    n = residual.numel() if loss == "mse" else residual.shape[0]
    s = 1 / n if reduction == "mean" else 1
    return 2 * s if loss == "mse" else s


@combined_forward
class MLPLoss(Function):
    """An MLP's cost against a target (see MLP), as one node: the cost's gradient enters BP1.

    Forward, y = MLP(x) (N, D_L), reduced with s = 1/n for "mean" and s = 1 for "sum":
        "mse":            L = s * sum_nk r_nk^2,  r = y - t                  t (N, D_L),  n = N * D_L
        "cross_entropy":  L = -s * sum_n log p_n[t_n],  p = softmax(y)       t (N,) class indices,  n = N
                          (log p by torch.log_softmax, which subtracts each row's max: stable;
                          y holds logits: output_activation must be None)
    Backward, with grad_L the upstream gradient of the scalar L:
        "mse":            grad_y  = 2 s r * grad_L          (N, D_L)   then BP1: delta_L = grad_y * f_L'
                          grad_t  = -grad_y
        "cross_entropy":  delta_L = s r * grad_L,  r = p - onehot(t)   (softmax's Jacobian and the
                          log's 1/p cancel, so nothing divides by a tiny p)
    and BP2-BP4 exactly as in MLP. The residual r is formed in the forward, where its pieces are.

    Returns (L, y, r, a_1 .. a_{L-1}); only L is differentiable, y is returned for metrics.
    Saves MLP's tensors plus r.
    """

    autocast = Autocast.AS_WRITTEN  # under the caller's autocast: matmuls in bf16 / fp16, the cost in float32

    @staticmethod
    def forward(input, target, loss, reduction, activations, *params):
        *hidden, y = forward_layers(input, params, activations)
        value, residual = cost(y, target, loss, reduction)
        return value, y, residual, *hidden

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, loss, reduction, activations, *params = inputs
        _, y, residual, *hidden = output
        ctx.mark_non_differentiable(y, residual, *hidden)
        ctx.set_materialize_grads(False)
        ctx.activations, ctx.num_layers, ctx.output_dtype = activations, len(params) // 2, y.dtype
        ctx.c = residual_scale(residual, loss, reduction)
        needs_x, _, _, _, _, *needs_params = ctx.needs_input_grad
        save_layers(ctx, input, params, hidden, y if activations.output is not None else None,  # f_L' = 1: no y
                    needs_x, needs_params, residual)

    @staticmethod
    def backward(ctx, grad_loss, *_grad_others):  # y, r and the hidden a_l are non-differentiable
        if grad_loss is None:  # the loss did not reach the final result
            return None, None, None, None, None, *[None] * (2 * ctx.num_layers)
        a, weights, (residual,) = saved_layers(ctx)
        needs_x, needs_target, _, _, _, *needs_params = ctx.needs_input_grad
        grad_y = residual * (grad_loss * ctx.c)  # "mse": dL/dy = 2 s r grad_L; "cross_entropy": delta_L = s r grad_L
        grad_target = -grad_y if needs_target else None  # only "mse" has a differentiable target
        if grad_y.dtype != ctx.output_dtype:  # under autocast r is float32 (see cost); the matmuls run in y's
            grad_y = grad_y.to(ctx.output_dtype)
        grad_x, *grad_params = backpropagate(grad_y, a, weights, ctx.activations, needs_x, needs_params)
        return grad_x, grad_target, None, None, None, *grad_params


def mlp_loss(input: torch.Tensor, target: torch.Tensor, weights: Sequence[torch.Tensor],
             biases: Sequence[torch.Tensor | None], activation: str | None = "relu",
             output_activation: str | None = None, loss: str = "cross_entropy", reduction: str = "mean",
             negative_slope: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, output) of an MLP (see ``mlp``) against ``target``, as one hand-written Function.

    loss="cross_entropy": ``output_activation`` must be None (the output is logits (N, C)) and
    ``target`` holds class indices (N,), as for ``cross_entropy``. loss="mse": ``target`` has the
    output's shape (N, D_L), e.g. one-hot, as for ``mse_loss``. ``reduction`` is "mean" or "sum".
    The loss equals ``cross_entropy(mlp(...), target)`` (or ``mse_loss``); the output is returned
    detached, for metrics such as accuracy, without a second forward pass.
    """
    activations, target = _check_mlp_loss_args("mlp_loss", input, target, weights, biases, activation,
                                               output_activation, loss, reduction, negative_slope)
    params = [p for weight, bias in zip(weights, biases) for p in (weight, bias)]
    value, output, *_ = MLPLoss.apply(input, target, loss, reduction, activations, *params)
    return value, output


@torch.no_grad()
def mlp_loss_and_grads(input: torch.Tensor, target: torch.Tensor, weights: Sequence[torch.Tensor],
                       biases: Sequence[torch.Tensor | None], activation: str | None = "relu",
                       output_activation: str | None = None, loss: str = "cross_entropy", reduction: str = "mean",
                       negative_slope: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:
    """(loss, output, [grad_W_1, grad_b_1, .., grad_W_L, grad_b_L]) with no autograd at all: Nielsen's loop.

    The very code of MLPLoss's forward and backward (``forward_layers``, ``cost``,
    ``backpropagate``), called directly under no_grad with grad_L = 1: no graph is recorded,
    the autograd engine never runs and nothing accumulates into .grad. The gradients are those
    ``mlp_loss(...)[0].backward()`` leaves in .grad (None for a None bias); set them as .grad
    and call an optimizer's step, or update the weights directly. Same arguments as ``mlp_loss``.
    """
    activations, target = _check_mlp_loss_args("mlp_loss_and_grads", input, target, weights, biases, activation,
                                               output_activation, loss, reduction, negative_slope)
    params = [p for weight, bias in zip(weights, biases) for p in (weight, bias)]
    *hidden, y = forward_layers(input, params, activations)
    value, residual = cost(y, target, loss, reduction)
    grad_y = residual * residual_scale(residual, loss, reduction)  # dL/dy ("mse") or delta_L ("cross_entropy")
    needs_params = [p is not None for p in params]
    _, *grads = backpropagate(grad_y, [input, *hidden, y], weights, activations, False, needs_params)
    return value, y, grads


# --------------------------------------------------------------------------- argument checks


def _activations(name: str, activation: str | None, output_activation: str | None,
                 negative_slope: float) -> Activations:
    _check_activation(name, activation, negative_slope)
    _check_activation(name, output_activation, negative_slope)
    return Activations(activation, output_activation, negative_slope)


def _check_mlp_loss_args(name, input, target, weights, biases, activation, output_activation, loss, reduction,
                         negative_slope) -> tuple[Activations, torch.Tensor]:
    """The checks of ``mlp_loss``: (its Activations, the target as int64 indices for cross-entropy)."""
    activations = _activations(name, activation, output_activation, negative_slope)
    _check_layers(name, input, weights, biases)
    if input.dim() != 2:
        raise ValueError(f"{name}: expected an input of shape (N, {weights[0].shape[1]}), got {tuple(input.shape)}; "
                         "flatten it first, e.g. input.flatten(1)")
    _check_target(name, input, target, weights[-1].shape[0], loss, reduction, output_activation)
    if loss == "cross_entropy" and target.dtype != torch.long:
        target = target.long()  # gather and scatter index with int64
    return activations, target


def _check_activation(name: str, activation: str | None, negative_slope: float) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{name}: unknown activation {activation!r}; choose one of "
                         f"{', '.join(map(repr, ACTIVATIONS))} (None is the identity)")
    if activation == "leaky_relu" and negative_slope < 0:
        raise ValueError(f"{name}: negative_slope={negative_slope} is negative; the fused backward reads "
                         "f'(z) off the output's sign, which needs negative_slope >= 0 (use "
                         "handgrad.functional.leaky_relu for a negative slope)")


def _check_layers(name: str, input: torch.Tensor, weights: Sequence[torch.Tensor],
                  biases: Sequence[torch.Tensor | None]) -> None:
    """Raise unless each weight (D_l, D_{l-1}) takes the width below it (the input's last
    dimension for the first) and each bias is None or (D_l,). Messages are built only on error."""
    single = name == "linear_activation"  # its arguments are "weight" and "bias", not lists
    weight_name = (lambda l: "weight") if single else (lambda l: f"weights[{l}]")
    bias_name = (lambda l: "bias") if single else (lambda l: f"biases[{l}]")
    if len(weights) == 0 or len(weights) != len(biases):
        raise ValueError(f"{name}: need one bias (or None) per weight and at least one layer; "
                         f"got {len(weights)} weights and {len(biases)} biases")
    features = input.shape[-1] if input.dim() else 0
    for l, (weight, bias) in enumerate(zip(weights, biases)):
        if weight.dim() != 2:
            raise ValueError(f"{name}: {weight_name(l)} must be 2-D (out_features, in_features), got shape "
                             f"{tuple(weight.shape)}")
        if weight.shape[1] != features:
            source = (f"the input of shape {tuple(input.shape)}" if l == 0
                      else f"{weight_name(l - 1)} of shape {tuple(weights[l - 1].shape)}")
            raise ValueError(f"{name}: {weight_name(l)} of shape {tuple(weight.shape)} expects {weight.shape[1]} "
                             f"input features, but {source} gives {features}")
        if bias is not None and bias.shape != (weight.shape[0],):
            raise ValueError(f"{name}: {bias_name(l)} of shape {tuple(bias.shape)} does not match "
                             f"{weight_name(l)} of shape {tuple(weight.shape)}; expected ({weight.shape[0]},)")
        features = weight.shape[0]


def _check_target(name: str, input: torch.Tensor, target: torch.Tensor, num_outputs: int, loss: str,
                  reduction: str, output_activation: str | None) -> None:
    if loss not in LOSSES:
        raise ValueError(f"{name}: loss={loss!r} is not one of {', '.join(map(repr, LOSSES))}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction={reduction!r} is not one of {', '.join(map(repr, REDUCTIONS))} "
                         "(for per-example losses use mlp and cross_entropy or mse_loss with reduction='none')")
    expected = (input.shape[0], num_outputs) if loss == "mse" else (input.shape[0],)
    if target.shape != expected:
        raise ValueError(f"{name}: for loss={loss!r}, an input of shape {tuple(input.shape)} and an output of "
                         f"{num_outputs} features need a target of shape {expected}, got {tuple(target.shape)}")
    if loss == "mse":
        return
    if output_activation is not None:
        raise ValueError(f"{name}: cross_entropy takes logits, but output_activation={output_activation!r}; "
                         "set output_activation=None (the softmax is part of the cost)")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise TypeError(f"{name}: cross_entropy's target must hold integer class indices (torch.long), got "
                        f"dtype {target.dtype}")
    # An index outside 0..C-1 is left to gather ("index 10 is out of bounds for dimension 1 with
    # size 10"): checking it here would cost two host syncs a step, a stall on a GPU.
