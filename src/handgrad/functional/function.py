"""How handgrad's Functions are handed to torch: cheaply.

Every op is written in the style the "Extending PyTorch" notes recommend (forward
computes, setup_context saves, backward differentiates) and decorated with
``combined_forward``, which removes a per-call cost torch adds to that style.
"""

from __future__ import annotations

from torch.autograd import Function


def combined_forward(function: type[Function]) -> type[Function]:
    """Class decorator: torch calls the Function's ``forward`` and ``setup_context`` as one
    combined ``forward(ctx, *args)``, which it can call without binding the arguments first.

    Why: for a Function that defines ``setup_context``, every ``apply`` first runs
    ``inspect.signature(forward).bind(*args).apply_defaults()`` (torch/autograd/function.py,
    ``_bind_default_args``) to fill in defaults that our wrappers always pass. That costs
    20-25 us a call on a 2-core CPU, more than the arithmetic of a 784-30-10 layer at batch 10
    (``scripts/benchmark.py --breakdown`` times it).
    What: the class keeps forward (compute) and setup_context (store) as written; torch is
    handed ``output = forward(*args); setup_context(ctx, args, output)``, the "combined
    forward" the Extending PyTorch notes also allow. Lost: torch.func transforms (vmap,
    grad), which need a separate setup_context; handgrad uses none.
    """
    forward, setup_context = function.forward, function.setup_context

    def forward_then_setup_context(ctx, *args):
        output = forward(*args)
        setup_context(ctx, args, output)
        return output

    function.forward = staticmethod(forward_then_setup_context)
    function.setup_context = staticmethod(Function.setup_context)  # the placeholder: torch takes the combined path
    return function
