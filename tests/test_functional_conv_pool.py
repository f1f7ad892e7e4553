"""conv2d, max_pool2d, max_pool2d_relu and avg_pool2d on every form of argument torch takes: tuple forms,
'same' and 'valid', unbatched and empty inputs, complex and integer dtypes, torch.nn.Conv2d's padding
modes (Pad2d), the legacy batched gradients; and torch's own error inputs, each rejected before any kernel
with handgrad's message naming the value at fault."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as torch_F

import handgrad.functional as F
from handgrad.functional.padding import pad2d
from handgrad.verify import compare, max_pool2d_relu_reference, samples
from handgrad.verify.module_samples import call_error_input, module_error_inputs


def leaf(*shape, dtype=torch.float64, seed=0):
    return torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed)).requires_grad_()


# --------------------------------------------------------------------------- every form of argument


FORMS = [
    (F.conv2d, torch_F.conv2d, lambda: dict(input=leaf(2, 3, 7, 8), weight=leaf(4, 3, 3, 2, seed=1)),
     dict(stride=(2,), padding=[1, 0], dilation=(1,))),
    (F.conv2d, torch_F.conv2d, lambda: dict(input=leaf(2, 3, 7, 8), weight=leaf(4, 3, 3, 2, seed=1),
                                            bias=leaf(4, seed=2)), dict(padding="valid", stride=[1, 2])),
    (F.conv2d, torch_F.conv2d, lambda: dict(input=leaf(3, 7, 8), weight=leaf(4, 3, 2, 4, seed=1)),
     dict(padding="same", dilation=(3, 2), stride=(1,))),
    (F.conv2d, torch_F.conv2d, lambda: dict(input=leaf(2, 4, 6, 5), weight=leaf(4, 2, 2, 2, seed=1),
                                            bias=leaf(4, seed=2)), dict(padding="same", groups=2)),
    (F.max_pool2d, torch_F.max_pool2d, lambda: dict(input=leaf(2, 3, 7, 8)),
     dict(kernel_size=(3,), stride=(), padding=(1,), dilation=[1])),
    (F.max_pool2d, torch_F.max_pool2d, lambda: dict(input=leaf(3, 7, 8)),
     dict(kernel_size=[3, 2], stride=[], ceil_mode=True, dilation=(2, 1))),
    (F.max_pool2d_relu, max_pool2d_relu_reference, lambda: dict(input=leaf(2, 3, 7, 8)),
     dict(kernel_size=(2,), stride=(), padding=(1,))),
    (F.avg_pool2d, torch_F.avg_pool2d, lambda: dict(input=leaf(2, 3, 9, 9)),
     dict(kernel_size=(2, 2), stride=(), padding=(0,), ceil_mode=False, count_include_pad=True,
          divisor_override=-2)),
    (F.avg_pool2d, torch_F.avg_pool2d, lambda: dict(input=leaf(3, 9, 9)),
     dict(kernel_size=(3,), stride=(1,), padding=(1,), ceil_mode=True, count_include_pad=False)),
]


@pytest.mark.parametrize("hand, reference, make, kwargs", FORMS, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_argument_forms_match_torch(hand, reference, make, kwargs):
    compare(hand, reference, make(), kwargs).assert_close()


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2),
                                    dict(kernel_size=(2, 3), ceil_mode=True)], ids=str)
def test_max_pool2d_return_indices_under_torch_func_equal_torch(kwargs):
    """Under a transform the windows go to torch's kernel (max_pool_windows' out= ops cannot be batched)."""
    x = leaf(4, 2, 3, 7, 8).detach()
    hand = torch.vmap(lambda x: F.max_pool2d(x, **kwargs, return_indices=True))(x)
    expected = torch.vmap(lambda x: torch_F.max_pool2d(x, **kwargs, return_indices=True))(x)
    torch.testing.assert_close(hand, expected)


# --------------------------------------------------------------------------- empty tensors, as torch takes them


EMPTY = [
    (F.conv2d, torch_F.conv2d, lambda: dict(input=leaf(0, 3, 6, 6), weight=leaf(4, 3, 3, 3), bias=leaf(4)), {}),
    (F.conv2d, torch_F.conv2d, lambda: dict(input=leaf(2, 0, 6, 6), weight=leaf(4, 0, 3, 3), bias=leaf(4)), {}),
    (F.conv2d, torch_F.conv2d, lambda: dict(input=leaf(0, 3, 0, 6), weight=leaf(4, 3, 3, 3)), dict(padding=2)),
    (F.conv2d, torch_F.conv2d, lambda: dict(input=leaf(0, 3, 5, 6), weight=leaf(4, 3, 2, 2)), dict(padding="same")),
    (F.conv2d, torch_F.conv2d, lambda: dict(input=leaf(0, 5, 6), weight=leaf(4, 0, 3, 3)), {}),
    (F.max_pool2d, torch_F.max_pool2d, lambda: dict(input=leaf(0, 3, 6, 6)), dict(kernel_size=2)),
    (F.max_pool2d, torch_F.max_pool2d, lambda: dict(input=leaf(0, 3, 6, 6)), dict(kernel_size=3, padding=1)),
    (F.max_pool2d_relu, max_pool2d_relu_reference, lambda: dict(input=leaf(0, 3, 6, 6)), dict(kernel_size=2)),
    (F.avg_pool2d, torch_F.avg_pool2d, lambda: dict(input=leaf(0, 3, 6, 6)), dict(kernel_size=2)),
]


@pytest.mark.parametrize("hand, reference, make, kwargs", EMPTY, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_empty_tensors_match_torch(hand, reference, make, kwargs):
    result = compare(hand, reference, make(), kwargs)
    assert result.output.shape == result.expected_output.shape
    result.assert_close()


# --------------------------------------------------------------------------- complex and integer dtypes


def test_complex_conv2d_matches_torch_to_second_order():
    """torch's gradient of a complex op is the conjugate Wirtinger derivative: the backward conjugates W and x."""
    inputs = dict(input=leaf(2, 2, 6, 5, dtype=torch.complex128), weight=leaf(3, 2, 3, 2, dtype=torch.complex128,
                                                                               seed=1),
                  bias=leaf(3, dtype=torch.complex128, seed=2))
    kwargs = dict(stride=(2, 1), padding=1, dilation=(1, 2))
    compare(F.conv2d, torch_F.conv2d, inputs, kwargs).assert_close()
    small = (leaf(1, 2, 4, 3, dtype=torch.complex128), leaf(2, 2, 2, 2, dtype=torch.complex128, seed=1),
             leaf(2, dtype=torch.complex128, seed=2))
    assert torch.autograd.gradcheck(lambda *a: F.conv2d(*a, **kwargs), small, check_forward_ad=True, fast_mode=True)
    assert torch.autograd.gradgradcheck(lambda *a: F.conv2d(*a, **kwargs), small, fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64])
