"""The losses' semantics against torch beyond the table's rows (handgrad.verify.cases.losses): torch's corner
cases (every target ignored, empty batches, clamped logs, broadcasting, legacy arguments), the class-index
check on the host (eager CPU only: skipped under torch.func transforms and torch.compile), and every error
message (the value and the fix, raised before any kernel)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as torch_F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad, vmap

import handgrad.functional as F
from handgrad.verify import OP_CASES, compare, gradcheck

CASES = {case.name: case for case in OP_CASES}
F64 = torch.float64


def same_as_torch(name: str, inputs: dict, **kwargs) -> None:
    """handgrad's F.<name> and torch's on copies of ``inputs``: outputs (nan where torch's is) and gradients."""
    comparison = compare(getattr(F, name), getattr(torch_F, name), inputs, kwargs)
    torch.testing.assert_close(comparison.output, comparison.expected_output, equal_nan=True)
    for what, expected in comparison.expected_grads.items():
        torch.testing.assert_close(comparison.grads[what], expected, equal_nan=True, msg=lambda m, w=what: f"{w}: {m}")


def leaf(*shape: int, low: float | None = None) -> torch.Tensor:
    values = torch.randn(shape, dtype=F64) if low is None else torch.rand(shape, dtype=F64) * (1 - 2 * low) + low
    return values.requires_grad_()


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", ["cross_entropy(mean)", "cross_entropy(none)", "mse_loss(mean)"])
def test_losses_batch_of_one(name):
    case = CASES[name]
    inputs = {n: v[:1].detach().requires_grad_(v.requires_grad) for n, v in case.inputs(F64).items()}
    compare(case.hand, case.reference, inputs, case.kwargs).assert_close()
    assert gradcheck(case.hand, inputs, case.kwargs)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_unbatched_class_index_and_probabilities(reduction):
    same_as_torch("cross_entropy", dict(input=leaf(5), target=torch.tensor(3)), reduction=reduction)
    same_as_torch("cross_entropy", dict(input=leaf(5), target=torch.rand(5, dtype=F64).requires_grad_()),
                  reduction=reduction)
    same_as_torch("nll_loss", dict(input=leaf(5), target=torch.tensor(1)), reduction=reduction)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 9), c=st.integers(1, 9), k=st.integers(0, 2),
       reduction=st.sampled_from(["mean", "sum", "none"]), seed=st.integers(0, 2**16))
def test_losses_random_shapes(n, c, k, reduction, seed):
    g = torch.Generator().manual_seed(seed)
    spatial = (3,) * k
    logits = torch.randn(n, c, *spatial, dtype=F64, generator=g).requires_grad_()
    target = torch.randint(c, (n, *spatial), generator=g)
    same_as_torch("cross_entropy", dict(input=logits, target=target), reduction=reduction, label_smoothing=0.1 * k)
    same_as_torch("nll_loss", dict(input=logits, target=target), reduction=reduction)
    other = torch.randn(n, c, *spatial, dtype=F64, generator=g).requires_grad_()
    same_as_torch("mse_loss", dict(input=logits, target=other), reduction=reduction)
    same_as_torch("huber_loss", dict(input=logits, target=other), reduction=reduction, delta=0.7)


