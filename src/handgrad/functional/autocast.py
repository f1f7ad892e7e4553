"""Mixed precision for handgrad's Functions: each runs under autocast (``torch.autocast``; Lightning's
``precision="bf16-mixed"`` or ``"16-mixed"``) the way autocast runs the op's torch namesake.

A Function names its group in a class attribute ``autocast``; ``twinned`` (function.py) reads it and
calls ``with_casts`` whenever autocast is on. The casts run *in front of* the Function, as ``.to`` ops
autograd records, exactly as autocast's own casts run in front of torch's ops: the Function then sees
inputs of one dtype, and autograd differentiates through the casts, also under create_graph.

Reference: PyTorch docs, "Automatic Mixed Precision package" (its autocast op reference)
and "Automatic Mixed Precision examples" (autocast and custom autograd Functions).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import torch


class Autocast(enum.Enum):
    """What an op does with its floating inputs inside an autocast region: what autocast does to its
    torch namesake (torch's autocast op reference sorts ops into the same groups).

    Each Function names its group in a class attribute ``autocast``: one group, or
    ``{device_type: group}`` where CPU and CUDA autocast differ (torch's softmax runs in float32
    under CUDA autocast and in its input's dtype under CPU autocast). Every group but AS_WRITTEN
    casts the floating inputs once, in front of the Function, and runs forward and backward with
    autocast off, so the op's arithmetic runs exactly as written, in one dtype. float64 is never cast.
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


# Whether autocast is on for any device: one C call, ~0.1 us, where reading the input's device type and
# asking torch.is_autocast_enabled(device_type) costs ~1 us. (torch.nn.RNN makes the same check.)
autocast_on_any_device = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)


def with_casts(apply: Callable[..., Any], declared: Autocast | dict[str, Autocast], args: tuple) -> Any:
    """``apply(*args)`` as autocast would run the op, for the device of the first argument (every handgrad
    Function takes its main input first):

    - autocast off there, or group AS_WRITTEN: ``apply(*args)`` unchanged;
    - a casting group: the floating arguments cast to the group's dtype (``cast_floating``; autograd records
      each ``.to``, so a gradient comes back in its leaf's dtype), ``apply`` run with autocast off, and for
      FLOAT32_INSIDE the (first) output cast back to the input's dtype, also recorded.
    """
    device_type = args[0].device.type
    if torch.is_autocast_enabled(device_type):
        group = autocast_group(declared, device_type)
        if group is not Autocast.AS_WRITTEN:
            input_dtype = args[0].dtype
            cast_args = cast_floating(args, cast_dtype(group, device_type, input_dtype))
            output = without_autocast(device_type, apply, *cast_args)
            return first_cast(output, input_dtype) if group is Autocast.FLOAT32_INSIDE else output
    return apply(*args)


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


def without_autocast(device_type: str, fn: Callable[..., Any], *args: Any) -> Any:
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


def first_cast(output: torch.Tensor | tuple[torch.Tensor, ...], dtype: torch.dtype
               ) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """``output`` with its (first) tensor cast to ``dtype``; further outputs (such as statistics) kept."""
    return (output[0].to(dtype), *output[1:]) if isinstance(output, tuple) else output.to(dtype)
