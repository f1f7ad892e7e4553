"""handgrad on PyTorch's own test samples: every OpInfo sample of each op's torch namesake and every
ModuleInfo input of each handgrad.nn class's torch namesake, run on both sides and compared.

An op sample runs ``op(sample.input, *sample.args, **sample.kwargs)`` on storage-exact copies for
handgrad and torch: the outputs, and the gradients of every floating tensor that requires grad for
one random upstream gradient, must agree (torch.testing.assert_close's defaults for the dtype). A module
input builds the torch module, loads its state_dict into the handgrad twin, and compares the output,
the input and parameter gradients, and the buffers after a call and after a second (no_grad) one.
Each ends in a status: match, refused (ValueError / TypeError / NotImplementedError), crash (any
other error), wrong (a difference), or torch_error (torch itself raised: not counted).
``run_transform`` runs a check of verify/transforms.py's kind on one float64 op sample.

The families list which samples are known to fail (verify/known.py, verify/cases/).
Needs ``expecttest`` (torch.testing._internal imports it; the test extra installs it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from torch.func import grad, jvp, vmap

import handgrad.functional as HF
from handgrad.verify import cases
from handgrad.verify.known import Outcome

DTYPES = (torch.float64, torch.float32)
REFUSALS = (ValueError, TypeError, NotImplementedError)
RANDOM_OPS = {"dropout": "different", "dropout1d": "different", "dropout2d": "different", "dropout3d": "different",
              **cases.RANDOM_OPS}  # op -> torch.vmap randomness; both sides draw under the same seed


@dataclass
class OpSample:
    op: str  # the handgrad op
    info: Any  # its OpInfo
    dtype: torch.dtype
    sample: Any  # a SampleInput


# --------------------------------------------------------------------------- torch's samples


@cache
def databases() -> tuple[list, list]:
    """(op_db, module_db). Importing them takes ~5 s and freezes torch.backends' flags, which this thaws."""
    from torch.testing._internal.common_methods_invocations import op_db
    from torch.testing._internal.common_modules import module_db
    thaw_backend_flags()
    return op_db, module_db


def thaw_backend_flags() -> None:
    """Undo torch.testing._internal's torch.backends.disable_global_flags(), after which setting a flag such as
    torch.backends.cudnn.deterministic (as Trainer(deterministic=True) does) raises."""
    torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True


def opinfo(full_name: str):
    """The OpInfo named ``full_name``: its name, and ".variant" for a variant ("softmax.with_dtype"); for an op
    torch has none for, the stand-in ``stand_in_opinfo`` makes."""
    found = next((op for op in databases()[0] if full_name_of(op) == full_name), None)
    return found if found is not None else stand_in_opinfo(full_name)


@cache
def stand_in_opinfo(full_name: str):
    """nn.functional.dropout1d's OpInfo, which torch lacks: made as torch makes its dropout2d and dropout3d
    entries (sample_inputs_dropout with the op's valid input dims, the op under wrapper_set_seed)."""
    if full_name != "nn.functional.dropout1d":
        raise KeyError(f"no OpInfo named {full_name!r}")
    from functools import partial

    from torch.testing._internal.common_methods_invocations import (
        OpInfo,
        floating_types_and,
        sample_inputs_dropout,
        wrapper_set_seed,
    )
    return OpInfo("nn.functional.dropout1d",
                  op=lambda input, *args, **kwargs: wrapper_set_seed(torch.nn.functional.dropout1d, input, *args,
                                                                     **kwargs),
                  dtypes=floating_types_and(torch.float16, torch.bfloat16), supports_out=False,
                  supports_forward_ad=True, supports_fwgrad_bwgrad=True,
                  sample_inputs_func=partial(sample_inputs_dropout, valid_input_dim=(2, 3)))


def full_name_of(info) -> str:
    return info.name + (f".{info.variant_test_name}" if info.variant_test_name else "")


def op_samples(op: str, opinfo_names: tuple[str, ...], dtypes=DTYPES) -> Iterator[OpSample]:
    """Every sample_inputs and reference_inputs sample (the latter adds extremal values, NaN included, for
    sigmoid, tanh and relu) of each OpInfo, in each dtype it supports on CPU."""
    for full_name in opinfo_names:
        info = opinfo(full_name)
        for dtype in dtypes:
            if dtype not in info.supported_dtypes("cpu"):
                continue
            samples = list(info.sample_inputs("cpu", dtype, requires_grad=True))
            if info.reference_inputs_func is not None:
                seen = {s.summary() for s in samples}
                samples += [s for s in info.reference_inputs("cpu", dtype, requires_grad=True)
                            if s.summary() not in seen]
            for sample in samples:
                yield OpSample(op, info, dtype, sample)


# --------------------------------------------------------------------------- running one op sample