@pytest.mark.parametrize("name, target", [
    ("cross_entropy", torch.zeros(0, dtype=torch.long)), ("cross_entropy", torch.zeros(0, 3, dtype=F64)),
    ("nll_loss", torch.zeros(0, dtype=torch.long)), ("mse_loss", torch.zeros(0, 3, dtype=F64)),
    ("l1_loss", torch.zeros(0, 3, dtype=F64)), ("smooth_l1_loss", torch.zeros(0, 3, dtype=F64)),
    ("huber_loss", torch.zeros(0, 3, dtype=F64)), ("kl_div", torch.zeros(0, 3, dtype=F64)),
    ("binary_cross_entropy", torch.zeros(0, 3, dtype=F64)),
    ("binary_cross_entropy_with_logits", torch.zeros(0, 3, dtype=F64)),
])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batches_as_torch(name, target, reduction):
    """An empty batch: "mean" is nan (0 / 0), "sum" 0, "none" empty, as in torch; gradients empty."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kl_div's note on "mean"
        same_as_torch(name, dict(input=leaf(0, 3), target=target), reduction=reduction)


# --------------------------------------------------------------------------- class indices


@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", [{}, dict(weight=torch.tensor([0.5, 2.0, 1.0], dtype=F64)),
                                     dict(label_smoothing=0.2), dict(ignore_index=2)])
def test_every_target_ignored_gives_torchs_nan_and_zero_gradient(name, reduction, options):
    if name == "nll_loss" and "label_smoothing" in options:
        return
    ignore_index = options.pop("ignore_index", -100)
    target = torch.full((4,), ignore_index)
    same_as_torch(name, dict(input=leaf(4, 3), target=target), reduction=reduction, ignore_index=ignore_index,
                  **options)
    loss = getattr(F, name)(x := leaf(4, 3), target, reduction=reduction, ignore_index=ignore_index, **options)
    assert loss.isnan().all() if reduction == "mean" else not loss.any()
    (gradient,) = torch.autograd.grad(loss.sum(), x)
    assert not gradient.any()


@pytest.mark.parametrize("ignore_index", [-100, -1, 0, 2, 7])
def test_ignore_index_inside_and_outside_the_classes(ignore_index):
    target = torch.tensor([0, ignore_index, 1, 2, ignore_index, 2]).clamp(max=2 if ignore_index != 7 else 7)
    weight = torch.tensor([0.3, 1.7, 1.0], dtype=F64)
    for reduction in ("mean", "sum", "none"):
        same_as_torch("cross_entropy", dict(input=leaf(6, 3), target=target), ignore_index=ignore_index,
                      weight=weight, reduction=reduction, label_smoothing=0.1)
        same_as_torch("nll_loss", dict(input=leaf(6, 3), target=target), ignore_index=ignore_index,
                      reduction=reduction)


def test_byte_targets_and_negative_label_smoothing_as_torch():
    target = torch.tensor([0, 2, 1], dtype=torch.uint8)
    same_as_torch("cross_entropy", dict(input=leaf(3, 4), target=target))
    same_as_torch("nll_loss", dict(input=leaf(3, 4), target=target))
    same_as_torch("cross_entropy", dict(input=leaf(3, 4), target=target.long()), label_smoothing=-0.5)  # read as 0


def test_the_common_path_and_the_general_one_agree():
    """Eager on the CPU, without weights or ignored targets, backward takes its two-kernel form; under
    torch.func.grad (no value may be read) the targets go through the mask: the same gradient."""
    x, target = torch.randn(6, 5, dtype=F64), torch.randint(5, (6,))
    eager = torch.autograd.grad(F.cross_entropy(x.requires_grad_(), target), x)[0]
    torch.testing.assert_close(grad(lambda a: F.cross_entropy(a, target))(x.detach()), eager)


# --------------------------------------------------------------------------- the class-index check


@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss"])
@pytest.mark.parametrize("bad", [10, -1])
def test_class_index_out_of_range_is_named_on_the_cpu(name, bad):
    with pytest.raises(IndexError, match=rf"{name}: class index {bad} is out of range for logits of shape \(3, 10\) "
                                         r"\(10 classes: valid indices are 0\.\.9, or ignore_index=-100\)"):
        getattr(F, name)(torch.randn(3, 10), torch.tensor([0, bad, 1]))
    getattr(F, name)(torch.randn(3, 10), torch.tensor([0, bad, 1]), ignore_index=bad)  # ignored: no error


@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss"])
def test_class_index_check_is_skipped_under_vmap(name):
    """Under a torch.func transform a batched target has many values: no host-side check (rule R7). Valid
    targets give torch's per-sample gradients; an index out of range fails in gather, as on a GPU."""
    x = torch.randn(3, 4, 5, dtype=F64)
    target = torch.randint(5, (3, 4))
    target[1, 2] = -100
    ours = vmap(grad(lambda a, t: getattr(F, name)(a, t)))(x, target)
    torch.testing.assert_close(ours, vmap(grad(lambda a, t: getattr(torch_F, name)(a, t)))(x, target))
    target[0, 0] = 9
    with pytest.raises(RuntimeError, match="out of bounds"):
        vmap(grad(lambda a, t: getattr(F, name)(a, t)))(x, target)


def test_class_index_check_is_skipped_under_compile():
    logits, target = torch.randn(2, 5), torch.tensor([0, 7])
    with pytest.raises(RuntimeError, match="out of bounds"):  # gather's error, not handgrad's IndexError
        torch.compile(F.nll_loss, backend="aot_eager", fullgraph=True)(logits, target)


