"""How handgrad's Functions are handed to torch: one class body, three torch Functions.

Every op is written once, in the style the "Extending PyTorch" notes recommend: ``forward`` computes,
``setup_context`` saves, ``backward`` differentiates, ``jvp`` pushes a tangent forward. ``@twinned``
hands that body to torch as three classes, because no single class serves every caller cheaply:

- the **fast class** (the decorated class itself): torch is given ``forward(ctx, *args)``, the forward
  and setup_context combined, and no jvp. Every ordinary call, first- and second-order backward
  included, runs it. Combined, because for a class with a separate setup_context torch binds the
  arguments with ``inspect.signature`` on every call (``_bind_default_args``), 12-13 us more a call.
- the **transform-ready twin** (``Fn.transformable``): a separate setup_context, the jvp, and
  ``generate_vmap_rule = True`` (or the class's own ``vmap``), which torch.func (grad, vmap, jvp,
  jacrev, jacfwd, hessian) requires. Taken only while a functorch transform is active or a
  forward-AD level is open (dual tensors exist only inside ``torch.autograd.forward_ad.dual_level()``).
- the **traceable twin** (``Fn.traceable``): the twin without jvp, for torch.compile: dynamo refuses a
  Function that defines one ("Unsupported custom jvp").

Dispatch, in ``Fn.call`` (which the lowercase wrappers call) and ``Fn.apply`` (the same function):

    dynamo tracing                           ->  traceable twin, autocast's casts in front
    torch.func transform or forward-AD level ->  transform-ready twin, casts in front
    autocast on                              ->  fast class, casts in front
    otherwise                                ->  fast class: torch's C apply

The wrappers call ``Fn.call``, not ``Fn.apply``: dynamo special-cases a Function's ``apply`` and traces
the class itself (the fast one, so none of the dispatch above, and no casts under autocast), while it
inlines ``call``.

Cost of a call (``python -m handgrad.benchmarks.dispatch``, 2026-11-29, 2-core CPU, torch 2.14.1, thread
CPU time, one thread): an empty Function's ``Fn.call`` 3.33 us, torch's C apply of the same fast class
alone 2.95 us (the four checks and a Python frame: ~0.4 us), the twin's apply outside a transform 15.0 us.

Rules every Function body follows, so that its backward can itself be differentiated (double
backward, gradient penalties, hessian) and its body runs under vmap's generated rule:

R1  Every tensor a backward or jvp reads is an input, a *differentiable* output, or a tensor of zero
    derivative (a mask, indices, an integer target). Anything else is recomputed from those in backward.
R2  A Function with several differentiable outputs calls ``ctx.set_materialize_grads(False)``, and its
    backward adds the contribution of every output whose gradient is not None.
R3  In-place arithmetic only on the Function's own temporaries, and only when ``may_overwrite()``.
R4  A piecewise-linear op returns ``zero_link(grad_x, x)``: torch's gradient keeps a graph to x there.
R5  ``ctx.save_for_forward`` gets exactly the tensors given to ``ctx.save_for_backward``.
R6  No tensors as ctx attributes (shapes, dims and flags are fine).
R7  No Python branch on a tensor's values in a wrapper, forward or backward (under vmap it has many).
R8  A jvp returns a tensor for every differentiable output (zeros if need be), never None.

A Function not yet written to these rules sets ``once_differentiable = True``: its first derivatives
are as before, and create_graph=True or a second torch.func level through it raises an error that names
it (``first_order``); so does forward-mode AD (``no_jvp``). Converting one: make its body follow R1-R8,
add its ``jvp`` (the derivation in the docstring beside the backward's), delete the flag, then delete
what the tests list as its known failures: the ``first_order(...)`` opt-outs of its rows and its
``first_order_samples(...)`` entries in handgrad/verify/cases/<family>.py. The tests fail until those
lists say exactly what still fails (tests/test_transforms.py, tests/test_torch_samples.py).

Reference: PyTorch docs, "Extending PyTorch" and "Extending torch.func with autograd.Function".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, cast

import torch
from torch.autograd import Function
from torch.autograd.function import FunctionMeta

from handgrad.functional.autocast import Autocast, autocast_group, autocast_on_any_device, with_casts, without_autocast

__all__ = ["Autocast", "TwinnedFunction", "may_overwrite", "twinned", "zero_link"]

transforms_active = torch._C._are_functorch_transforms_active  # one C call, ~0.03 us
is_dynamo_compiling = torch.compiler.is_dynamo_compiling  # True only while dynamo traces
forward_ad = torch.autograd.forward_ad  # forward_ad._current_level >= 0 inside ``with dual_level()``
is_legacy_batched = torch._C._functorch.is_legacy_batchedtensor


class TwinnedFunction(Function):
    """torch's Function with the attributes ``@twinned`` gives its subclasses, declared for type checkers
    (which ignore what a class decorator returns). handgrad's Functions subclass this."""

    call: ClassVar[Callable[..., Any]]  # the dispatch; what the wrappers call
    transformable: ClassVar[type[Function]]  # the twin for torch.func and forward AD
    traceable: ClassVar[type[Function]]  # the twin for dynamo
    fast_apply: ClassVar[Callable[..., Any]]  # torch's C apply of the fast class, no dispatch


