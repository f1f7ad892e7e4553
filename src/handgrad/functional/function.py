"""How handgrad's Functions are handed to torch: cheaply, and ready for mixed precision.

Every op is written in the style the "Extending PyTorch" notes recommend (forward
computes, setup_context saves, backward differentiates) and decorated with
``combined_forward``, which removes a per-call cost torch adds to that style, and runs the
op under autocast (``torch.autocast``; Lightning's ``precision="bf16-mixed"`` or
``"16-mixed"``) the way autocast runs the op's torch namesake.

Reference: PyTorch docs, "Automatic Mixed Precision package" (its autocast op reference)
and "Automatic Mixed Precision examples" (autocast and custom autograd Functions).
"""

from __future__ import annotations

import enum

import torch
from torch.autograd import Function

# --------------------------------------------------------------------------- autocast groups


class Autocast(enum.Enum):
    """What an op does with its floating inputs inside an autocast region: what autocast does to its
    torch namesake (torch's autocast op reference sorts ops into the same groups).

    Each Function names its group in a class attribute ``autocast``: one group, or
    ``{device_type: group}`` where CPU and CUDA autocast differ (torch's softmax runs in float32
    under CUDA autocast and in its input's dtype under CPU autocast). Every group but AS_WRITTEN
    casts the floating inputs once, on entry, and runs forward and backward with autocast off,
    so the op's arithmetic runs exactly as written, in one dtype. float64 is never cast.
    """

    LOWER_PRECISION = "the autocast dtype"  # linear, conv2d: the matmuls run in bfloat16 / float16
    FLOAT32 = "float32"  # mse_loss, cross_entropy (and softmax, log_softmax, layer_norm on CUDA)
    FLOAT32_INSIDE = "float32, the result cast back to the input's dtype"  # batch_norm (and those 3 on CPU)
    INPUT_DTYPE = "the input's dtype"  # activations, pooling, dropout: their one input is not cast
    AS_WRITTEN = "no cast, autocast stays on"  # the fused ops, which cast where their math needs it


def autocast_group(declared: Autocast | dict[str, Autocast], device_type: str) -> Autocast:
    """The group a Function ``declared`` in its ``autocast`` attribute, on ``device_type`` (a device
    without its own entry follows "cpu")."""
    return declared.get(device_type, declared["cpu"]) if isinstance(declared, dict) else declared


# --------------------------------------------------------------------------- the decorator


