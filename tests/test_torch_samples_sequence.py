"""PyTorch's OpInfo samples for the sequence ops, beyond tests/test_torch_samples.py (which runs each op's samples
that require grad, with torch's own TestCommon tolerance, and the ModuleInfo inputs of nn.Embedding and nn.GELU):

- the samples torch builds *without* grad as well: embedding's padding_idx, max_norm (the weight after the call is
  compared too: renormalised in place) and scale_grad_by_freq samples exist only there;
- every sample again non-contiguous (``SampleInput.noncontiguous()``);
- attention in float32 held to accuracy rather than to agreement: torch's samples hold values up to 9 and scores up
  to ~200, where float32 rounding moves a value by ~1e-5 in any kernel (torch's own kernels differ by that much
  between a sample and its non-contiguous copy); so each of handgrad's values must lie within torch's TestCommon
  tolerance for this op (atol 5e-5, relative to max(|value|, 1)) of the float64 result. Its samples with
  dropout_p > 0 are compared with the composed math dropping the weights handgrad drops (verify/cases/sequence.py).
"""

from __future__ import annotations

import collections

import pytest
import torch
from torch.testing._utils import wrapper_set_seed

from handgrad.verify import samples
from handgrad.verify.cases.sequence import attention_dropout_reference

OPS = ("embedding", "gelu", "scaled_dot_product_attention")
DTYPES = [torch.float32, torch.float64]


def as_float64(obj):
    """The sample's floating tensors in float64, leaves that required grad kept so."""
    if isinstance(obj, torch.Tensor) and obj.is_floating_point():
        return obj.detach().double().requires_grad_(obj.requires_grad)
    if isinstance(obj, (list, tuple)):
        return type(obj)(as_float64(o) for o in obj)
    if isinstance(obj, dict):
        return {k: as_float64(v) for k, v in obj.items()}
    return obj


def run(fn, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """[output, the first argument after the call (a weight max_norm renormalises), grads of the leaves]."""
    args, kwargs = samples.copy_of(args), samples.copy_of(kwargs)
    leaves = samples.leaves((args, kwargs))
    output = wrapper_set_seed(fn, *args, **kwargs)
    grads = samples.gradients([output], leaves) if leaves and output.requires_grad else []
    return [output.detach(), args[0].detach(), *grads]


def error(values: torch.Tensor, truth: torch.Tensor) -> float:
    return float(((values.double() - truth).abs() / (truth.abs() + 1)).max())


def compare_sample(op: str, info, sample, dtype) -> tuple[str, float, float]:
    """(what it matched, handgrad's and the reference's largest error from float64: attention in float32 only)."""
    args, kwargs = (sample.input, *sample.args), dict(sample.kwargs)
    dropout = kwargs.get("dropout_p", 0) > 0
    reference = attention_dropout_reference if dropout else info.op
    hand, expected = run(samples.handgrad_op(op), args, kwargs), run(reference, args, kwargs)
    outcome = "matched the composed math" if dropout else "matched torch"
    assert len(hand) == len(expected)
    if op == "scaled_dot_product_attention" and dtype == torch.float32:
        truth = run(reference, as_float64(args), as_float64(kwargs))
        ours, theirs = (max(error(t, exact) for t, exact in zip(ts, truth, strict=True)) for ts in (hand, expected))
        assert ours <= 5e-5, (sample.summary(), ours, theirs)
        return outcome, ours, theirs
    for i, (ours, theirs) in enumerate(zip(hand, expected, strict=True)):
        torch.testing.assert_close(ours, theirs, equal_nan=True, msg=lambda m, i=i: f"tensor {i}: {m}")
    return outcome, 0.0, 0.0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_every_opinfo_sample_matches(op, dtype):
    info = samples.opinfo(f"nn.functional.{op}")
    counts: collections.Counter = collections.Counter()
    errors = []
    for requires_grad in (True, False):
        for sample in list(info.sample_inputs("cpu", dtype, requires_grad=requires_grad)):
            for variant in (sample, sample.noncontiguous()):
                outcome, ours, theirs = compare_sample(op, info, variant, dtype)
                counts[outcome] += 1
                errors.append((ours, theirs))
    assert counts["matched torch"] > 0, counts
    ours, theirs = max(e for e, _ in errors), max(e for _, e in errors)
    print(op, dtype, dict(counts), f"largest error from float64: handgrad {ours:.1e}, reference {theirs:.1e}")