def twinned(function: type[TwinnedFunction]) -> type[TwinnedFunction]:
    """Class decorator: the fast class, its two twins and the dispatch between them (module docstring).

    The class defines forward, setup_context, backward, an ``autocast`` group (autocast.py), and either
    a ``jvp`` or ``once_differentiable = True``; optionally its own ``vmap`` staticmethod, used instead
    of torch's generated rule (for forwards made of ops without batching rules).
    """
    name = function.__name__
    forward, setup_context, backward = function.forward, function.setup_context, function.backward
    declared = function.__dict__.get("autocast", Autocast.AS_WRITTEN)
    if function.__dict__.get("once_differentiable", False):
        backward, jvp = first_order(backward, name), no_jvp(name)
    elif "jvp" in function.__dict__:
        jvp = function.jvp
    else:
        raise TypeError(f"{name}: define a jvp staticmethod (forward-mode AD, rule R8 of handgrad.functional."
                        "function) or set once_differentiable = True until the Function follows rules R1-R8")
    if declared is not Autocast.AS_WRITTEN:
        backward = autocast_off(backward, declared)

    namespace = {"__doc__": function.__doc__, "__module__": function.__module__, "autocast": declared,
                 "forward": staticmethod(forward), "setup_context": staticmethod(setup_context),
                 "backward": staticmethod(backward), "jvp": staticmethod(jvp)}
    if "vmap" in function.__dict__:
        namespace["vmap"] = staticmethod(function.vmap)
    else:
        namespace["generate_vmap_rule"] = True
    twin = cast(type[Function], FunctionMeta(f"{name}Transformable", (Function,), namespace))
    traceable = cast(type[Function], FunctionMeta(f"{name}Traceable", (Function,),
                                                  {k: v for k, v in namespace.items() if k != "jvp"}))

    def forward_then_setup_context(ctx, *args):
        output = forward(*args)
        setup_context(ctx, args, output)
        return output

    fast_forward, fast_backward = forward_then_setup_context, backward
    if declared is Autocast.AS_WRITTEN:  # the fused ops: under autocast, torch.amp.custom_fwd / custom_bwd
        def fast_forward(ctx, *args):
            if not autocast_on_any_device() or not torch.is_autocast_enabled(args[0].device.type):
                return forward_then_setup_context(ctx, *args)
            ctx.autocast_device = device_type = args[0].device.type
            return torch.amp.custom_fwd(forward_then_setup_context, device_type=device_type)(ctx, *args)

        def fast_backward(ctx, *grads):
            device_type = getattr(ctx, "autocast_device", None)
            if device_type is None:
                return backward(ctx, *grads)
            return torch.amp.custom_bwd(backward, device_type=device_type)(ctx, *grads)

    # setattr, not assignment: mypy forbids assigning to a class's methods, which is the point here
    setattr(function, "forward", staticmethod(fast_forward))  # noqa: B010
    setattr(function, "setup_context", staticmethod(Function.setup_context))  # noqa: B010 (the combined path)
    setattr(function, "backward", staticmethod(fast_backward))  # noqa: B010
    for transform_only in ("jvp", "vmap"):  # on the twin only: dynamo refuses a Function with a jvp
        if transform_only in function.__dict__:
            delattr(function, transform_only)

    fast_apply = function.apply  # torch's C classmethod, bound to the fast class

    def call(*args):
        if is_dynamo_compiling():
            return with_casts(traceable.apply, declared, args)
        if transforms_active() or forward_ad._current_level >= 0:
            return with_casts(twin.apply, declared, args)
        if autocast_on_any_device():
            return with_casts(fast_apply, declared, args)
        return fast_apply(*args)

    call.__doc__ = f"{name}'s forward as torch.func, forward AD, dynamo or autocast need it (see twinned)."
    setattr(function, "apply", staticmethod(call))  # noqa: B010
    function.call = staticmethod(call)
    function.transformable, function.traceable, function.fast_apply = twin, traceable, fast_apply
    return function


def autocast_off(backward: Callable, declared: Autocast | dict[str, Autocast]) -> Callable:
    """``backward`` with autocast off should backward() be called inside an autocast region: a casting
    group's inputs were cast in front of the Function, so its saved tensors have the group's dtype."""
    def backward_as_written(ctx, *grads):
        if autocast_on_any_device():
            device_type = next((g.device.type for g in grads if g is not None), "cpu")
            group = autocast_group(declared, device_type)
            if torch.is_autocast_enabled(device_type) and group is not Autocast.AS_WRITTEN:
                return without_autocast(device_type, backward, ctx, *grads)
        return backward(ctx, *grads)
    return backward_as_written


# --------------------------------------------------------------------------- in place, when safe


