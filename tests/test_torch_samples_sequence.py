"""PyTorch's own samples for the sequence ops, run on handgrad: OpInfo (common_methods_invocations.op_db) for
nn.functional.embedding, nn.functional.gelu and nn.functional.scaled_dot_product_attention, ModuleInfo
(common_modules.module_db) for nn.Embedding and nn.GELU, and their error inputs.

Every sample, as torch builds it and again non-contiguous (``SampleInput.noncontiguous()``), in float32 and
float64: the output, the weight after the call (max_norm renormalises it in place), and the gradient of every
tensor that requires grad from one random upstream gradient equal torch's (assert_close's defaults). Attention
in float32 is held to accuracy instead: torch's samples hold values up to 9, scores up to ~200, where float32
rounding moves a gradient by ~1e-5 in any kernel (torch's own kernels differ by that much between a sample and
its non-contiguous copy), so each of handgrad's values must be within torch's float32 tolerance for this op
(atol 5e-5, relative to max(|value|, 1)) of the float64 result. The attention samples with dropout_p > 0 are
compared with the composed math dropping the weights handgrad drops (its masks differ from torch's kernel's by
design: handgrad.functional.attention). Torch's error inputs raise in handgrad too.
"""

from __future__ import annotations

import collections

import pytest
import torch
from torch.testing._internal.common_methods_invocations import op_db
from torch.testing._internal.common_modules import module_db
from torch.testing._utils import wrapper_set_seed

import handgrad.functional as F
import handgrad.nn as hnn
from handgrad.verify.cases.sequence import attention_dropout_reference

OPS = {  # OpInfo name -> handgrad's op, called as torch's OpInfo calls its own
    "nn.functional.embedding": lambda weight, indices, **kwargs: F.embedding(indices, weight, **kwargs),
    "nn.functional.gelu": F.gelu,
    "nn.functional.scaled_dot_product_attention": F.scaled_dot_product_attention,
}
MODULES = {"nn.Embedding": hnn.Embedding, "nn.GELU": hnn.GELU}
ATTENTION = "nn.functional.scaled_dot_product_attention"
DTYPES = [torch.float32, torch.float64]


def op_info(name: str):
    return next(op for op in op_db if op.name == name and not op.variant_test_name)


def copy_tensors(obj):
    """A copy of a sample's structure: each tensor a view of a copy of its storage with the same sizes, strides
    (0 for an expanded one) and offset; leaves that required grad stay leaves that require grad."""
    if isinstance(obj, torch.Tensor):
        copy = torch.empty(0, dtype=obj.dtype)
        copy.set_(obj.detach().untyped_storage().clone(), obj.storage_offset(), obj.size(), obj.stride())
        return copy.requires_grad_(obj.requires_grad)
    if isinstance(obj, (list, tuple)):
        return type(obj)(copy_tensors(o) for o in obj)
    if isinstance(obj, dict):
        return {k: copy_tensors(v) for k, v in obj.items()}
    return obj


def as_float64(obj):
    """The sample's tensors in float64 (floating ones only), leaves that required grad kept so."""
    if isinstance(obj, torch.Tensor) and obj.is_floating_point():
        return obj.detach().double().requires_grad_(obj.requires_grad)
    if isinstance(obj, (list, tuple)):
        return type(obj)(as_float64(o) for o in obj)
    if isinstance(obj, dict):
        return {k: as_float64(v) for k, v in obj.items()}
    return obj


def run(fn, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """[output, the weight-like first argument after the call, grads of every tensor that required grad]."""
    args, kwargs = copy_tensors(args), copy_tensors(kwargs)
    leaves = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.requires_grad]
    output = wrapper_set_seed(fn, *args, **kwargs)
    grads = []
    if leaves and output.requires_grad:
        upstream = torch.randn(output.shape, generator=torch.Generator().manual_seed(1))  # the same in each dtype
        grads = list(torch.autograd.grad(output, leaves, upstream.to(output.dtype), allow_unused=True))
    return [output.detach(), args[0].detach(), *grads]