def combined_forward(function: type[Function]) -> type[Function]:
    """Class decorator: torch calls the Function's ``forward`` and ``setup_context`` as one
    combined ``forward(ctx, *args)``, which it can call without binding the arguments first;
    under autocast, forward and backward run as the Function's ``autocast`` group says.

    Why combined: for a Function that defines ``setup_context``, every ``apply`` first runs
    ``inspect.signature(forward).bind(*args).apply_defaults()`` (torch/autograd/function.py,
    ``_bind_default_args``) to fill in defaults that our wrappers always pass. That costs
    20-25 us a call on a 2-core CPU, more than the arithmetic of a 784-30-10 layer at batch 10
    (``scripts/benchmark.py --breakdown`` times it).
    What: the class keeps forward (compute) and setup_context (store) as written; torch is
    handed ``output = forward(*args); setup_context(ctx, args, output)``, the "combined
    forward" the Extending PyTorch notes also allow. Lost: torch.func transforms (vmap,
    grad), which need a separate setup_context; handgrad uses none.

    Autocast, for the device of the first argument (every handgrad Function takes its main
    input first):
    - off (the common case): one check in forward and one in backward, ~0.5 us a call in all.
    - on, a casting group: what ``torch.amp.custom_fwd(cast_inputs=dtype)`` and
      ``torch.amp.custom_bwd`` do, written out: the floating arguments are cast to the group's
      dtype, and forward and backward run with autocast off. Written out because those two
      build a ``torch.autocast`` context and walk the arguments generically on every call: they
      add 30-40 us to an op's forward and backward on a 2-core CPU, about twice what this adds
      (the casts included), and several times the arithmetic of a small layer.
    - on, AS_WRITTEN: ``torch.amp.custom_fwd`` / ``custom_bwd`` themselves (one call a step for
      a fused network): forward runs under the caller's autocast state, backward under the same.
    Gradients that come back in a cast dtype are cast to each input's own dtype by autograd's
    engine, as for torch's ops, so ``.grad`` always has its leaf's dtype.
    """
    forward, setup_context, backward = function.forward, function.setup_context, function.backward
    declared = getattr(function, "autocast", Autocast.AS_WRITTEN)  # none declared: torch's default for custom ops

    def forward_then_setup_context(ctx, *args):
        output = forward(*args)
        setup_context(ctx, args, output)
        return output

    amp_forwards, amp_backwards = {}, {}  # AS_WRITTEN: custom_fwd / custom_bwd, built once per device type

    def forward_under_autocast(ctx, *args):
        if not autocast_on_any_device():  # the common case: this check is all it costs
            return forward_then_setup_context(ctx, *args)
        device_type = args[0].device.type
        if not torch.is_autocast_enabled(device_type):  # on, but for another device
            return forward_then_setup_context(ctx, *args)

        group = autocast_group(declared, device_type)
        ctx.autocast_device, ctx.autocast_group, ctx.grad_dtype = device_type, group, None
        if group is Autocast.AS_WRITTEN:
            if device_type not in amp_forwards:
                amp_forwards[device_type] = torch.amp.custom_fwd(forward_then_setup_context, device_type=device_type)
            return amp_forwards[device_type](ctx, *args)

        input_dtype = args[0].dtype
        cast_args = cast_floating(args, cast_dtype(group, device_type, input_dtype))
        output = without_autocast(device_type, forward_then_setup_context, ctx, *cast_args)
        if group is Autocast.FLOAT32_INSIDE and first(output).dtype != input_dtype:
            ctx.grad_dtype = first(output).dtype  # float32: the backward's math runs in it as well
            output = first_cast(output, input_dtype)
        return output

    def backward_under_autocast(ctx, *grad_outputs):
        device_type = getattr(ctx, "autocast_device", None)
        if device_type is None:  # the forward ran without autocast
            return backward(ctx, *grad_outputs)

        if ctx.autocast_group is Autocast.AS_WRITTEN:
            if device_type not in amp_backwards:
                amp_backwards[device_type] = torch.amp.custom_bwd(backward, device_type=device_type)
            return amp_backwards[device_type](ctx, *grad_outputs)

        if ctx.grad_dtype is not None:
            grad_outputs = tuple(g if g is None else g.to(ctx.grad_dtype) for g in grad_outputs)
        if torch.is_autocast_enabled(device_type):  # backward() called inside an autocast region
            return without_autocast(device_type, backward, ctx, *grad_outputs)
        return backward(ctx, *grad_outputs)

    # setattr, not assignment: mypy forbids assigning to a class's methods, which is the point here
    setattr(function, "forward", staticmethod(forward_under_autocast))  # noqa: B010
    setattr(function, "setup_context", staticmethod(Function.setup_context))  # noqa: B010 (torch takes the combined path)
    setattr(function, "backward", staticmethod(backward_under_autocast))  # noqa: B010
    return function


# --------------------------------------------------------------------------- helpers

# Whether autocast is on for any device: one C call, ~0.3 us, where reading the input's device type and
# asking torch.is_autocast_enabled(device_type) costs ~1 us. (torch.nn.RNN makes the same check.)
autocast_on_any_device = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)


def cast_dtype(group: Autocast, device_type: str, input_dtype: torch.dtype) -> torch.dtype:
    """The dtype a casting ``group`` casts floating inputs to."""
    if group is Autocast.LOWER_PRECISION:
        return torch.get_autocast_dtype(device_type)
    if group is Autocast.INPUT_DTYPE:
        return input_dtype
    return torch.float32  # FLOAT32, FLOAT32_INSIDE


def cast_floating(args: tuple, dtype: torch.dtype) -> list:
    """``args`` with every floating tensor but float64 cast to ``dtype``, as autocast casts an op's inputs.
    (handgrad's Functions take their tensors as direct arguments, never inside lists.)"""
    return [arg.to(dtype) if isinstance(arg, torch.Tensor) and arg.is_floating_point()
            and arg.dtype != dtype and arg.dtype != torch.float64 else arg
            for arg in args]


def without_autocast(device_type: str, fn, *args):
    """``fn(*args)`` with autocast off for ``device_type``, as under ``torch.autocast(device_type,
    enabled=False)``, whose argument checks cost ~3 us an entry: this costs ~0.5 us. Only called
    where autocast is on, so it is switched back on afterwards."""
    if torch.compiler.is_compiling():  # torch.compile traces the context manager, not the setter
        with torch.autocast(device_type, enabled=False):
            return fn(*args)
    torch.set_autocast_enabled(device_type, False)
    try:
        return fn(*args)
    finally:
        torch.set_autocast_enabled(device_type, True)


def first(output):
    """A Function's (first) output."""
    return output[0] if isinstance(output, tuple) else output


def first_cast(output, dtype: torch.dtype):
    """``output`` with its (first) tensor cast to ``dtype``; further outputs (such as statistics) kept."""
    return (output[0].to(dtype), *output[1:]) if isinstance(output, tuple) else output.to(dtype)
