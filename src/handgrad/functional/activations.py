"""Elementwise activations: sigmoid, tanh, relu, leaky_relu, gelu, softplus (softmax and log_softmax: softmax.py).

Each derivative is written from the forward's *output* y where it is a function of it (sigmoid,
tanh, relu): y is a differentiable output of the node, so differentiating the backward again (double
backward) goes through y and needs nothing more. leaky_relu saves its input x, as torch does.
Every Jacobian here is diagonal, so the jvp is the backward's formula applied to the tangent.

Reference: Nielsen, "Neural Networks and Deep Learning", ch. 2; CS231n layers.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as torch_F

from handgrad.functional.function import (
    Autocast,
    TwinnedFunction,
    may_overwrite,
    transforms_active,
    twinned,
    zero_link,
)
from handgrad.functional.reduction import may_read_values

# --------------------------------------------------------------------------- sigmoid


def stable_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """sigma(x) = 1 / (1 + e^-x), evaluated without overflow.

    For x >= 0 use 1 / (1 + e^-x); for x < 0 the equal form e^x / (1 + e^x). Both at once,
    with no branch:
        sigma(x) = e^min(x, 0) / (1 + e^-|x|)
    Only numbers <= 0 are exponentiated, so every e^(.) lies in (0, 1] for any finite x; torch's
    own kernel computes e^-x, which overflows to inf below x = -88 in float32. And no boolean
    mask: on CPU, ops on bool tensors run several times slower than this arithmetic.
    In place on its own temporaries where ``may_overwrite()`` allows (not under a torch.func transform).
    """
    if not may_overwrite():
        return torch.exp(x.clamp(max=0)) / (1 + torch.exp(-x.abs()))
    denominator = x.abs().neg_().exp_().add_(1)  # 1 + e^-|x|
    return x.clamp(max=0).exp_().div_(denominator)  # e^min(x, 0) / (1 + e^-|x|)


def clamped_sigmoid_(z: torch.Tensor) -> torch.Tensor:
    """sigma(z) in place in z (a caller's own temporary), for speed: torch's kernel, 1 / (1 + e^-z), on z
    clamped below at -C, C = ln(1 / smallest normal number) - 1 in the precision that kernel computes
    in (float32 for float16, bfloat16 and float32; float64): e^-z stays finite, never overflowing, and
    the result stays a normal number (subnormal ones make CPU arithmetic many times slower).
    Equal to sigma(z) for z >= -C; below, the true sigma(z) < e^-C (3e-38 in float32) and the result
    is sigma(-C). Two kernels where stable_sigmoid's exact form takes seven: the fused ops' sigmoid,
    where a small network's step is mostly per-kernel cost.
    """
    return z.clamp_(min=-SIGMOID_CLAMP[z.dtype == torch.float64]).sigmoid_()


SIGMOID_CLAMP = {wide: -math.log(torch.finfo(torch.float64 if wide else torch.float32).tiny) - 1
                 for wide in (False, True)}  # C of clamped_sigmoid_ (86.3, 707.4), by "is it float64"


@twinned
class Sigmoid(TwinnedFunction):
    """y = sigma(x) = 1 / (1 + e^-x)          x (*)  ->  y (*)

    dy/dx = sigma(x) (1 - sigma(x)) = y (1 - y)
    grad_x = grad_y * y * (1 - y)             (saves the output y, not x)
    t_y    = t_x * y * (1 - y)                (jvp: the same diagonal Jacobian, applied to the tangent)
    """

    autocast = Autocast.INPUT_DTYPE  # as torch's: runs in its input's dtype

    @staticmethod
    def forward(input):
        return stable_sigmoid(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (y,) = ctx.saved_tensors
        return grad_output * y * (1 - y)

    @staticmethod
    def jvp(ctx, t_input):
        (y,) = ctx.saved_tensors
        return t_input * y * (1 - y)


def sigmoid(input: torch.Tensor) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.sigmoid."""
    return Sigmoid.call(input)


# --------------------------------------------------------------------------- tanh


@twinned
class Tanh(TwinnedFunction):
    """y = tanh(x)                             x (*)  ->  y (*)

    dy/dx = 1 - tanh(x)^2 = 1 - y^2
    grad_x = grad_y * (1 - y^2)               (saves the output y)
    t_y    = t_x * (1 - y^2)                  (jvp)
    """

    autocast = Autocast.INPUT_DTYPE  # as torch's: runs in its input's dtype

    @staticmethod
    def forward(input):
        return torch.tanh(input)  # saturates to +-1; never overflows

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (y,) = ctx.saved_tensors
        return grad_output * (1 - y * y)

    @staticmethod
    def jvp(ctx, t_input):
        (y,) = ctx.saved_tensors
        return t_input * (1 - y * y)


def tanh(input: torch.Tensor) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.tanh."""
    return Tanh.call(input)


# --------------------------------------------------------------------------- relu, leaky_relu


def passes(y: torch.Tensor) -> torch.Tensor:
    """dy/dx of y = relu(x), read off y: 1 where y > 0 or y is NaN, 0 where y = 0.

    torch's derivative, threshold_backward(grad, y, 0), keeps grad where not (y <= 0): a NaN input
    (relu(NaN) = NaN) passes its gradient. sign(y) alone gives 0 there (sign(NaN) = 0), so NaN is
    first mapped to 1: sign(nan_to_num(y, nan=1)). Two float kernels, faster on CPU than a bool mask
    [y != 0] (ops on bool tensors are slow there). sign's derivative is 0: the result keeps a graph to y
    of zero derivative.
    """
    return torch.sign(y.nan_to_num(nan=1.0))


@twinned
class ReLU(TwinnedFunction):
    """y = max(x, 0)                           x (*)  ->  y (*)

    dy/dx = 1 where x > 0, else 0 (the subgradient 0 at x = 0, as torch uses); 1 at a NaN x, as torch
          = passes(y) = sign(nan_to_num(y, nan=1))     (y >= 0, and y > 0 exactly where x > 0)
    grad_x = grad_y * passes(y)               (saves the output y)
    t_y    = t_x * passes(y)                  (jvp)

    Why y and not a bool mask [x > 0]: the next layer saves y as its input anyway, so it costs no
    memory, and on CPU float kernels are faster than a bool mask (scripts/benchmark.py).
    Double backward: passes(y) has derivative 0 but a graph to y, as torch's threshold_backward(grad,
    y) has. The one difference from torch's select: an inf or nan upstream gradient at a unit with
    x <= 0 gives nan here (inf * 0), 0 in torch; such a gradient has overflowed already (a loss scaler
    then skips the step either way).
    """

    autocast = Autocast.INPUT_DTYPE  # as torch's: runs in its input's dtype

    @staticmethod
    def forward(input):
        return input.clamp_min(0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (y,) = ctx.saved_tensors
        return grad_output * passes(y)

    @staticmethod
    def jvp(ctx, t_input):
        (y,) = ctx.saved_tensors
        return t_input * passes(y)


def relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.relu (``inplace`` is accepted and ignored:
    the hand-written op always returns a new tensor)."""
    return ReLU.call(input)


