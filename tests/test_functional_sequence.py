"""embedding, gelu and scaled_dot_product_attention beyond the op table: options whose gradient is torch's
definition rather than a derivative, max_norm's in-place renormalisation, sparse gradients, dropout masks drawn
again from a seed, the memory attention keeps for backward, second derivatives and forward AD, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as torch_F
from test_functional import non_contiguous, with_requires_grad
from torch.utils._python_dispatch import TorchDispatchMode

import handgrad.functional as F
from handgrad.functional.activations import GELU_CHUNK
from handgrad.functional.attention import attention
from handgrad.functional.attention_tiles import BLOCK, draw_seed, dropout_multipliers
from handgrad.verify import compare
from handgrad.verify.cases.sequence import DEFINED_GRADIENT_CASES

# --------------------------------------------------------------------------- embedding


@pytest.mark.parametrize("case", DEFINED_GRADIENT_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_padding_and_frequency_gradients_match_torch(case, dtype):
    inputs = case.inputs(dtype)
    compare(case.hand, case.reference, inputs, case.kwargs).assert_close()
    strided = {n: non_contiguous(v) if isinstance(v, torch.Tensor) else v for n, v in inputs.items()}
    compare(case.hand, case.reference, strided, case.kwargs).assert_close()
    compare(case.hand, case.reference, with_requires_grad(inputs, set()), case.kwargs).assert_close()


@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.0, math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_norm_renormalises_the_used_rows_in_place_as_torch(norm_type, dtype):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 5, dtype=dtype, generator=g) * 2
    indices = torch.tensor([[1, 3, 3], [6, 1, 0]])  # rows 2, 4, 5, 7 unused: left as they are
    hand_w, torch_w = weight.clone().requires_grad_(), weight.clone().requires_grad_()
    grad_output = torch.randn(2, 3, 5, dtype=dtype, generator=g)
    F.embedding(indices, hand_w, max_norm=1.5, norm_type=norm_type).backward(grad_output)
    torch_F.embedding(indices, torch_w, max_norm=1.5, norm_type=norm_type).backward(grad_output)
    torch.testing.assert_close(hand_w.detach(), torch_w.detach())  # row norms summed in another order: 1 ulp
    torch.testing.assert_close(hand_w.grad, torch_w.grad)
    assert torch.equal(hand_w.detach()[[2, 4, 5, 7]], weight[[2, 4, 5, 7]])
    assert not torch.equal(hand_w.detach()[[0, 1, 3, 6]], weight[[0, 1, 3, 6]])  # every used row was above 1.5


@pytest.mark.parametrize("padding_idx", [None, 2])
def test_sparse_gradient_equals_torchs(padding_idx):
    indices = torch.tensor([[1, 2, 1], [4, 2, 0]])
    hand_w, torch_w = (torch.randn(6, 3, generator=torch.Generator().manual_seed(0)).requires_grad_() for _ in "ab")
    grad_output = torch.randn(2, 3, 3)
    F.embedding(indices, hand_w, padding_idx=padding_idx, sparse=True).backward(grad_output)
    torch_F.embedding(indices, torch_w, padding_idx=padding_idx, sparse=True).backward(grad_output)
    assert hand_w.grad.is_sparse and torch_w.grad.is_sparse
    torch.testing.assert_close(hand_w.grad.coalesce(), torch_w.grad.coalesce())
    dense = torch.randn(6, 3, requires_grad=True)
    F.embedding(indices, dense, padding_idx=padding_idx).backward(grad_output)
    torch.testing.assert_close(hand_w.grad.to_dense(), dense.grad)


def test_sparse_gradient_trains_with_sgd():
    weight = torch.nn.Parameter(torch.ones(4, 2))
    F.embedding(torch.tensor([1, 1, 3]), weight, sparse=True).sum().backward()
    torch.optim.SGD([weight], lr=0.5).step()
    assert weight.tolist() == [[1, 1], [0, 0], [1, 1], [0.5, 0.5]]  # row 1 used twice: two contributions


def test_int32_indices_and_second_derivatives():
    weight = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    indices = torch.tensor([[0, 4], [4, 2]], dtype=torch.int32)
    torch.testing.assert_close(F.embedding(indices, weight), torch_F.embedding(indices, weight))
    assert torch.autograd.gradcheck(lambda w: F.embedding(indices, w), (weight,), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(lambda w: F.embedding(indices, w, padding_idx=4) ** 2, (weight,))


@pytest.mark.parametrize("call, error, message", [
    (lambda: F.embedding(torch.tensor([1]), torch.randn(2, 3, 4)), ValueError, r"weight must be 2-D .* \(2, 3, 4\)"),
    (lambda: F.embedding(torch.tensor([1.0]), torch.randn(4, 3)), TypeError, r"integer indices .* input.long\(\)"),
    (lambda: F.embedding(torch.tensor([1]), torch.randn(4, 3), padding_idx=4), ValueError,
     r"padding_idx=4 .* \[-4, 3\]"),
    (lambda: F.embedding(torch.tensor([1, 9]), torch.randn(4, 3)), IndexError, r"index 9 is out of range for 4"),
    (lambda: F.embedding(torch.tensor([-1]), torch.randn(4, 3)), IndexError, r"index -1 is out of range"),
    (lambda: F.embedding(torch.tensor([1]), torch.randn(4, 3, requires_grad=True), sparse=True,
                         scale_grad_by_freq=True).sum().backward(), ValueError, r"sparse=False or scale_grad_by_freq"),
])
def test_embedding_errors_name_the_value_and_the_fix(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --------------------------------------------------------------------------- gelu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gelu_gradient_over_several_slices_matches_torch(dtype):
    # more elements than two of gelu_derivative_times's slices, not a multiple of one; a non-contiguous input
    x = torch.randn(3, 2 * GELU_CHUNK // 3 + 7, dtype=dtype).mT.requires_grad_()
    grad = torch.randn(x.shape, dtype=dtype)
    (ours,) = torch.autograd.grad(F.gelu(x), x, grad)
    (expected,) = torch.autograd.grad(torch_F.gelu(x), x, grad)
    torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gelu_stays_finite_for_every_finite_input(approximate, dtype):
    x = torch.tensor([-3e38, -1e20, -1e4, -10.0, 0.0, 10.0, 1e4, 1e20, 3e38], dtype=dtype, requires_grad=True)
    y = F.gelu(x, approximate)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(y).all() and torch.isfinite(grad).all()
    slope = torch.where(x == 0, 0.5, (x > 0).to(dtype))  # saturated: 1 on the right, 0 on the left; Phi(0) at 0
    torch.testing.assert_close(grad, slope)
    moderate = torch.linspace(-1e4, 1e4, 101, dtype=dtype, requires_grad=True)  # where torch is finite too
    compare(F.gelu, torch_F.gelu, dict(input=moderate), dict(approximate=approximate)).assert_close()


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gelu_second_derivative_stays_finite_for_every_finite_input(approximate, dtype):
    x = torch.tensor([-3e38, -1e20, -1e4, 0.0, 1e4, 1e20, 3e38], dtype=dtype, requires_grad=True)
    (grad,) = torch.autograd.grad(F.gelu(x, approximate).sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(grad.sum(), x)
    expected = torch.where(x == 0, math.sqrt(2 / math.pi), 0.0).to(dtype)  # 2 phi(0) at 0; saturated elsewhere
    torch.testing.assert_close(second, expected)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_second_derivative_and_forward_ad(approximate):
    x = torch.randn(7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: F.gelu(x, approximate), (x,), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(lambda x: F.gelu(x, approximate), (x,))


def test_gelu_refuses_an_unknown_approximation():
    with pytest.raises(ValueError, match="approximate='erf' must be 'none' .* or 'tanh'"):
        F.gelu(torch.randn(3), "erf")


# --------------------------------------------------------------------------- attention: memory


def saved_bytes(fn) -> tuple[dict[int, int], torch.Tensor]:
    """Bytes of every distinct storage autograd saves for backward while ``fn()`` runs, by storage address."""
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = fn()
    return saved, output


@pytest.mark.parametrize("is_causal", [False, True])
def test_attention_saves_only_inputs_output_and_one_number_per_row(is_causal):
    q, k, v = (torch.randn(2, 3, 300, 8, requires_grad=True) for _ in range(3))
    saved, out = saved_bytes(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=is_causal))
    inputs = {t.untyped_storage().data_ptr() for t in (q, k, v)}
    beyond = sum(n for address, n in saved.items() if address not in inputs)
    assert beyond == out.nbytes + 2 * 3 * 300 * 4  # O and the log-sum-exp L (float32): O(T), no (T, T) matrix


class LargestResult(TorchDispatchMode):
    """The largest number of elements any op produces while active."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for t in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return result


