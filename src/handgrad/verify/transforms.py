"""The higher-order proof: each row of the table (an ``OpCase``) against its torch reference, in float64,
under double backward and every torch.func transform.

    gradgradcheck   torch.autograd.gradgradcheck: the backward's own backward against finite differences
    penalty         a gradient penalty P = sum_i |d s / d x_i|^2 (create_graph=True), s = sum(w * op(x)),
                    and dP / d x_i for every input: equal to torch's, P with a graph where torch's has one
    vmap_grad       per-sample gradients, torch.func.vmap(torch.func.grad(s)) over a batch of samples
                    (the inputs named in ``OpCase.per_sample``; parameters shared): equal to torch's
    jvp             torch.func.jvp with a random tangent for every input: output and tangent equal torch's
    jacrev, jacfwd  the Jacobian with respect to every input, by reverse and by forward mode
    hessian         the Hessian of s, forward over reverse mode (torch.func.hessian's jacfwd(jacrev))

Each check raises AssertionError (or the op's own error) on a difference, and returns None otherwise.
A row lists in ``OpCase.opt_out`` the checks it is known to fail, each with its reason; ``first_order``
gives the entries of a Function that is still ``once_differentiable``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import grad, jacfwd, jacrev, jvp, vmap
from torch.testing import assert_close

from handgrad.verify.compare import OpCase

DTYPE = torch.float64
SAMPLES = 3  # the batch of the per-sample check


FIRST_ORDER = "first order only"  # the tag of first_order's reasons


def first_order(function: str, **more: str) -> dict[str, str]:
    """The opt-outs of a row whose Function is still ``once_differentiable`` (its backward refuses to be
    differentiated, it has no jvp), plus ``more``: check -> reason ("tag: detail")."""
    refused = f"{FIRST_ORDER}: {function} is once_differentiable (not yet written to rules R1-R8)"
    no_jvp = f"{FIRST_ORDER}: {function} has no jvp yet"
    return {"gradgradcheck": refused, "penalty": refused, "jvp": no_jvp, "jacfwd": no_jvp, "hessian": no_jvp, **more}


def positional(fn: Callable, inputs: dict, kwargs: dict) -> tuple[Callable, list[torch.Tensor]]:
    """``fn`` as a function of the inputs that require grad, in order (the others fixed), and their values."""
    names = [n for n, v in inputs.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    fixed = {n: v for n, v in inputs.items() if n not in names}

    def f(*tensors):
        return fn(**dict(zip(names, tensors, strict=True)), **fixed, **kwargs)

    return f, [inputs[n].detach() for n in names]


def weights_like(output: torch.Tensor) -> torch.Tensor:
    """Fixed random weights, so that s = sum(w * output) has no symmetry to hide an error behind."""
    return torch.randn(output.shape, dtype=output.dtype, generator=torch.Generator().manual_seed(7))


def scalarised(f: Callable, w: torch.Tensor) -> Callable:
    return lambda *tensors: (f(*tensors) * w).sum()


# --------------------------------------------------------------------------- the checks


def gradgradcheck(case: OpCase) -> None:
    f, primals = positional(case.hand, case.inputs(DTYPE), case.kwargs)
    assert torch.autograd.gradgradcheck(f, [p.requires_grad_() for p in primals])


def penalty(case: OpCase) -> None:
    def run(fn):
        f, primals = positional(fn, case.inputs(DTYPE), case.kwargs)
        xs = [p.requires_grad_() for p in primals]
        output = f(*xs)
        grads = torch.autograd.grad((output * weights_like(output)).sum(), xs, create_graph=True, allow_unused=True)
        value = sum((g * g).sum() for g in grads if g is not None)
        if not isinstance(value, torch.Tensor) or not value.requires_grad:  # no graph back to any input
            return False, value, [torch.zeros_like(x) for x in xs]
        return True, value, torch.autograd.grad(value, xs, allow_unused=True, materialize_grads=True)
    (has_graph, *hand), (torch_has_graph, *reference) = run(case.hand), run(case.reference)
    assert has_graph == torch_has_graph, f"the penalty has a graph: {has_graph}, torch's: {torch_has_graph} (R4)"
    assert_close(hand, reference)


def per_sample_grads(case: OpCase) -> None:
    samples = [case.inputs(DTYPE, seed) for seed in range(SAMPLES)]
    tensors = [{n: v.detach() for n, v in sample.items() if isinstance(v, torch.Tensor)} for sample in samples]
    names = list(tensors[0])
    argnums = tuple(i for i, n in enumerate(names) if tensors[0][n].is_floating_point()
                    and samples[0][n].requires_grad)  # type: ignore[attr-defined]
    fixed = {n: v for n, v in samples[0].items() if n not in names}
    args = [torch.stack([t[n] for t in tensors]) if n in case.per_sample else tensors[0][n] for n in names]
    in_dims = tuple(0 if n in case.per_sample else None for n in names)
    w = weights_like(case.reference(**samples[0], **case.kwargs))

    def loss(fn):
        return lambda *args: (fn(**dict(zip(names, args, strict=True)), **fixed, **case.kwargs) * w).sum()
    assert_close(vmap(grad(loss(case.hand), argnums), in_dims, randomness=case.randomness)(*args),
                 vmap(grad(loss(case.reference), argnums), in_dims, randomness=case.randomness)(*args))


def forward_mode(case: OpCase) -> None:
    inputs = case.inputs(DTYPE)
    generator = torch.Generator().manual_seed(3)
    hand, primals = positional(case.hand, inputs, case.kwargs)
    reference, _ = positional(case.reference, inputs, case.kwargs)
    tangents = tuple(torch.randn(p.shape, dtype=p.dtype, generator=generator) for p in primals)
    assert_close(jvp(hand, tuple(primals), tangents), jvp(reference, tuple(primals), tangents))


def jacobians(transform: Callable) -> Callable[[OpCase], None]:
    def check(case: OpCase) -> None:
        inputs = case.inputs(DTYPE)
        hand, primals = positional(case.hand, inputs, case.kwargs)
        reference, _ = positional(case.reference, inputs, case.kwargs)
        argnums = tuple(range(len(primals)))
        assert_close(transform(hand, argnums)(*primals), transform(reference, argnums)(*primals))
    return check


def forward_jacobian(f: Callable, argnums: tuple[int, ...]) -> Callable:
    """jacfwd, every column with the same random numbers (dropout's mask: one Jacobian of one draw)."""
    return jacfwd(f, argnums, randomness="same")


def second_derivatives(case: OpCase) -> None:
    inputs = case.inputs(DTYPE)
    hand, primals = positional(case.hand, inputs, case.kwargs)
    reference, _ = positional(case.reference_second or case.reference, inputs, case.kwargs)
    w = weights_like(reference(*primals))
    argnums = tuple(range(len(primals)))
    def hessian(f):  # torch.func.hessian's forward over reverse mode, with forward_jacobian's randomness
        return forward_jacobian(jacrev(scalarised(f, w), argnums), argnums)(*primals)
    assert_close(hessian(hand), hessian(reference))


CHECKS: dict[str, Callable[[OpCase], None]] = {
    "gradgradcheck": gradgradcheck,
    "penalty": penalty,
    "vmap_grad": per_sample_grads,
    "jvp": forward_mode,
    "jacrev": jacobians(jacrev),
    "jacfwd": jacobians(forward_jacobian),
    "hessian": second_derivatives,
}