@pytest.mark.parametrize("kwargs", [dict(kernel_size=2), dict(kernel_size=3, stride=1), dict(kernel_size=3, padding=1)],
                         ids=str)
def test_max_pool2d_of_integers_equals_torch(dtype, kwargs):
    x = torch.randint(0, 5, (2, 3, 7, 8), dtype=dtype, generator=torch.Generator().manual_seed(0))
    hand = F.max_pool2d(x, **kwargs, return_indices=True)
    expected = torch_F.max_pool2d(x, **kwargs, return_indices=True)
    assert hand[0].dtype == dtype and torch.equal(hand[0], expected[0]) and torch.equal(hand[1], expected[1])


def test_conv2d_and_avg_pool2d_of_int64_equal_torch():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randint(-3, 4, (2, 3, 6, 6), generator=g), torch.randint(-3, 4, (4, 3, 3, 3), generator=g)
    assert torch.equal(F.conv2d(x, w, padding="same"), torch_F.conv2d(x, w, padding="same"))
    assert torch.equal(F.avg_pool2d(x, 2), torch_F.avg_pool2d(x, 2))


def test_conv2d_under_autocast_takes_mixed_dtypes_as_torch_does():
    x, w = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hand, expected = F.conv2d(x, w), torch_F.conv2d(x, w)
    assert hand.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(hand, expected)


# --------------------------------------------------------------------------- batched gradients, legacy vmap