def copy_of(obj):
    """A storage-exact copy of a sample's structure (sizes, strides, offset kept); leaves stay leaves."""
    if isinstance(obj, torch.Tensor):
        with torch.no_grad():
            out = torch.empty(0, dtype=obj.dtype).set_(obj.detach().untyped_storage().clone(), obj.storage_offset(),
                                                       obj.size(), obj.stride())
        return out.requires_grad_(obj.requires_grad)
    if isinstance(obj, (list, tuple)):
        return type(obj)(copy_of(o) for o in obj)
    if isinstance(obj, dict):
        return {k: copy_of(v) for k, v in obj.items()}
    return obj


def tensors_in(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in tensors_in(o)]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensors_in(v)]
    return []


def leaves(obj) -> list[torch.Tensor]:
    return [t for t in tensors_in(obj) if t.requires_grad and t.is_floating_point()]


def with_seed(fn: Callable, random: bool) -> Callable:
    """``fn`` under a fixed seed (both sides of a random op draw the same numbers), the caller's RNG kept."""
    def run(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(42)
            return fn(*args, **kwargs)
    return run if random else fn


def gradients(outputs: list, wrt: list[torch.Tensor]) -> list:
    """d sum(output * upstream) / d wrt, upstream the same seeded randn on both sides (None where unused)."""
    differentiable = [o for o in outputs if isinstance(o, torch.Tensor) and o.requires_grad]
    if not differentiable or not wrt:
        return [None] * len(wrt)
    g = torch.Generator().manual_seed(0)
    upstream = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in differentiable]
    return list(torch.autograd.grad(differentiable, wrt, upstream, allow_unused=True))


def flat(output) -> list:
    return [t for o in output for t in flat(o)] if isinstance(output, (list, tuple)) else [output]


def assert_same(what: str, actual, expected, **tolerance) -> None:
    if actual is None or expected is None:
        assert actual is None and expected is None, f"{what}: handgrad's is {actual}, torch's {expected}"
        return
    torch.testing.assert_close(actual, expected, equal_nan=True, msg=lambda m: f"{what}: {m.splitlines()[0]}",
                               **tolerance)


def assert_all_same(what: str, actual: list, expected: list, **tolerance) -> None:
    assert len(actual) == len(expected), f"{len(actual)} {what}s, torch {len(expected)}"
    for i, (ours, theirs) in enumerate(zip(actual, expected, strict=True)):
        assert_same(f"{what} {i}", ours, theirs, **tolerance)


def common_tolerance(info, dtype: torch.dtype) -> dict:
    """The tolerance torch's own TestCommon uses for this op and dtype (a class-wide toleranceOverride among the
    OpInfo's decorators, as scaled_dot_product_attention's float32 atol 5e-5 / rtol 5e-6), else none."""
    for decorate in info.decorators:
        if (getattr(decorate, "cls_name", None) == "TestCommon" and decorate.test_name is None
                and decorate.device_type in (None, "cpu")):
            for decorator in decorate.decorators:
                override = getattr(decorator, "d", {}).get(dtype)
                if override is not None:
                    return dict(atol=override.atol, rtol=override.rtol)
    return {}


def outcome_of(run: Callable[[], None], sample: str) -> Outcome:
    """Run one comparison; its outcome (assertion -> wrong, refusal -> refused, other error -> crash)."""
    try:
        run()
    except TorchError as e:
        return Outcome("torch_error", str(e), sample)
    except AssertionError as e:
        return Outcome("wrong", str(e).splitlines()[0][:300], sample)
    except REFUSALS as e:
        return Outcome("refused", f"{type(e).__name__}: {str(e)[:300]}", sample)
    except Exception as e:  # noqa: BLE001 (any other error is a crash, recorded with its message)
        return Outcome("crash", f"{type(e).__name__}: {str(e)[:300]}", sample)
    return Outcome("match", "", sample)


class TorchError(Exception):
    """torch's side raised: the sample is not one torch accepts."""


def handgrad_op(op: str) -> Callable:
    """handgrad's op, called as its OpInfo calls torch's (a family's SAMPLE_CALLS, where the order differs)."""
    return cases.SAMPLE_CALLS.get(op, getattr(HF, op))


def reference_op(case: OpSample) -> Callable:
    """What a sample is compared with: torch's op, or what the family's SAMPLE_REFERENCES gives for it."""
    choose = cases.SAMPLE_REFERENCES.get(case.op)
    return (choose(case.sample) if choose else None) or case.info.op