def error(values: torch.Tensor, truth: torch.Tensor) -> float:
    return float(((values.double() - truth).abs() / (truth.abs() + 1)).max())


def compare_sample(name: str, sample, dtype) -> tuple[str, float, float]:
    """(outcome, handgrad's and torch's largest error from the float64 result: attention in float32 only)."""
    args, kwargs = (sample.input, *sample.args), dict(sample.kwargs)
    reference, outcome = op_info(name).op, "matched torch"
    if kwargs.get("dropout_p", 0) > 0:
        reference, outcome = (lambda *a, **k: attention_dropout_reference(*a, **k)), "matched the composed math"
    hand, expected = run(OPS[name], args, kwargs), run(reference, args, kwargs)
    assert len(hand) == len(expected)
    if name == ATTENTION and dtype == torch.float32:
        truth = run(reference, as_float64(args), as_float64(kwargs))
        ours, theirs = (max(error(t, exact) for t, exact in zip(ts, truth, strict=True)) for ts in (hand, expected))
        assert ours <= 5e-5, (sample.summary(), ours, theirs)
        return outcome, ours, theirs
    for i, (ours, theirs) in enumerate(zip(hand, expected, strict=True)):
        torch.testing.assert_close(ours, theirs, equal_nan=True, msg=lambda m, i=i: f"tensor {i}: {m}")
    return outcome, 0.0, 0.0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", OPS)
def test_every_opinfo_sample_matches(name, dtype):
    info = op_info(name)
    counts: collections.Counter = collections.Counter()
    errors = []
    for requires_grad in (True, False):  # embedding's padding / max_norm / frequency samples come without grad
        for sample in list(info.sample_inputs("cpu", dtype, requires_grad=requires_grad)):
            for variant in (sample, sample.noncontiguous()):
                outcome, ours, theirs = compare_sample(name, variant, dtype)
                counts[outcome] += 1
                errors.append((ours, theirs))
    assert counts["matched torch"] > 0, counts
    ours, theirs = max(e for e, _ in errors), max(e for _, e in errors)
    print(name, dtype, dict(counts), f"largest error from float64: handgrad {ours:.1e}, torch {theirs:.1e}")


@pytest.mark.parametrize("name", ["nn.functional.embedding", "nn.functional.gelu"])  # attention has none
def test_torchs_error_inputs_raise(name):
    errors = list(op_info(name).error_inputs("cpu"))
    assert errors
    for error in errors:
        sample = error.sample_input
        with pytest.raises((error.error_type, ValueError, TypeError)):
            OPS[name](sample.input, *sample.args, **sample.kwargs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", MODULES)
def test_every_moduleinfo_sample_matches(name, dtype):
    info = next(mi for mi in module_db if mi.name == name)
    for training in (True, False):
        inputs = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True, training=training)
        for module_input in inputs:
            construct, forward = module_input.constructor_input, module_input.forward_input
            theirs = info.module_cls(*construct.args, **construct.kwargs).to(dtype).train(training)
            ours = MODULES[name](*construct.args, **construct.kwargs).to(dtype).train(training)
            ours.load_state_dict(theirs.state_dict())
            results = [run(lambda *a, m=m, **k: m(*a, **k), forward.args, forward.kwargs) for m in (ours, theirs)]
            for ours_tensor, theirs_tensor in zip(*results, strict=True):  # output, input, input's grad if any
                torch.testing.assert_close(ours_tensor, theirs_tensor)
            upstream = torch.randn(results[0][0].shape, dtype=dtype)
            for module in (ours, theirs):
                module(*copy_tensors(forward.args)).backward(upstream)
            for (key, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
                torch.testing.assert_close(p.grad, q.grad, msg=lambda m, key=key: f"{name}.{key}: {m}")