@pytest.mark.parametrize("op, reference", [
    (lambda x: F.conv2d(x, torch.ones(2, 3, 2, 2, dtype=x.dtype), stride=2),
     lambda x: torch_F.conv2d(x, torch.ones(2, 3, 2, 2, dtype=x.dtype), stride=2)),
    (lambda x: F.max_pool2d(x, 2), lambda x: torch_F.max_pool2d(x, 2)),
    (lambda x: F.max_pool2d(x, 3, 1), lambda x: torch_F.max_pool2d(x, 3, 1)),
    (lambda x: F.max_pool2d_relu(x, 2), lambda x: max_pool2d_relu_reference(x, kernel_size=2)),
    (lambda x: F.avg_pool2d(x, 3, 1, 1), lambda x: torch_F.avg_pool2d(x, 3, 1, 1)),
    (lambda x: pad2d(x, (1, 2, 2, 0), "reflect"), lambda x: torch_F.pad(x, (1, 2, 2, 0), "reflect")),
], ids=["conv2d", "max_pool2d(2)", "max_pool2d(3, 1)", "max_pool2d_relu", "avg_pool2d", "pad2d"])
def test_vectorized_jacobian_equals_torch(op, reference):
    """autograd.functional.jacobian(vectorize=True) hands the backward legacy batched gradients (no functorch
    transform): the in-place fast paths must step aside (may_overwrite)."""
    x = leaf(1, 3, 6, 6).detach()
    torch.testing.assert_close(torch.autograd.functional.jacobian(op, x, vectorize=True),
                               torch.autograd.functional.jacobian(reference, x))


# --------------------------------------------------------------------------- what torch rejects, named


CONV2D_ERRORS = [  # torch's error_inputs of nn.functional.conv2d, in order
    r"conv2d: input, weight and bias must have one dtype, got torch.int64, torch.int64, torch.float64",
    r"conv2d: input, weight and bias must have one dtype, got torch.float64, torch.float64, torch.complex128",
    r"conv2d: stride must be at least 1, got stride=\(-1, -1\)",
    r"conv2d: padding must be at least 0, got padding=\(-1, -1\)",
    r"conv2d: dilation must be at least 1, got dilation=\(-1, -1\)",
    r"conv2d: weight must be 4-D \(C_out, C_in / groups, kH, kW\), got shape \(1, 2, 2\)",
    r"conv2d: groups=3 must divide both the input's 2 channels .* weight's 2 output channels",
    r"conv2d: groups=3 must divide both the input's 2 channels .* weight's 2 output channels",
    r"conv2d: groups must be a positive int, got groups=-1",
    r"conv2d: groups must be a positive int, got groups=0",
]
POOL_PADDING = r"{op}: padding=\({p}, {p}\) must be between 0 and half the kernel size \({k}\)"
MAX_POOL2D_ERRORS = [
    *(POOL_PADDING.format(op="max_pool2d", p=p, k=k) for p in (-1, 4) for k in ("2, 2", "3, 2")),
    r"max_pool2d: expected input of shape \(N, C, H, W\) or \(C, H, W\) with C, H and W non-zero .* got \(1, 0, 10\)",
    r"max_pool2d: expected input .* got \(2, 1, 10, 0\)",
    r"max_pool2d: kernel_size=\(2, 2\) with dilation \(1, 1\) spans \(2, 2\), larger than the input of shape "
    r"\(1, 1, 4\)",
]
AVG_POOL2D_ERRORS = [
    *(POOL_PADDING.format(op="avg_pool2d", p=p, k=k) for p in (-1, 4) for k in ("2, 2", "3, 2")),
    r"avg_pool2d: divisor_override must be a non-zero int \(or None\), got 0",
]
MAX_POOL2D_MODULE_ERRORS = [
    r"max_pool2d: expected input .* got \(3, 4\)",
    r"max_pool2d: expected input .* got \(1, 2, 3, 4, 5\)",
    POOL_PADDING.format(op="max_pool2d", p=5, k="3, 3"),
]


@pytest.mark.parametrize("op, messages", [("conv2d", CONV2D_ERRORS), ("max_pool2d", MAX_POOL2D_ERRORS),
                                          ("avg_pool2d", AVG_POOL2D_ERRORS)])