def may_overwrite(grad: torch.Tensor | None = None) -> bool:
    """Whether a forward or backward may update its *own temporaries* in place (rule R3).

    False while grad mode is on (a backward under create_graph=True, or a torch.func grad level: autograd
    must keep every intermediate) and while a functorch transform is active (under vmap a temporary built
    from an unbatched tensor cannot take a batched value in place: "vmap: inplace arithmetic(self,
    *extra_args) is not possible"). An ordinary forward (torch runs it under no_grad) and an ordinary
    backward keep the in-place fast path. A backward passes its incoming gradient: torch's *legacy* vmap
    (autograd.functional.jacobian(vectorize=True), autograd.grad(is_grads_batched=True), gradcheck's
    batched checks) is no functorch transform, and only the gradient itself tells. ~0.1 us in all.
    """
    if torch.is_grad_enabled() or transforms_active():
        return False
    if is_dynamo_compiling():  # dynamo refuses is_legacy_batchedtensor ("marked as skipped")
        return True
    return grad is None or not is_legacy_batched(grad)


# --------------------------------------------------------------------------- zero_link


@twinned
class ZeroLink(TwinnedFunction):
    """out = result, linked to ``anchor`` with derivative exactly zero      result (*), anchor (**) -> out (*)

    d out / d result = I,   d out / d anchor = 0
    grad_result = grad_out,   grad_anchor = zeros (anchor's shape)
    jvp: t_out = t_result                (the anchor's tangent contributes nothing)

    What it is for (rule R4): a piecewise-linear op's gradient grad_x = L(grad_y) (leaky_relu's,
    max_pool2d's) is linear in grad_y and constant in x, so its derivative with respect to x is 0.
    torch's kernels still take x (leaky_relu_backward(grad, self, ...)), so under create_graph=True
    grad_x has a graph back to x even when grad_y has none, and differentiating it gives zeros, not
    "element 0 of tensors does not require grad". ``zero_link(grad_x, x)`` gives the same graph.
    forward returns a copy, not ``result`` itself: an input returned as-is becomes a view made inside a
    custom Function, which refuses later in-place updates (clip_grad_norm_ on such a .grad). Only ever
    called while differentiating twice, where a copy is cheap next to the graph.
    """

    autocast = Autocast.INPUT_DTYPE

    @staticmethod
    def forward(result, anchor):
        return result.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, anchor = inputs
        ctx.anchor_shape, ctx.anchor_dtype = anchor.shape, anchor.dtype  # metadata only (R6)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output, grad_output.new_zeros(ctx.anchor_shape, dtype=ctx.anchor_dtype)

    @staticmethod
    def jvp(ctx, t_result, t_anchor):
        return t_result.clone()


def zero_link(result: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """``result`` linked to ``anchor`` (a saved input or output of the node) with zero derivative, while a
    backward is being differentiated (grad mode on); ``result`` itself otherwise. See ZeroLink."""
    if torch.is_grad_enabled() and (anchor.requires_grad or transforms_active()):
        return ZeroLink.call(result, anchor)
    return result


# --------------------------------------------------------------------------- not yet twice differentiable


def first_order(backward: Callable, name: str) -> Callable:
    """``backward`` for a Function with ``once_differentiable = True``: as written wherever its result is a
    first derivative, an error naming the op wherever it would be differentiated again.

    First derivatives: an ordinary backward (grad mode off), and a backward under one torch.func level that
    differentiates (grad, vjp, jacrev, vmap(grad)), which runs with grad mode on. Refused: a backward under
    create_graph=True (the only reason to build its graph is a second derivative), and one under two
    differentiating torch.func levels (jacrev(grad(f)), hessian, grad(grad(f))).
    A node that raises only once reached (torch's once_differentiable) is not enough: autograd.grad(penalty,
    inputs) prunes every node that does not lead to ``inputs``, and a gradient computed from tensors saved
    without a graph (R1) leads nowhere, so the second derivative would silently lose its contribution.
    """
    message = (f"handgrad's {name} is differentiable once only: its backward is not yet written to be "
               "differentiated again (rules R1-R8 in handgrad.functional.function), so create_graph=True through "
               "it (a gradient penalty, gradgradcheck) and second derivatives by torch.func (hessian, "
               f"jacrev(jacrev)) are refused. Use the torch.nn.functional op there, or convert {name}")

    def backward_once(ctx, *grads):
        if torch.is_grad_enabled() and (not transforms_active() or differentiating_levels() > 1):
            raise RuntimeError(message)
        return backward(ctx, *grads)
    return backward_once


def differentiating_levels() -> int:
    """How many torch.func levels that differentiate (grad, vjp, jacrev: Grad; jvp, jacfwd: Jvp) are active."""
    kinds = (torch._C._functorch.TransformType.Grad, torch._C._functorch.TransformType.Jvp)
    return sum(level.key() in kinds for level in torch._C._functorch.get_interpreter_stack() or ())


def no_jvp(name: str) -> Callable:
    """The jvp of a Function with ``once_differentiable = True``: forward-mode AD is refused by name."""
    def jvp(ctx, *tangents):
        raise NotImplementedError(f"handgrad's {name} has no jvp yet: forward-mode AD through it (torch.func.jvp, "
                                  "jacfwd, hessian, forward_ad dual tensors) is refused. Use the torch.nn.functional "
                                  f"op there, or convert {name} (rules R1-R8 in handgrad.functional.function)")
    return jvp
