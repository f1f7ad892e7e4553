"""Convolution, pooling, normalisation and dropout beyond the shared table (handgrad.verify.CNN_CASES):
layouts the table cannot make, random shapes, running statistics, dropout's own mask, saved memory,
and the error messages."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as torch_F
from hypothesis import given, settings
from hypothesis import strategies as st

import handgrad.functional as F
from handgrad.verify import CNN_CASES, compare, distinct, gradcheck, max_pool2d_relu_reference, seeded

CASES = {case.name: case for case in CNN_CASES}


def leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().requires_grad_()


def saved_bytes(fn) -> int:
    """Bytes of the tensors that ``fn``'s graph saves for backward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


@pytest.mark.parametrize("case", CNN_CASES, ids=lambda c: c.name)
def test_table_gradients_are_not_vacuous(case):
    """Every reference gradient in the table is O(1): a near-zero one (say, an upstream gradient that the op's
    backward projects away) would pass any comparison with assert_close's absolute tolerance."""
    comparison = compare(case.hand, case.reference, case.inputs(torch.float32), case.kwargs)
    for name, grad in comparison.expected_grads.items():
        assert grad.abs().max() > 0.1, f"{case.name}: gradient of {name!r} is nearly zero"


# --------------------------------------------------------------------------- layouts and sizes the table cannot make


def test_conv2d_1x1():
    # In the table, non_contiguous() cannot lay out a (C_out, C_in, 1, 1) weight differently; here it is channels_last.
    g = torch.Generator().manual_seed(0)
    inputs = dict(input=torch.randn(2, 3, 5, 4, dtype=torch.float64, generator=g).requires_grad_(),
                  weight=torch.randn(4, 3, 1, 1, dtype=torch.float64, generator=g).requires_grad_())
    compare(F.conv2d, torch_F.conv2d, inputs).assert_close()
    assert gradcheck(F.conv2d, inputs)
    strided = dict(input=leaf(inputs["input"].mT.contiguous().mT),
                   # every other channel
                   weight=leaf(torch.cat([inputs["weight"], inputs["weight"]], 1).detach()[:, ::2]))
    assert not strided["input"].is_contiguous() and not strided["weight"].is_contiguous()
    compare(F.conv2d, torch_F.conv2d, strided).assert_close()


@pytest.mark.parametrize("name", ["conv2d(3x3)", "conv2d(groups=3, no bias)",
                                  "max_pool2d(3x3, stride=2, padding=1, odd 7x9)",
                                  "max_pool2d(2x2)", "max_pool2d(3x3, stride=1)",
                                  "avg_pool2d(3x3, stride=2, padding=1)", "batch_norm(train, N C H W)"])
def test_channels_last_inputs(name):
    case = CASES[name]
    inputs = {n: leaf(v.contiguous(memory_format=torch.channels_last)) if isinstance(v, torch.Tensor) and v.dim() == 4
              else v for n, v in case.inputs(torch.float64).items()}
    compare(case.hand, case.reference, inputs, case.kwargs).assert_close()


@pytest.mark.parametrize("name", ["conv2d(stride=2, padding=1, odd 7x8)", "max_pool2d(2x2)",
                                  "avg_pool2d(2x2, odd 7x7)"])
def test_single_image_is_a_batch_of_one(name):
    case = CASES[name]
    inputs = {n: leaf(v[0]) if n == "input" else v for n, v in case.inputs(torch.float64).items()}
    assert inputs["input"].dim() == 3
    compare(case.hand, case.reference, inputs, case.kwargs).assert_close()
    assert gradcheck(case.hand, inputs, case.kwargs)