def test_torchs_error_inputs_get_handgrads_own_message(op, messages, monkeypatch):
    """Raised by the wrapper's checks, before any kernel: torch's kernels are made to fail if reached."""
    errors = [e.sample_input for _, e in samples.op_error_inputs(op, (f"nn.functional.{op}",))]
    assert len(errors) == len(messages)
    for kernel in ("conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "pad"):
        monkeypatch.setattr(torch_F, kernel, kernel_reached)
    for sample, message in zip(errors, messages, strict=True):
        with pytest.raises((ValueError, TypeError), match=message):
            getattr(F, op)(sample.input, *sample.args, **sample.kwargs)


def test_max_pool2d_module_error_inputs_get_handgrads_own_message():
    errors = [e for _, e in module_error_inputs("MaxPool2d")]
    assert len(errors) == len(MAX_POOL2D_MODULE_ERRORS)
    for error, message in zip(errors, MAX_POOL2D_MODULE_ERRORS, strict=True):
        with pytest.raises(ValueError, match=message):
            call_error_input("MaxPool2d", error)


def kernel_reached(*args, **kwargs):
    raise AssertionError("a torch kernel ran before handgrad's checks")


@pytest.mark.parametrize("call, error, message", [
    (lambda: F.conv2d(leaf(1, 3, 6, 6), leaf(4, 3, 3, 3), stride=(2, 1, 1)), ValueError,
     r"conv2d: stride must be an int or a tuple of one or two ints, got \(2, 1, 1\) \(3 values\)"),
    (lambda: F.conv2d(leaf(1, 3, 6, 6), leaf(4, 3, 3, 3), stride=()), ValueError, r"got \(\) \(0 values\)"),
    (lambda: F.conv2d(leaf(1, 3, 6, 6), leaf(4, 3, 3, 3), padding=1.0), TypeError, r"conv2d: padding must be an int"),
    (lambda: F.conv2d(leaf(1, 3, 6, 6), leaf(4, 3, 3, 3), padding="full"), ValueError,
     r"conv2d: padding='full' is not 'valid', 'same', an int or a pair of ints"),
    (lambda: F.conv2d(leaf(1, 3, 6, 6), leaf(4, 3, 3, 3), padding="same", stride=2), ValueError,
     r"padding='same' is not supported for strided convolutions \(stride=\(2, 2\)\)"),
    (lambda: F.conv2d(leaf(1, 3, 6, 6), leaf(4, 3, 3, 3, dtype=torch.float32)), TypeError,
     r"must have one dtype, got torch.float64, torch.float32"),
    (lambda: F.conv2d(leaf(1, 3, 6, 6), leaf(0, 3, 3, 3)), ValueError, r"weight's 0 output channels"),
    (lambda: F.conv2d(leaf(1, 3, 6, 6), leaf(4, 3, 0, 3)), ValueError, r"has an empty kernel \(0, 3\)"),
    (lambda: F.conv2d(leaf(2, 3, 0, 6), leaf(4, 3, 3, 3), padding=2), ValueError, r"has no rows or columns"),
    (lambda: F.conv2d(leaf(1, 3, 6, 6), leaf(4, 3, 3, 3), groups=1.0), ValueError, r"groups=1.0"),
    (lambda: F.conv2d(torch.ones(1, 3, 6, 6, dtype=torch.bool), torch.ones(4, 3, 3, 3, dtype=torch.bool)), TypeError,
     r"conv2d: input of dtype torch.bool is not supported"),
    (lambda: F.max_pool2d(leaf(1, 3, 6, 6), (2, 2, 2)), ValueError,
     r"max_pool2d: kernel_size must be an int or a tuple"),
    (lambda: F.max_pool2d(leaf(1, 3, 6, 6), 0), ValueError, r"max_pool2d: kernel_size must be positive, got "
                                                            r"kernel_size=\(0, 0\)"),
    (lambda: F.max_pool2d(leaf(1, 3, 6, 6), 2, 0), ValueError, r"max_pool2d: stride must be positive"),
    (lambda: F.max_pool2d(leaf(1, 3, 9, 9), 3, dilation=2, padding=2), ValueError, r"padding=\(2, 2\) must be"),
    (lambda: F.max_pool2d(torch.ones(1, 3, 6, 6, dtype=torch.complex64), 2), TypeError,
     r"max_pool2d: input of dtype torch.complex64 is not supported"),
    (lambda: F.max_pool2d_relu(leaf(2, 3, 0, 6), 2), ValueError,
     r"max_pool2d_relu: expected input .* got \(2, 3, 0, 6\)"),
    (lambda: F.avg_pool2d(leaf(6, 6), 2), ValueError, r"avg_pool2d: expected input .* got \(6, 6\)"),
    (lambda: F.avg_pool2d(leaf(1, 3, 6, 6), 2, divisor_override=2.5), ValueError, r"got 2.5"),
    (lambda: pad2d(leaf(1, 3, 4, 6), (1, 1, 4, 0), "reflect"), ValueError,
     r"pad2d: reflect padding \(4, 0\) of the rows must be smaller than the input's 4 rows"),
    (lambda: pad2d(leaf(1, 3, 4, 6), (7, 0, 0, 0), "circular"), ValueError,
     r"pad2d: circular padding \(7, 0\) of the columns must be at most the input's 6 columns"),
    (lambda: pad2d(leaf(1, 3, 4, 6), (1, 1, 1, 1), "zeros"), ValueError, r"pad2d: mode='zeros' is not one of"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_other_inputs_torch_rejects_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()