# --------------------------------------------------------------------------- regression, binary, divergence


def test_broadcast_target_warns_and_matches_torch():
    inputs = dict(input=leaf(4, 1), target=leaf(4))
    with pytest.warns(UserWarning, match=r"mse_loss: target of shape \(4,\) is broadcast against input of shape "
                                         r"\(4, 1\) to shape \(4, 4\).*give both the same shape"):
        ours = F.mse_loss(**inputs)
    with pytest.warns(UserWarning):
        torch.testing.assert_close(ours, torch_F.mse_loss(**inputs))
    with pytest.warns(UserWarning):
        same_as_torch("l1_loss", inputs, reduction="sum")


def test_subgradient_at_zero_difference_is_torchs():
    x = torch.tensor([0.0, 1.0, -2.0], dtype=F64, requires_grad=True)
    target = torch.tensor([0.0, 0.5, -1.0], dtype=F64)
    for name, kwargs in [("l1_loss", {}), ("smooth_l1_loss", dict(beta=0.5)), ("smooth_l1_loss", dict(beta=0.0)),
                         ("huber_loss", dict(delta=0.5))]:
        same_as_torch(name, dict(input=x, target=target), reduction="sum", **kwargs)


def test_binary_cross_entropy_clamps_the_log_at_minus_100():
    x = torch.tensor([0.0, 1.0, 1e-30, 0.5], dtype=F64, requires_grad=True)
    y = torch.tensor([1.0, 0.0, 0.3, 0.5], dtype=F64, requires_grad=True)
    same_as_torch("binary_cross_entropy", dict(input=x, target=y), reduction="none")
    assert F.binary_cross_entropy(x, y, reduction="none")[:2].tolist() == [100.0, 100.0]


def test_binary_cross_entropy_with_logits_is_stable_for_large_logits():
    x = torch.tensor([-1000.0, -50.0, 0.0, 50.0, 1000.0], dtype=F64, requires_grad=True)
    y = torch.tensor([1.0, 0.2, 0.5, 0.0, 0.0], dtype=F64, requires_grad=True)
    for pos_weight in (None, torch.tensor(3.0, dtype=F64)):
        same_as_torch("binary_cross_entropy_with_logits", dict(input=x, target=y), reduction="none",
                      pos_weight=pos_weight)
    assert F.binary_cross_entropy_with_logits(x, y, reduction="none").isfinite().all()


def test_kl_div_where_the_target_is_zero_as_torch():
    x = torch.randn(2, 3, dtype=F64).log_softmax(1).requires_grad_()
    y = torch.tensor([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]], dtype=F64, requires_grad=True)
    same_as_torch("kl_div", dict(input=x, target=y), reduction="batchmean")  # grad_y nan at 0, as torch's


@pytest.mark.filterwarnings("ignore:size_average and reduce args will be deprecated")
@pytest.mark.parametrize("size_average, reduce", [(False, None), (None, False), (True, True)])
@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss",
                                  "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div"])
def test_legacy_size_average_and_reduce_as_torch(name, size_average, reduce):
    target = {"cross_entropy": torch.tensor([0, 2, 1]), "nll_loss": torch.tensor([0, 2, 1])}.get(
        name, torch.rand(3, 4, dtype=F64))
    same_as_torch(name, dict(input=leaf(3, 4, low=0.1), target=target), size_average=size_average, reduce=reduce)
    with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated"):
        getattr(F, name)(leaf(3, 4, low=0.1), target, size_average=size_average, reduce=reduce)


def test_elementwise_mean_is_an_older_name_of_mean():
    with pytest.warns(UserWarning, match="elementwise_mean"):
        same_as_torch("mse_loss", dict(input=leaf(3), target=leaf(3)), reduction="elementwise_mean")


# --------------------------------------------------------------------------- errors name the value and the fix