def run_op_sample(case: OpSample) -> Outcome:
    s, random = case.sample, case.op in RANDOM_OPS
    hand, reference = with_seed(handgrad_op(case.op), random), with_seed(reference_op(case), random)

    def side(fn):
        inputs = copy_of((s.input, s.args, s.kwargs))
        outputs = flat(s.output_process_fn_grad(fn(inputs[0], *inputs[1], **inputs[2])))
        return outputs, gradients(outputs, leaves(inputs))

    def run():
        try:
            expected = side(reference)
        except Exception as e:  # noqa: BLE001
            raise TorchError(f"{type(e).__name__}: {e}") from e
        actual = side(hand)
        tolerance = common_tolerance(case.info, case.dtype)
        assert_all_same("output", actual[0], expected[0], **tolerance)
        assert_all_same("gradient", actual[1], expected[1], **tolerance)
    return outcome_of(run, f"{str(case.dtype)[6:]} {s.summary()}")


def op_error_inputs(op: str, opinfo_names: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
    """(op, ErrorInput) for every input torch's OpInfo says the op rejects."""
    for full_name in opinfo_names:
        info = opinfo(full_name)
        if info.error_inputs_func is not None:
            for error_input in info.error_inputs("cpu"):
                yield op, error_input


def rejects(call: Callable[[], object]) -> bool:
    """Whether ``call`` raises (any exception: handgrad's own class and message may differ from torch's)."""
    try:
        call()
    except Exception:  # noqa: BLE001
        return True
    return False


# --------------------------------------------------------------------------- transforms on an op sample


def run_transform(check: str, case: OpSample) -> Outcome:
    """gradgradcheck, vmap_grad (per-sample gradients over [input, input / 2 + 1/4]) or jvp on one sample."""
    s = case.sample
    args = (s.input, *s.args)
    positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad
                 and a.is_floating_point()]

    def function(fn):
        def f(*tensors):
            full = list(args)
            for i, t in zip(positions, tensors, strict=True):
                full[i] = t
            return flat(s.output_process_fn_grad(fn(*full, **s.kwargs)))[0]
        return with_seed(f, case.op in RANDOM_OPS)

    hand, reference = function(handgrad_op(case.op)), function(reference_op(case))
    primals = [args[i].detach() for i in positions]
    generator = torch.Generator().manual_seed(1)
    tangents = tuple(torch.randn(p.shape, dtype=p.dtype, generator=generator) for p in primals)

    def per_sample(fn):  # vmap_grad: the first argument batched, the others shared
        def loss(*tensors):
            output = fn(*tensors)
            return (output * torch.linspace(-1, 1, output.numel(), dtype=output.dtype).view(output.shape)).sum()
        batch = torch.stack([primals[0], primals[0] / 2 + 0.25])
        in_dims = (0, *[None] * (len(primals) - 1))
        randomness = RANDOM_OPS.get(case.op, "error")
        return vmap(grad(loss, tuple(range(len(primals)))), in_dims, randomness=randomness)(batch, *primals[1:])

    def forward_mode(fn):
        return jvp(fn, tuple(primals), tangents)

    def run():
        if check == "gradgradcheck":
            # above SMALL elements (an op none of whose samples is smaller), torch's fast mode: a random
            # projection of the Jacobians, whose cost grows linearly, not with the square of the size
            large = sum(p.numel() for p in primals) > SMALL
            assert torch.autograd.gradgradcheck(hand, [p.clone().requires_grad_() for p in primals], fast_mode=large)
            return
        transform = forward_mode if check == "jvp" else per_sample
        try:
            expected = transform(reference)
        except Exception as e:  # noqa: BLE001
            raise TorchError(f"{type(e).__name__}: {e}") from e
        assert_same(check, transform(hand), expected)
    if not positions:
        return Outcome("torch_error", "no floating input requires grad", s.summary())
    return outcome_of(run, s.summary())


SMALL = 300  # elements of a sample the transform checks take by preference (transform_samples)


def transform_samples(op: str, opinfo_names: tuple[str, ...], limit: int, max_elements: int = SMALL) -> list[OpSample]:
    """The first ``limit`` float64 samples of ``op`` whose input requires grad and whose differentiable
    tensors hold at most ``max_elements`` numbers together (gradgradcheck's cost grows with their square;
    a family's TRANSFORM_MAX_ELEMENTS raises it for an op whose smallest samples are larger); for an op with no
    sample that small (dropout3d's are 5**4 elements and more), its smallest ones."""
    max_elements = cases.TRANSFORM_MAX_ELEMENTS.get(op, max_elements)
    def size(sample) -> int:
        return sum(t.numel() for t in leaves((sample.input, sample.args, sample.kwargs)))
    candidates = [c for c in op_samples(op, opinfo_names, (torch.float64,))
                  if isinstance(c.sample.input, torch.Tensor) and c.sample.input.requires_grad]
    small = [c for c in candidates if size(c.sample) <= max_elements][:limit]
    return small or sorted(candidates, key=lambda c: size(c.sample))[:limit]
