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

The sweeps themselves (forward, tangents, backpropagation) are in functional/backprop.py.
Every tensor a backward reads is an input or a differentiable output of its node (the hidden
a_l are outputs of MLP, with gradients of their own), so each backward can be differentiated
again: double backward, gradient penalties, Hessian-vector products, torch.func.hessian.

The Functions are verified like every other op (handgrad.verify.FUSED_CASES) against the
composition of plain torch ops they replace (and beyond the table in
tests/test_functional_fused.py); scripts/benchmark.py measures what each buys.

Reference: Nielsen, "Neural Networks and Deep Learning", ch. 2 (the four equations of
backpropagation) and ch. 3 (cross-entropy); CS231n layers.py ("sandwich" layers such as
affine_relu_forward).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from handgrad.functional.autocast import autocast_on_any_device
from handgrad.functional.backprop import (
    ACTIVATIONS,
    Activations,
    activate_,
    activation_backward,
    affine,
    affine_tangent,
    backpropagate,
    forward_layers,
    forward_tangents,
    jvp_possible,
    matmul_operands,
    save_layers,
    saved_layers,
)
from handgrad.functional.function import Autocast, TwinnedFunction, may_overwrite, twinned

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
    t_z    = t_x @ W^T + x @ t_W^T + t_b          (jvp: z is bilinear in x and W, affine in b)
    t_y    = f'(z) t_z                            (the formula of (1): every f' here is symmetric)

    Saves y (not z), x only if grad_W is wanted and W only if grad_x is: each gradient reads only
    inputs and the output y, so double backward needs nothing more. Where a jvp may run (a
    torch.func transform, forward AD) it saves x, W and y, which the jvp reads. Under autocast
    the wrapper casts x and W in front (``matmul_operands``): the saved copies are inputs too.
    """

    autocast = Autocast.AS_WRITTEN  # the wrapper casts the matmul operands; the rest runs under the caller's autocast

    @staticmethod
    def forward(input, weight, bias, activation, negative_slope):
        return activate_(affine(input, weight, bias), activation, negative_slope, may_overwrite())

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, _, activation, negative_slope = inputs
        needs_x, needs_w, _, _, _ = ctx.needs_input_grad
        every = jvp_possible()
        saved = (input if needs_w or every else None, weight if needs_x or every else None,
                 output if activation is not None else None)  # f' = 1 needs no y
        ctx.save_for_backward(*saved)
        if every:
            ctx.save_for_forward(*saved)
        ctx.activation, ctx.negative_slope = activation, negative_slope

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, y = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        grad_z = activation_backward(grad_output, y, ctx.activation, ctx.negative_slope,
                                     may_overwrite(grad_output))  # (1)

        if ctx.needs_input_grad[0]:
            grad_input = grad_z @ weight  # (2)  (N, D_in)
        if ctx.needs_input_grad[1]:
            grad_weight = grad_z.mT @ input  # (D_out, D_in)
        if ctx.needs_input_grad[2]:  # False for a None bias
            grad_bias = grad_z.sum(0)  # (D_out,)
        return grad_input, grad_weight, grad_bias, None, None

    @staticmethod
    def jvp(ctx, t_input, t_weight, t_bias, _t_activation, _t_negative_slope):
        input, weight, y = ctx.saved_tensors
        t_z = affine_tangent(input, weight, t_input, t_weight, t_bias)  # (N, D_out)
        return activation_backward(t_z, y, ctx.activation, ctx.negative_slope)


def linear_activation(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      activation: str | None = "relu", negative_slope: float = 0.01) -> torch.Tensor:
    """f(linear(input, weight, bias)) as one hand-written Function, for input (*, D_in).

    ``activation`` is "sigmoid", "tanh", "relu", "leaky_relu" (with ``negative_slope``),
    "softmax" (over the last dimension) or None for the identity.
    """
    _check_activation("linear_activation", activation, negative_slope)
    check_layers("linear_activation", input, [weight], [bias])
    if autocast_on_any_device():
        input, (weight, bias) = matmul_operands(input, (weight, bias))
    if input.dim() == 2:  # (N, D_in): the common case, without two reshapes
        return LinearActivation.call(input, weight, bias, activation, negative_slope)
    output = LinearActivation.call(input.reshape(-1, input.shape[-1]), weight, bias, activation, negative_slope)
    return output.reshape(*input.shape[:-1], output.shape[-1])


# --------------------------------------------------------------------------- the whole MLP


@twinned
class MLP(TwinnedFunction):
    """A stack of L fully connected layers as one node; backward is Nielsen's backpropagation.

    Forward, a_0 = x:
        z_l = a_{l-1} @ W_l^T + b_l,   a_l = f_l(z_l)      l = 1 .. L,   y = a_L
    Shapes:  x (N, D_0), W_l (D_l, D_{l-1}), b_l (D_l,)  ->  a_l (N, D_l),  y (N, D_L)
    f_l = ``activations.hidden`` for l < L and ``activations.output`` for l = L; f_l'(z_l) is
    read off a_l (see ``activation_backward``), so z_l is never stored.

    Outputs: y and the hidden a_1 .. a_{L-1}, all differentiable (``mlp`` returns y alone), so
    that backward reads only inputs and outputs. Backward, with delta_l = dLoss/dz_l (N, D_l) and
    grad_a_l the gradient a_l received directly (None unless a_l was used: double backward), from
    the output layer down (l = L .. 1):
        delta_L  = grad_y * f_L'(z_L)                                     (BP1)
        delta_l  = (delta_{l+1} @ W_{l+1} + grad_a_l) * f_l'(z_l)         (BP2)  l < L
        grad_b_l = sum_n delta_l                  (D_l,)                  (BP3)  b_l was broadcast over N rows
        grad_W_l = delta_l^T @ a_{l-1}            (D_l, D_{l-1})          (BP4)
        grad_x   = delta_1 @ W_1                  (N, D_0)
    jvp, the forward sweep of tangents (t_a_0 = t_x):
        t_z_l = t_a_{l-1} @ W_l^T + a_{l-1} @ t_W_l^T + t_b_l,   t_a_l = f_l'(z_l) t_z_l
        returns t_y = t_a_L and every t_a_l

    Saves what BP1-BP4 read: x (for grad_W_1), a_1 .. a_L (a_L only if f_L is not the identity),
    W_2 .. W_L, and W_1 only if grad_x is wanted; x and W_1 always where a jvp may run.
    Arguments after ``activations`` are the parameters, flattened: W_1, b_1, W_2, b_2, ...
    (a bias may be None).
    """

    autocast = Autocast.AS_WRITTEN  # the wrapper casts the matmul operands; the rest runs under the caller's autocast

    @staticmethod
    def forward(input, activations, *params):
        *hidden, y = forward_layers(input, params, activations, may_overwrite())
        return y, *hidden  # y first: what ``mlp`` returns

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, activations, *params = inputs
        y, *hidden = output
        ctx.set_materialize_grads(False)  # an unused output's gradient is None, not a tensor of zeros
        ctx.activations, ctx.num_layers = activations, len(params) // 2
        needs_x, _, *needs_params = ctx.needs_input_grad
        save_layers(ctx, input, params, hidden, y if activations.output is not None else None,  # f_L' = 1: no y
                    needs_x, needs_params)

    @staticmethod
    def backward(ctx, grad_output, *grad_hidden):
        a, weights, _ = saved_layers(ctx)
        needs_x, _, *needs_params = ctx.needs_input_grad
        grad_x, *grad_params = backpropagate(grad_output, a, weights, ctx.activations, needs_x, needs_params,
                                             grad_hidden, may_overwrite(grad_output))
        return grad_x, None, *grad_params

    @staticmethod
    def jvp(ctx, t_input, _t_activations, *t_params):
        a, weights, _ = saved_layers(ctx)
        *t_hidden, t_y = forward_tangents(t_input, t_params, a, weights, ctx.activations)
        return t_y, *t_hidden


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
    if autocast_on_any_device():
        input, params = matmul_operands(input, params)
    if input.dim() == 2:  # (N, D_0): the common case, without two reshapes
        return MLP.call(input, activations, *params)[0]
    output, *_hidden = MLP.call(input.reshape(-1, input.shape[-1]), activations, *params)
    return output.reshape(*input.shape[:-1], output.shape[-1])


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