def test_max_pool2d_return_indices_equal_torch():
    x = distinct(2, 3, 7, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    output, indices = F.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
    expected, expected_indices = torch_F.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
    torch.testing.assert_close(output, expected)
    assert torch.equal(indices, expected_indices)


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=2),  # windows that tile the input (its last row and column left out)
    dict(kernel_size=(2, 3)),  # tiles of 2 x 3
    dict(kernel_size=3, stride=1),  # overlapping windows: an input may win several
    dict(kernel_size=(3, 2), stride=(2, 3), dilation=(1, 2)),  # strided views, gaps between windows
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),  # windows over padding: torch's kernel
    dict(kernel_size=2, dilation=2, padding=1),
], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_pool2d_ties_go_to_the_first_maximum_as_in_torch(kwargs, dtype):
    """Whole numbers from 0 to 2 (or -1 to 1), ReLU's zeros and -inf tie in most windows; each window's
    index and gradient must be the single element torch's kernel picks (its first maximum, row-major),
    and max_pool2d_relu must give what autograd gives max_pool2d(relu(x))."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (3, 2, 9, 9), generator=g).to(dtype)
    relu_x = torch.randn(3, 2, 9, 9, generator=g, dtype=dtype).relu()
    for inputs in (x, relu_x, x - 1, torch.full_like(x, float("-inf"))):
        for hand, reference in [(F.max_pool2d, torch_F.max_pool2d), (F.max_pool2d_relu, max_pool2d_relu_reference)]:
            result = compare(hand, reference, dict(input=leaf(inputs)), kwargs)
            assert torch.equal(result.output, result.expected_output)
            assert torch.equal(result.grads["input"], result.expected_grads["input"])
        _, indices = F.max_pool2d(inputs, **kwargs, return_indices=True)
        assert torch.equal(indices, torch_F.max_pool2d(inputs, **kwargs, return_indices=True)[1])


def test_max_pool2d_keeps_a_channels_last_layout_as_torch_does():
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    for kwargs in (dict(kernel_size=2), dict(kernel_size=3, stride=1), dict(kernel_size=3, stride=2, padding=1)):
        output, indices = F.max_pool2d(x, **kwargs, return_indices=True)
        expected, expected_indices = torch_F.max_pool2d(x, **kwargs, return_indices=True)
        assert output.stride() == expected.stride() and indices.stride() == expected_indices.stride()


def test_max_pool2d_of_a_nan_is_nan_as_in_torch():
    x = torch.randn(1, 2, 6, 6)
    x[0, 1, 2, 3] = float("nan")
    torch.testing.assert_close(F.max_pool2d(x, 2), torch_F.max_pool2d(x, 2), equal_nan=True)
    assert F.max_pool2d(x, 2)[0, 1, 1, 1].isnan()


def test_max_pool2d_past_exact_float32_indices_takes_torchs_kernel(monkeypatch):
    """max_pool_windows counts indices in float32, exact to 2^24 elements an image; larger images go to
    torch's kernel (shown here with the limit lowered below an 8 x 8 image)."""
    import handgrad.functional.max_pool as max_pool

    calls = []
    windows = max_pool.max_pool_windows
    monkeypatch.setattr(max_pool, "max_pool_windows", lambda *args: calls.append(args) or windows(*args))
    x = torch.randn(2, 3, 8, 8)
    F.max_pool2d(x, 2)
    assert len(calls) == 1
    monkeypatch.setattr(max_pool, "EXACT_FLOAT32_INDICES", 63)
    output, indices = F.max_pool2d(x, 2, return_indices=True)
    assert len(calls) == 1
    expected, expected_indices = torch_F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(output, expected) and torch.equal(indices, expected_indices)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lenet_sizes(dtype):
    """LeNet-5's first layers at a real batch: conv 1 -> 6 @ 5x5 (input needs no gradient), 2x2 pools, conv 6 -> 16."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 28, 28, dtype=dtype, generator=g)
    w1 = (torch.randn(6, 1, 5, 5, dtype=dtype, generator=g) / 5).requires_grad_()  # scaled as 1 / sqrt(fan_in)
    b1 = torch.randn(6, dtype=dtype, generator=g).requires_grad_()
    w2 = (torch.randn(16, 6, 5, 5, dtype=dtype, generator=g) / 150**0.5).requires_grad_()

    def net(M, x, w1, b1, w2):
        h = M.max_pool2d(M.conv2d(x, w1, b1, padding=2), 2)
        return M.avg_pool2d(M.conv2d(h, w2), 2)

    comparison = compare(lambda **a: net(F, **a), lambda **a: net(torch_F, **a), dict(x=x, w1=w1, b1=b1, w2=w2))
    # float32: each weight gradient sums thousands of products and reaches ~170 in magnitude; sums in another order
    # differ by ~2e-6 of that (float32 rounding), which breaks the default atol=1e-5 on entries near zero. atol=1e-3
    # is ~6e-6 of the largest gradient; rtol keeps its float32 default.
    comparison.assert_close(**({} if dtype == torch.float64 else dict(rtol=1.3e-6, atol=1e-3)))


# --------------------------------------------------------------------------- random shapes (hypothesis)


@st.composite
def conv_configs(draw):
    groups = draw(st.integers(1, 3))
    c_in, c_out = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    reach = [d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True)]
    # the kernel fits
    size = [draw(st.integers(max(1, r - 2 * p), r - 2 * p + 6)) for r, p in zip(reach, padding, strict=True)]
    return dict(n=draw(st.integers(1, 3)), c_in=c_in, c_out=c_out, size=size, kernel=kernel, stride=stride,
                padding=padding, dilation=dilation, groups=groups, bias=draw(st.booleans()))


@settings(max_examples=40, deadline=None)
@given(config=conv_configs(), seed=st.integers(0, 2**16))
def test_conv2d_random_shapes(config, seed):
    g = torch.Generator().manual_seed(seed)
    c = config
    inputs = dict(input=torch.randn(c["n"], c["c_in"], *c["size"], dtype=torch.float64, generator=g).requires_grad_(),
                  weight=torch.randn(c["c_out"], c["c_in"] // c["groups"], *c["kernel"], dtype=torch.float64,
                                     generator=g).requires_grad_(),
                  bias=(torch.randn(c["c_out"], dtype=torch.float64, generator=g).requires_grad_()
                        if c["bias"] else None))
    kwargs = {k: c[k] for k in ("stride", "padding", "dilation", "groups")}
    compare(F.conv2d, torch_F.conv2d, inputs, kwargs).assert_close()


@settings(max_examples=40, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**16), op=st.sampled_from(["max", "avg"]))
def test_pooling_random_shapes(data, seed, op):
    kernel = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
    stride = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
    padding = tuple(data.draw(st.integers(0, k // 2)) for k in kernel)
    size = [data.draw(st.integers(max(1, k - 2 * p), k - 2 * p + 7)) for k, p in zip(kernel, padding, strict=True)]
    kwargs = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=data.draw(st.booleans()))
    if op == "avg":
        kwargs["count_include_pad"] = data.draw(st.booleans())
    x = distinct(data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)), *size, dtype=torch.float64,
                 generator=torch.Generator().manual_seed(seed))
    hand, reference = (F.max_pool2d, torch_F.max_pool2d) if op == "max" else (F.avg_pool2d, torch_F.avg_pool2d)
    compare(hand, reference, dict(input=x), kwargs).assert_close()


# --------------------------------------------------------------------------- batch norm's running statistics


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5), (4, 3, 5, 6)])
@pytest.mark.parametrize("momentum", [0.1, 0.5])
def test_batch_norm_running_statistics_follow_torch(shape, momentum):
    g = torch.Generator().manual_seed(0)
    stats = {who: (torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
             for who in ("hand", "torch")}
    for _ in range(4):
        x = 3 * torch.randn(shape, dtype=torch.float64, generator=g) + 2
        F.batch_norm(x, *stats["hand"], training=True, momentum=momentum)
        torch_F.batch_norm(x, *stats["torch"], training=True, momentum=momentum)
        torch.testing.assert_close(stats["hand"], stats["torch"])  # running_var uses the unbiased variance
    x = torch.randn(shape, dtype=torch.float64, generator=g)
    torch.testing.assert_close(F.batch_norm(x, *stats["hand"]), torch_F.batch_norm(x, *stats["torch"]))


def test_batch_norm_eval_backward_survives_later_buffer_update():
    """The eval-mode graph keeps its own copy of the statistics, so a training step in between may update them."""
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    mean, var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    y = F.batch_norm(x, mean, var, w)
    expected_grad_w = ((x.detach() - mean) / torch.sqrt(var + 1e-5)).sum(0)
    F.batch_norm(torch.randn(4, 3, dtype=torch.float64), mean, var, training=True)  # updates mean, var in place
    y.sum().backward()
    torch.testing.assert_close(w.grad, expected_grad_w)


# --------------------------------------------------------------------------- dropout, checked with the mask it drew


def kept_mask(output: torch.Tensor) -> torch.Tensor:
    """The elements dropout kept: exactly the nonzero outputs (inputs are drawn away from zero)."""
    return output.detach() != 0


@pytest.mark.parametrize("p", [0.3, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dropout_against_its_own_mask(p, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 50, dtype=dtype, generator=g)
    x = (x + 0.1 * x.sign()).requires_grad_()
    hand = seeded(F.dropout)  # draws the same mask on every call
    mask = kept_mask(hand(x, p=p))
    assert 0 < mask.float().mean() < 1
    # forward and gradient against torch autograd through x * mask / (1 - p)
    compare(hand, lambda input, p: input * mask / (1 - p), dict(input=x), dict(p=p)).assert_close()


def test_dropout_gradient_uses_the_forward_mask():
    x = torch.randn(200, dtype=torch.float64, requires_grad=True)
    output = F.dropout(x, 0.4)
    grad_output = torch.randn(200, dtype=torch.float64)
    output.backward(grad_output)
    torch.testing.assert_close(x.grad, grad_output * kept_mask(output) / 0.6)


def test_dropout_keeps_about_one_minus_p():
    torch.manual_seed(0)
    kept = kept_mask(F.dropout(torch.ones(100_000), 0.3)).float().mean()
    assert abs(kept - 0.7) < 0.01


def test_dropout_saves_a_bool_mask():
    x = torch.randn(32, 32, requires_grad=True)
    assert saved_bytes(lambda: F.dropout(x, 0.5)) == x.numel()  # one byte an element


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_dropout_gradcheck_with_a_fixed_seed(p):
    def seeded_dropout(input):
        torch.manual_seed(0)  # the same mask on every call gradcheck makes
        return F.dropout(input, p)

    with torch.random.fork_rng(devices=[]):
        assert gradcheck(seeded_dropout, dict(input=torch.randn(6, 9, dtype=torch.float64, requires_grad=True)))


def test_dropout_edge_cases_like_torch():
    x = torch.randn(5, 4, requires_grad=True)
    assert F.dropout(x, 0.0) is x and F.dropout(x, 0.7, training=False) is x  # torch returns the input itself
    zeros = F.dropout(x, 1.0)
    assert torch.equal(zeros, torch.zeros_like(x))
    zeros.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    with pytest.raises(ValueError, match=r"dropout probability has to be between 0 and 1, but got 1.5"):
        F.dropout(x, 1.5)


# --------------------------------------------------------------------------- memory saved for backward


@pytest.mark.parametrize("name, make", [
    ("conv2d", lambda x, w: F.conv2d(x, w)),
    ("max_pool2d", lambda x, w: F.max_pool2d(x, 2)),
    ("max_pool2d_relu", lambda x, w: F.max_pool2d_relu(x, 2)),
    ("avg_pool2d", lambda x, w: F.avg_pool2d(x, 2)),
    ("batch_norm", lambda x, w: F.batch_norm(x, None, None, w[:, 0, 0, 0], w[:, 0, 0, 1], training=True)),
    ("layer_norm", lambda x, w: F.layer_norm(x, (6, 6), w[0, 0], w[0, 1])),
    ("dropout", lambda x, w: F.dropout(x, 0.5)),
])
def test_saves_no_more_than_autograd(name, make):
    x = torch.randn(4, 3, 6, 6, requires_grad=True)
    w = torch.randn(3, 3, 6, 6, requires_grad=True)
    reference = {"conv2d": lambda: torch_F.conv2d(x, w), "max_pool2d": lambda: torch_F.max_pool2d(x, 2),
                 "max_pool2d_relu": lambda: max_pool2d_relu_reference(x, kernel_size=2),
                 "avg_pool2d": lambda: torch_F.avg_pool2d(x, 2),
                 "batch_norm": lambda: torch_F.batch_norm(x, None, None, w[:, 0, 0, 0], w[:, 0, 0, 1], training=True),
                 "layer_norm": lambda: torch_F.layer_norm(x, (6, 6), w[0, 0], w[0, 1]),
                 "dropout": lambda: torch_F.dropout(x, 0.5)}[name]
    assert saved_bytes(lambda: make(x, w)) <= saved_bytes(reference)


def test_max_pool2d_saves_the_input_and_the_indices_as_torch_does():
    """The int64 indices, and x (for its zero-derivative link under create_graph, which torch's graph has too)."""
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    assert saved_bytes(lambda: F.max_pool2d(x, 2)) == 4 * 3 * 8 * 8 * 4 + 4 * 3 * 4 * 4 * 8
    assert saved_bytes(lambda: F.max_pool2d(x, 2)) == saved_bytes(lambda: torch_F.max_pool2d(x, 2))


# --------------------------------------------------------------------------- errors name the shapes and the fix


def test_conv2d_wrong_channel_count():
    with pytest.raises(ValueError, match=r"input of shape \(2, 4, 8, 8\) has 4 channels, but weight of shape "
                                         r"\(6, 3, 3, 3\) with groups=1 expects 3 \* 1 = 3; build the layer with "
                                         r"in_channels=4"):
        F.conv2d(torch.randn(2, 4, 8, 8), torch.randn(6, 3, 3, 3))


def test_conv2d_groups_must_divide_channels():
    with pytest.raises(ValueError, match=r"groups=2 must divide both the input's 5 channels.*in_channels and "
                                         r"out_channels must be divisible by groups"):
        F.conv2d(torch.randn(2, 5, 8, 8), torch.randn(4, 2, 3, 3), groups=2)


def test_conv2d_kernel_larger_than_padded_input():
    with pytest.raises(ValueError, match=r"kernel of size \(5, 5\) with dilation \(1, 1\) spans \(5, 5\), larger than "
                                         r"the input of shape \(1, 1, 3, 8\) padded by \(0, 0\) to \(3, 8\)"):
        F.conv2d(torch.randn(1, 1, 3, 8), torch.randn(2, 1, 5, 5))


def test_conv2d_bad_bias_and_padding():
    with pytest.raises(ValueError, match=r"bias of shape \(4,\) does not match weight of shape \(6, 3, 3, 3\); "
                                         r"expected bias of shape \(6,\)"):
        F.conv2d(torch.randn(1, 3, 8, 8), torch.randn(6, 3, 3, 3), torch.randn(4))
    with pytest.raises(ValueError, match=r"padding='same' is not supported for strided convolutions"):
        F.conv2d(torch.randn(1, 3, 8, 8), torch.randn(6, 3, 3, 3), stride=2, padding="same")
    with pytest.raises(ValueError, match=r"expected input of shape \(N, C_in, H, W\) or \(C_in, H, W\), got \(3, 8\)"):
        F.conv2d(torch.randn(3, 8), torch.randn(6, 3, 3, 3))


@pytest.mark.parametrize("pool", [F.max_pool2d, F.max_pool2d_relu, F.avg_pool2d])
def test_pool_kernel_larger_than_padded_input(pool):
    message = (rf"{pool.__name__}: kernel_size=\(6, 6\) with dilation \(1, 1\) spans \(6, 6\), "
               r"larger than the input of shape \(1, 2, 3, 9\) padded by \(1, 1\) to \(5, 11\)")
    with pytest.raises(ValueError, match=message):
        pool(torch.randn(1, 2, 3, 9), 6, 1, 1)


@pytest.mark.parametrize("pool", [F.max_pool2d, F.max_pool2d_relu, F.avg_pool2d])
def test_pool_padding_at_most_half_the_kernel(pool):
    with pytest.raises(ValueError, match=r"padding=\(2, 2\) must be between 0 and half the kernel size \(3, 3\)"):
        pool(torch.randn(1, 2, 8, 8), 3, padding=2)


def test_batch_norm_channel_mismatch():
    with pytest.raises(ValueError, match=r"input of shape \(8, 4, 5, 5\) has 4 channels \(dim 1\), but running_mean "
                                         r"has shape \(3,\); build the layer with num_features=4"):
        F.batch_norm(torch.randn(8, 4, 5, 5), torch.zeros(3), torch.ones(3), training=True)
    with pytest.raises(ValueError, match=r"but weight has shape \(5,\)"):
        F.batch_norm(torch.randn(8, 4), None, None, torch.ones(5), training=True)


def test_batch_norm_needs_more_than_one_value_per_channel():
    with pytest.raises(ValueError, match=r"expected more than 1 value per channel when training, got input of shape "
                                         r"\(1, 4\)"):
        F.batch_norm(torch.randn(1, 4), torch.zeros(4), torch.ones(4), training=True)
    with pytest.raises(ValueError, match=r"running_mean and running_var are needed when training=False"):
        F.batch_norm(torch.randn(3, 4), None, None)


def test_layer_norm_normalized_shape_mismatch():
    message = (r"normalized_shape \(4, 6\) must equal the last 2 dimension\(s\) of the input, "
               r"but input has shape \(3, 4, 5\)")
    with pytest.raises(ValueError, match=message):
        F.layer_norm(torch.randn(3, 4, 5), (4, 6))
    with pytest.raises(ValueError, match=r"normalized_shape \(2, 3, 4, 5\) must equal the last 4"):
        F.layer_norm(torch.randn(3, 4, 5), (2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"weight of shape \(4,\) must have normalized_shape \(5,\)"):
        F.layer_norm(torch.randn(3, 4, 5), 5, torch.ones(4))