@twinned
class LeakyReLU(TwinnedFunction):
    """y = x if x > 0 else a x                 x (*)  ->  y (*),  a = negative_slope

    dy/dx = 1 where x > 0, else a (a NaN x takes a, as in torch)
    grad_x = where(x > 0, grad_y, a grad_y)   (saves the input x, as torch does)
    t_y    = where(x > 0, t_x, a t_x)         (jvp)

    Double backward: grad_x is linear in grad_y and constant in x (d grad_x / dx = 0), so while a
    backward is differentiated it returns zero_link(grad_x, x): a graph to x of zero derivative, as
    torch's leaky_relu_backward(grad, x) has (rule R4). That is why x is saved, not a bool mask.
    """

    autocast = Autocast.INPUT_DTYPE  # as torch's: runs in its input's dtype

    @staticmethod
    def forward(input, negative_slope):
        return torch.where(input > 0, input, input * negative_slope)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.negative_slope = inputs
        ctx.save_for_backward(input)
        ctx.save_for_forward(input)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        grad_input = torch.where(x > 0, grad_output, grad_output * ctx.negative_slope)
        return zero_link(grad_input, x), None

    @staticmethod
    def jvp(ctx, t_input, _t_negative_slope):
        (x,) = ctx.saved_tensors
        return torch.where(x > 0, t_input, t_input * ctx.negative_slope)