@pytest.mark.parametrize("is_causal", [False, True])
def test_attention_temporaries_grow_linearly_in_length(is_causal):
    T = 4 * BLOCK
    q, k, v = (torch.randn(1, 2, T, 4, requires_grad=True) for _ in range(3))
    with LargestResult() as largest:
        F.scaled_dot_product_attention(q, k, v, is_causal=is_causal).sum().backward()
    tile = 2 * (BLOCK if is_causal else T) * BLOCK  # (1, 2, BLOCK or T, BLOCK)
    assert largest.numel == tile < 2 * T * T


# --------------------------------------------------------------------------- attention: dropout


def test_dropout_masks_are_drawn_again_from_the_seed_not_stored():
    q, k, v = (torch.randn(2, 2, 9, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    torch.manual_seed(5)
    saved, out = saved_bytes(lambda: attention(q, k, v, dropout_p=0.4, block=4))
    assert len(saved) == 5  # q, k, v, O, L: no mask
    torch.manual_seed(5)
    again = attention(q, k, v, dropout_p=0.4, block=4)
    torch.testing.assert_close(out, again, rtol=0, atol=0)
    torch.manual_seed(5)
    multipliers = dropout_multipliers(draw_seed(), 0.4, torch.Size((2, 2)), 9, 9, torch.float64, False, 4)
    assert set(multipliers.unique().tolist()) == {0.0, 1 / 0.6}
    assert 0.3 < (multipliers == 0).double().mean() < 0.5
    reference = (torch.softmax(q @ k.mT / 2, -1) * multipliers) @ v
    torch.testing.assert_close(out, reference)
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    for grad, expected in zip(grads, torch.autograd.grad(reference, (q, k, v), torch.ones_like(out)), strict=True):
        torch.testing.assert_close(grad, expected)


def test_dropout_p_one_drops_everything_and_the_global_stream_moves_once():
    q = torch.randn(3, 4, requires_grad=True)
    torch.manual_seed(0)
    out = F.scaled_dot_product_attention(q, q, q, dropout_p=1.0)
    assert torch.equal(out, torch.zeros(3, 4))
    after = torch.get_rng_state()
    torch.manual_seed(0)
    draw_seed()
    assert torch.equal(torch.get_rng_state(), after)


# --------------------------------------------------------------------------- attention: higher order, extremes


@pytest.mark.parametrize("kwargs", [dict(is_causal=True), dict(dropout_p=0.3), dict(mask="float"), dict(gqa=True)],
                         ids=["causal", "dropout", "float mask", "gqa"])
def test_attention_second_derivatives_and_forward_ad(kwargs):
    kwargs = dict(kwargs)
    g = torch.Generator().manual_seed(0)
    heads = 4 if kwargs.pop("gqa", False) else 2
    q = torch.randn(1, heads, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    k, v = (torch.randn(1, 2, 7, 3, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(2))
    tensors = [q, k, v]
    if kwargs.pop("mask", None):
        mask = torch.randn(5, 7, dtype=torch.float64, generator=g)
        mask[2] = -math.inf
        tensors.append(mask.requires_grad_())

    def fn(q, k, v, mask=None):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            return attention(q, k, v, mask, enable_gqa=heads == 4, block=3, **kwargs)
    assert torch.autograd.gradcheck(fn, tuple(tensors), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(fn, tuple(tensors))


@pytest.mark.parametrize("L, S", [(0, 4), (3, 0), (0, 0)])
def test_attention_with_no_queries_or_no_keys_matches_torch(L, S):
    g = torch.Generator().manual_seed(0)
    inputs = dict(query=torch.randn(2, L, 4, generator=g, requires_grad=True),
                  key=torch.randn(2, S, 4, generator=g, requires_grad=True),
                  value=torch.randn(2, S, 5, generator=g, requires_grad=True))
    compare(F.scaled_dot_product_attention, torch_F.scaled_dot_product_attention, inputs).assert_close()


@pytest.mark.parametrize("block", [16, BLOCK], ids=["tiles", "one tile"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_with_large_scores_stays_finite_and_equal(dtype, block):
    q, k, v = (torch.randn(2, 40, 8, dtype=dtype, requires_grad=True) for _ in range(3))
    inputs = dict(query=(q.detach() * 300).requires_grad_(), key=k, value=v)
    comparison = compare(lambda **kw: attention(**kw, block=block), torch_F.scaled_dot_product_attention, inputs,
                         dict(is_causal=True))
    assert all(torch.isfinite(g).all() for g in comparison.grads.values())
    # Scores near 1e3: float32's rounding of S alone is ~1e-4 of a weight, whichever kernel computes it.
    comparison.assert_close(rtol=1e-3, atol=1e-3) if dtype == torch.float32 else comparison.assert_close()


@pytest.mark.parametrize("block", [2, BLOCK], ids=["tiles", "one tile"])
@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_causal_attention_never_reads_a_later_key(bad, block):
    q, k, v = (torch.randn(2, 6, 4) for _ in range(3))
    k[:, -1] = bad  # the last key: only the last query may see it
    out = attention(q, k, v, is_causal=True, block=block)
    expected = torch_F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out[:, :-1], expected[:, :-1])  # finite, as torch's


def test_attention_under_bfloat16_autocast_runs_in_bfloat16_like_torch():
    q, k, v = (torch.randn(2, 2, 16, 8) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        expected = torch_F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("call, error, message", [
    (lambda: F.scaled_dot_product_attention(torch.randn(4), torch.randn(4), torch.randn(4)), ValueError,
     r"at least 2 dims .* x\[None\]"),
    (lambda: F.scaled_dot_product_attention(torch.randn(3, 4), torch.randn(3, 4).double(), torch.randn(3, 4)),
     TypeError, r"share a dtype, .* key.to\(query.dtype\)"),
    (lambda: F.scaled_dot_product_attention(torch.randn(3, 4), torch.randn(5, 3), torch.randn(5, 4)), ValueError,
     r"must share E"),
    (lambda: F.scaled_dot_product_attention(torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 4),
                                            attn_mask=torch.zeros(3, 5, dtype=torch.int64)), TypeError,
     r"attn_mask must be bool"),
    (lambda: F.scaled_dot_product_attention(torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 4),
                                            attn_mask=torch.ones(3, 5, dtype=torch.bool), is_causal=True), ValueError,
     r"either attn_mask or is_causal=True"),
    (lambda: F.scaled_dot_product_attention(torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 4),
                                            attn_mask=torch.ones(4, 5, dtype=torch.bool)), ValueError,
     r"attn_mask of shape \(4, 5\) does not broadcast to \(..., L, S\) = \(..., 3, 5\)"),
    (lambda: F.scaled_dot_product_attention(torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 4), dropout_p=1.5),
     ValueError, r"dropout_p=1.5"),
    (lambda: F.scaled_dot_product_attention(torch.randn(1, 6, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)),
     ValueError, r"do not broadcast; .* enable_gqa=True"),
    (lambda: F.scaled_dot_product_attention(torch.randn(1, 5, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4),
                                            enable_gqa=True), ValueError, r"query heads \(5\) must be a multiple"),
])
def test_attention_errors_name_the_value_and_the_fix(call, error, message):
    with pytest.raises(error, match=message):
        call()