ERRORS = [  # (call, exception, message)
    (lambda: F.mse_loss(torch.randn(4), torch.randn(4), reduction="avg"), ValueError,
     r"mse_loss: reduction='avg' is not one of 'mean', 'sum', 'none'"),
    (lambda: F.kl_div(torch.randn(4), torch.rand(4), reduction="average"), ValueError,
     r"kl_div: reduction='average' is not one of 'mean', 'batchmean', 'sum', 'none'"),
    (lambda: F.l1_loss(torch.randn(5, 4), torch.randn(5)), ValueError,
     r"l1_loss: input of shape \(5, 4\) and target of shape \(5,\) do not broadcast to one shape"),
    (lambda: F.mse_loss(torch.randn(3), torch.randn(3), weight=torch.rand(1)), ValueError,
     r"mse_loss: weight of shape \(1,\) must have the input's shape \(3,\)"),
    (lambda: F.mse_loss(torch.arange(3), torch.randn(3)), TypeError,
     r"mse_loss: input of dtype torch.int64 is not floating point; convert it, e.g. input.float\(\)"),
    (lambda: F.huber_loss(torch.randn(3), torch.randn(3), delta=0.0), ValueError,
     r"huber_loss: delta=0.0 must be positive"),
    (lambda: F.smooth_l1_loss(torch.randn(3), torch.randn(3), beta=-1.0), ValueError,
     r"smooth_l1_loss: beta=-1.0 must be >= 0"),
    (lambda: F.cross_entropy(torch.randn(3, 10), torch.tensor([0, 1, 2, 3])), ValueError,
     r"cross_entropy: logits of shape \(3, 10\) need a target of class indices of shape \(3,\), got \(4,\)"),
    (lambda: F.cross_entropy(torch.randn(3, 10), torch.rand(3)), TypeError,
     r"cross_entropy: target of dtype torch.float32 must hold class indices \(torch.long, or torch.uint8\)"),
    (lambda: F.cross_entropy(torch.randn(3, 10), torch.tensor([0, 1, 2], dtype=torch.int32)), TypeError,
     r"convert it with target.long\(\)"),
    (lambda: F.cross_entropy(torch.randn(3, 4), torch.ones(3, 4, dtype=torch.long)), TypeError,
     r"a target of the input's shape \(3, 4\) holds class probabilities and must be floating point"),
    (lambda: F.cross_entropy(torch.randn(3, 4), torch.rand(3, 4), ignore_index=1), ValueError,
     r"cross_entropy: ignore_index=1 applies to class indices only"),
    (lambda: F.cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 2]), label_smoothing=1.5), ValueError,
     r"cross_entropy: label_smoothing=1.5 must be between 0.0 and 1.0"),
    (lambda: F.cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 2]), weight=torch.rand(2)), ValueError,
     r"cross_entropy: weight of shape \(2,\) must hold one weight per class: shape \(4,\)"),
    (lambda: F.nll_loss(torch.randn(3, 4), torch.tensor([0, 1, 2]), weight=torch.rand(4, dtype=F64)), TypeError,
     r"nll_loss: weight \(torch.float64, cpu\) must have the input's dtype and device \(torch.float32, cpu\)"),
    (lambda: F.cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 2]), weight=torch.rand(4, requires_grad=True)),
     ValueError, r"cross_entropy: weight requires grad, but the loss is not differentiable with respect to weight"),
    (lambda: F.cross_entropy(torch.tensor(1.0), torch.tensor(0)), ValueError, r"input is a 0-d tensor"),
    (lambda: F.binary_cross_entropy(torch.rand(3) + 1, torch.rand(3)), ValueError,
     r"binary_cross_entropy: every element of input must be a probability in \[0, 1\], got values in"),
    (lambda: F.binary_cross_entropy(torch.rand(3), torch.rand(3) - 2), ValueError,
     r"every element of target must be a probability in \[0, 1\]"),
    (lambda: F.binary_cross_entropy(torch.full((3,), float("nan")), torch.rand(3)), ValueError,
     r"every element of input must be a probability"),
    (lambda: F.binary_cross_entropy(torch.rand(3), torch.rand(1)), ValueError,
     r"binary_cross_entropy: target of shape \(1,\) must have the input's shape \(3,\)"),
    (lambda: F.binary_cross_entropy_with_logits(torch.randn(3), torch.rand(3), pos_weight=torch.rand(2, 3)),
     ValueError, r"pos_weight of shape \(2, 3\) must broadcast to the input's shape \(3,\)"),
    (lambda: F.binary_cross_entropy_with_logits(torch.randn(3), torch.rand(3), weight=torch.rand(3).requires_grad_()),
     ValueError, r"weight requires grad, but the loss is not differentiable with respect to weight"),
]


@pytest.mark.parametrize("call, error, message", ERRORS, ids=[m.split(":")[0][:40] + str(i) for i, (_, _, m)
                                                              in enumerate(ERRORS)])
def test_errors_name_the_value_and_the_fix(call, error, message):
    with pytest.raises(error, match=message):
        call()
