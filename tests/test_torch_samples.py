"""handgrad on PyTorch's own test samples (handgrad.verify.samples, module_samples).

- every OpInfo sample (and reference input) of each op's torch namesake, float64 and float32: the output
  and the gradient of every floating input that requires grad, equal to torch's;
- every ModuleInfo input of each handgrad.nn class's torch namesake, float64 and float32, train and eval:
  output, input and parameter gradients, and the buffers after a call and after a second one;
- gradgradcheck, per-sample gradients (vmap of grad) and jvp on the first three float64 samples of each op;
- every input torch's error_inputs say an op or module rejects is rejected by handgrad too.

A sample may fail only as a family's KNOWN_FAILURES entry says (verify/cases/), with its reason and the
exact number of samples: a fix that makes some pass fails the test until the entry's count is lowered or
the entry deleted, so the list cannot go stale.
"""

from __future__ import annotations

import pytest
import torch

import handgrad.functional as HF
import handgrad.nn as HN
from handgrad.verify import module_samples, samples
from handgrad.verify.cases import KNOWN_FAILURES, TORCH_MODULES, TORCH_OPS, WITHOUT_OPINFO
from handgrad.verify.known import KnownFailure, Outcome, unexplained

TRANSFORM_CHECKS = ("gradgradcheck", "vmap_grad", "jvp")
TRANSFORM_SAMPLES = 3  # per op: the first float64 samples with an input that requires grad


@pytest.fixture(autouse=True)
def one_thread_and_torch_flags():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the samples are tiny: a second thread only adds contention
    yield
    torch.set_num_threads(threads)
    samples.thaw_backend_flags()


def assert_explained(target: str, check: str, outcomes: list[Outcome]) -> None:
    assert any(o.status != "torch_error" for o in outcomes), f"{target}: no sample ran ({check})"
    problems = unexplained(target, check, outcomes, KNOWN_FAILURES)
    assert not problems, f"{target} ({check}), {len(problems)} problems:\n" + "\n".join(problems)


@pytest.mark.parametrize("op", list(TORCH_OPS))
def test_op_samples_match_torch(op):
    assert_explained(op, "samples", [samples.run_op_sample(c) for c in samples.op_samples(op, TORCH_OPS[op])])


@pytest.mark.parametrize("name", TORCH_MODULES)
def test_module_inputs_match_torch(name):
    outcomes = [module_samples.run_module_sample(c) for c in module_samples.module_samples(name)]
    assert_explained(name, "samples", outcomes)


@pytest.mark.parametrize("check", TRANSFORM_CHECKS)
@pytest.mark.parametrize("op", list(TORCH_OPS))
def test_transforms_on_op_samples_match_torch(op, check):
    cases = samples.transform_samples(op, TORCH_OPS[op], TRANSFORM_SAMPLES)
    assert_explained(op, check, [samples.run_transform(check, c) for c in cases])


@pytest.mark.parametrize("op", list(TORCH_OPS))
def test_op_rejects_what_torch_rejects(op):
    """Any exception will do: handgrad's own class and message may differ from torch's (they name the fix)."""
    fn = getattr(HF, op)
    accepted = [e.sample_input.summary() for _, e in samples.op_error_inputs(op, TORCH_OPS[op])
                if not samples.rejects(lambda e=e: fn(samples.copy_of(e.sample_input.input),
                                                      *samples.copy_of(e.sample_input.args),
                                                      **samples.copy_of(e.sample_input.kwargs)))]
    assert not accepted, accepted


@pytest.mark.parametrize("name", TORCH_MODULES)
def test_module_rejects_what_torch_rejects(name):
    accepted = [str(e.module_error_input.constructor_input.kwargs) for _, e in module_samples.module_error_inputs(name)
                if not samples.rejects(lambda e=e: module_samples.call_error_input(name, e))]
    assert not accepted, accepted


# --------------------------------------------------------------------------- the bookkeeping itself


def test_every_op_and_module_with_a_torch_namesake_is_run():
    handgrad_only = {"linear_activation", "mlp", "mlp_loss", "mlp_loss_and_grads", "max_pool2d_relu"}
    assert HF.HAND_WRITTEN - handgrad_only - set(WITHOUT_OPINFO) == set(TORCH_OPS)
    assert HN.HAND_WRITTEN - {"functional"} == set(TORCH_MODULES)  # handgrad.nn.functional is handgrad.functional
    checks = {"samples", *TRANSFORM_CHECKS}
    for entry in KNOWN_FAILURES:
        assert entry.target in set(TORCH_OPS) | set(TORCH_MODULES) and entry.check in checks, entry
        assert entry.count > 0 and len(entry.reason) > 10, entry


def test_unexplained_failures_and_stale_counts_are_reported():
    known = [KnownFailure("op", "samples", r"refused: .*no dim", 2, "not implemented")]
    outcomes = [Outcome("match"), Outcome("refused", "ValueError: no dim"), Outcome("refused", "ValueError: no dim"),
                Outcome("torch_error", "torch raised")]
    assert unexplained("op", "samples", outcomes, known) == []
    assert unexplained("op", "samples", outcomes[:2], known) == [  # one of the two now passes
        "known failure 'refused: .*no dim' (not implemented) matched 1 samples, not 2: update its count, or delete "
        "it if none is left"]
    wrong = Outcome("wrong", "output 0: Tensor-likes are not close!", "float64 T[3]")
    assert unexplained("op", "samples", [*outcomes, wrong], known) == [
        "wrong: output 0: Tensor-likes are not close! [float64 T[3]]"]