def leaky_relu(input: torch.Tensor, negative_slope: float = 0.01, inplace: bool = False) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.leaky_relu (``inplace`` is ignored)."""
    return LeakyReLU.call(input, negative_slope)


# --------------------------------------------------------------------------- gelu

SQRT_HALF = math.sqrt(0.5)  # 1 / sqrt(2)
INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)  # the standard normal density's factor
LOG2_E = math.log2(math.e)  # e^z = 2^(z log2 e)
SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
GELU_CUBIC = 0.044715  # the tanh approximation's cubic coefficient (Hendrycks & Gimpel)
GELU_TANH_SATURATED = 10.0  # |x| beyond which tanh(u) rounds to +-1 in float64 (u > 43): 1 - tanh^2 u is exactly 0


@twinned
class GELU(TwinnedFunction):
    """y = x Phi(x), Phi the standard normal CDF          x (*)  ->  y (*)

    approximate="none":  Phi(x) = (1 + erf(x / sqrt 2)) / 2
        dy/dx = Phi(x) + x phi(x),   phi(x) = e^(-x^2 / 2) / sqrt(2 pi), the normal density
    approximate="tanh":  Phi(x) ~ (1 + tanh u) / 2,   u = sqrt(2 / pi) (x + 0.044715 x^3)
        dy/dx = (1 + tanh u) / 2 + (x / 2) (1 - tanh^2 u) du/dx,   du/dx = sqrt(2 / pi) (1 + 3 * 0.044715 x^2)
    grad_x = grad_y * dy/dx                   (saves the input x)
    jvp: t_y = t_x * dy/dx

    The forward is torch's own kernel (as conv2d's is torch's convolution), y in one pass, bit for bit torch's,
    then y = x where that y is +inf: the kernel's x (1 + erf) overflows for a finite x > 1.7e38 in float32, where
    Phi(x) rounds to 1. On the CPU outside torch.func and dynamo (may_read_values) the largest x, one reduction,
    first tells whether any x comes near that, and the fix is skipped when none does. The derivatives are
    written here.
    bfloat16 / float16 inputs are computed in float32 and rounded once, as torch's kernel does. The derivative
    is finite for every finite x: erf and tanh saturate to +-1, e^(-x^2 / 2) underflows to 0, and the tanh
    form's derivative's tanh u and du/dx are evaluated at x clamped to +-10, past which tanh u rounds to +-1
    and 1 - tanh^2 u is exactly 0 anyway (so x^3 never overflows into inf * 0, in the derivative or in its own
    derivative; torch's kernel gives nan there for |x| > 1.8e19 in float32).
    Reference: Hendrycks & Gimpel, "Gaussian Error Linear Units (GELUs)", 2016.
    """

    autocast = Autocast.INPUT_DTYPE  # as torch's: runs in its input's dtype

    @staticmethod
    def forward(input, approximate):
        output = torch_F.gelu(input, approximate=approximate)  # torch's kernel: one pass, the formula above
        if may_read_values(input) and input.numel() and float(input.amax()) <= gelu_overflow_free(input.dtype):
            return output  # one reduction on the host tells that no x reaches the overflow (nan: not <=)
        overflow = output == math.inf  # x > 1.7e38 in float32 (or x = inf): y is x there
        if may_overwrite():  # R3: output is ours
            return torch.where(overflow, input, output, out=output)
        return torch.where(overflow, input, output)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.approximate = inputs
        ctx.save_for_backward(input)
        ctx.save_for_forward(input)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return gelu_derivative_times(grad_output, x, ctx.approximate), None

    @staticmethod
    def jvp(ctx, t_input, _):
        (x,) = ctx.saved_tensors
        return gelu_derivative_times(t_input, x, ctx.approximate)


def gelu_overflow_free(dtype: torch.dtype) -> float:
    """A bound below which torch's gelu kernel never overflows, x (1 + erf) <= 2x: a quarter of the largest number
    of the dtype it computes in (float32 for half precision)."""
    return torch.finfo(torch.promote_types(dtype, torch.float32)).max / 4


def gelu_derivative_times(grad: torch.Tensor, input: torch.Tensor, approximate: str) -> torch.Tensor:
    """grad * dy/dx of GELU (its docstring), rounded to the input's dtype.

    The erf form, where ``may_overwrite(grad)`` allows (rule R3), in place in the result's memory, a slice a
    of GELU_CHUNK elements at a time, with the exponential in a temporary of one slice beside it: a fresh
    tensor of the whole input's size costs more than an in-place pass over it (the GPT step: ~0.6 ms for
    2 MiB), and a slice's temporary is reused by the next slice.
        a = x / sqrt 2
        e = 2^(-a^2 log2(e)) = e^(-a^2) = e^(-x^2 / 2)      (torch's exp2 kernel is twice as fast as its exp on CPU)
        a <- 1 + erf(a) = 2 Phi(x)
        a <- (a + 2 / sqrt(2 pi) x e) grad / 2 = grad (Phi(x) + x phi(x))
    Elsewhere (a backward differentiated again, a torch.func transform) ``gelu_derivative`` out of place.
    """
    if approximate == "none" and may_overwrite(grad):
        x = input.to(torch.promote_types(input.dtype, torch.float32))  # half precision: computed in float32
        result = torch.empty_like(x, memory_format=torch.contiguous_format)
        for x_i, grad_i, a in zip(x.reshape(-1).split(GELU_CHUNK), grad.reshape(-1).split(GELU_CHUNK),
                                  result.view(-1).split(GELU_CHUNK), strict=True):
            torch.mul(x_i, SQRT_HALF, out=a)  # a = x / sqrt 2
            e = (a * a).mul_(-LOG2_E).exp2_()  # e^(-x^2 / 2)
            a.erf_().add_(1)  # 2 Phi(x)
            a.addcmul_(x_i, e, value=2 * INV_SQRT_2PI).mul_(grad_i).mul_(0.5)
        return result.view(x.shape).to(input.dtype)
    return (grad * gelu_derivative(input, approximate)).to(input.dtype)


GELU_CHUNK = 2**17  # elements of a slice in gelu_derivative_times: 512 KiB in float32


def gelu_derivative(input: torch.Tensor, approximate: str) -> torch.Tensor:
    """dy/dx of GELU (its docstring), in float32 for half-precision inputs, as torch's kernel computes it."""
    x = input.to(torch.promote_types(input.dtype, torch.float32))
    if approximate == "tanh":
        x_c = x.clamp(-GELU_TANH_SATURATED, GELU_TANH_SATURATED)  # tanh u(x_c) = tanh u(x): both round to +-1
        t = derivative_tanh(SQRT_2_OVER_PI * (x_c + GELU_CUBIC * x_c * x_c * x_c))
        du_dx = SQRT_2_OVER_PI * (1 + 3 * GELU_CUBIC * x_c * x_c)
        return 0.5 * (1 + t) + 0.5 * x_c * (1 - t * t) * du_dx
    cdf = 0.5 * (1 + torch.erf(x * SQRT_HALF))
    pdf = INV_SQRT_2PI * torch.exp(-0.5 * x * x)
    return cdf + x * pdf


def derivative_tanh(u: torch.Tensor) -> torch.Tensor:
    """tanh(u) inside a derivative: handgrad's Tanh where that derivative is itself differentiated (grad mode on,
    a torch.func transform, a forward-AD level), so that its own derivative is hand-written (torch.tanh's is
    aten::tanh_backward); torch.tanh in an ordinary first-order backward, which skips a Function call."""
    if torch.is_grad_enabled() or transforms_active() or torch.autograd.forward_ad._current_level >= 0:
        return tanh(u)
    return torch.tanh(u)


def gelu(input: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.gelu."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate={approximate!r} must be 'none' (the exact erf form) or 'tanh'")
    return GELU.call(input, approximate)


# --------------------------------------------------------------------------- softplus


@twinned
class Softplus(TwinnedFunction):
    """y = (1 / beta) log(1 + e^(beta x)), and y = x where beta x > threshold     x (*)  ->  y (*)

    With z = beta x, in a form that never overflows (e^z does for z > 88 in float32; e^-|z| lies in (0, 1]):
        log(1 + e^z) = max(z, 0) + log1p(e^-|z|)
        y = x                                       where z > threshold (torch's switch to the identity)
          = (max(z, 0) + log1p(e^-|z|)) / beta      elsewhere
    (torch's kernel computes log1p(e^z): inf, with a nan gradient, where 88 < z <= threshold in float32 when
    threshold is set above 88; here y and dy/dx are x and 1 there, their limits.)
    dy/dx = e^z / (1 + e^z) = sigma(z)             (the 1 / beta and dz/dx = beta cancel); 1 past the threshold
    grad_x = grad_y * sigma(beta x), grad_y past the threshold        (saves the input x, as torch does)
    t_y    = t_x * sigma(beta x), t_x past the threshold              (jvp: the same diagonal Jacobian)

    The second derivative, d^2y/dx^2 = beta sigma(z) (1 - sigma(z)) (0 past the threshold), is hand-written
    too, with no code of its own: the backward takes sigma from handgrad's Sigmoid Function, so a double
    backward differentiates grad_x through Sigmoid's backward, y (1 - y), times beta from z = beta x (torch's
    sigmoid would bring in aten's sigmoid_backward, a derivative torch wrote). Past the threshold grad_x is
    grad_y itself: torch.where sends nothing to the sigma branch there.
    bfloat16 / float16 inputs are computed in float32 and rounded once, as torch's kernel does.
    """

    autocast = {"cpu": Autocast.INPUT_DTYPE, "cuda": Autocast.FLOAT32}  # as torch's (CUDA autocast: float32)

    @staticmethod
    def forward(input, beta, threshold):
        x = input.to(torch.promote_types(input.dtype, torch.float32))  # half precision: computed in float32
        z = x * beta
        log1p_exp_z = z.clamp(min=0) + torch.log1p(torch.exp(-z.abs()))  # log(1 + e^z), stable
        return torch.where(z > threshold, x, log1p_exp_z / beta).to(input.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.beta, ctx.threshold = inputs
        ctx.save_for_backward(input)
        ctx.save_for_forward(input)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return softplus_derivative_times(grad_output, x, ctx.beta, ctx.threshold), None, None

    @staticmethod
    def jvp(ctx, t_input, _t_beta, _t_threshold):
        (x,) = ctx.saved_tensors
        return softplus_derivative_times(t_input, x, ctx.beta, ctx.threshold)


def softplus_derivative_times(grad: torch.Tensor, input: torch.Tensor, beta: float, threshold: float) -> torch.Tensor:
    """grad * dy/dx of Softplus (its docstring): grad * sigma(beta x), grad itself where beta x > threshold;
    sigma by handgrad's Sigmoid, so that the product's own derivative is hand-written too."""
    x = input.to(torch.promote_types(input.dtype, torch.float32))
    z = x * beta
    return torch.where(z > threshold, grad, grad * Sigmoid.call(z)).to(input.dtype)


def softplus(input: torch.Tensor, beta: float = 1.0, threshold: float = 20.0) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.softplus."""
    if not input.is_floating_point():
        raise TypeError(f"softplus: input of dtype {input.dtype} is not a floating-point tensor; pass e.g. "
                        "input.float()")
    return Softplus.call(input, beta, threshold)
