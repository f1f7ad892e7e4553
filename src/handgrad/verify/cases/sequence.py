"""Rows of the sequence ops (embedding, gelu, scaled_dot_product_attention, residual_add) and their torch samples
(OpInfo nn.functional.embedding / gelu / scaled_dot_product_attention; nn.Embedding, nn.GELU)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as torch_F
from torch.nn.attention import SDPBackend, sdpa_kernel

import handgrad.functional as F
from handgrad.functional.attention import attention
from handgrad.functional.attention_tiles import BLOCK, draw_seed, dropout_multipliers, grouped_heads
from handgrad.functional.residual import residual_add
from handgrad.verify.compare import Inputs, OpCase
from handgrad.verify.inputs import elementwise_inputs, randn
from handgrad.verify.known import KnownFailure


def _embedding_inputs(num_embeddings: int, dim: int, *index_shape: int, padding_idx: int | None = None,
                      row_norm: float | None = None):
    """Indices (*index_shape) drawn from a small vocabulary, so that some repeat; with ``padding_idx``, the first
    two positions use it; with ``row_norm``, every weight row scaled to that norm (2-norm)."""
    def make(dtype, g):
        indices = torch.randint(num_embeddings, index_shape, generator=g)
        if padding_idx is not None:
            indices.view(-1)[:2] = padding_idx % num_embeddings
        weight = torch.randn(num_embeddings, dim, dtype=dtype, generator=g)
        if row_norm is not None:
            weight = weight * (row_norm / weight.norm(dim=1, keepdim=True))
        return dict(input=indices, weight=weight.requires_grad_())
    return make


def _attention_inputs(query: tuple[int, ...], key: tuple[int, ...], value_dim: int | None = None,
                      mask: str | None = None, mask_shape: tuple[int, ...] | None = None):
    """query (*query), key (*key), value like key with the last dim ``value_dim``; ``mask``: "bool" (True:
    attend; row 1 attends nothing) or "float" (differentiable; row 1 all -inf), of ``mask_shape``."""
    def make(dtype, g):
        value = (*key[:-1], value_dim or key[-1])
        inputs: Inputs = dict(query=randn(*query, dtype=dtype, generator=g), key=randn(*key, dtype=dtype, generator=g),
                              value=randn(*value, dtype=dtype, generator=g))
        if mask == "bool":
            keep = torch.rand(mask_shape or (query[-2], key[-2]), generator=g) > 0.3
            keep[..., 1, :] = False
            inputs["attn_mask"] = keep
        elif mask == "float":
            bias = torch.randn(mask_shape or (query[-2], key[-2]), dtype=dtype, generator=g)
            bias[..., 1, :] = -math.inf
            inputs["attn_mask"] = bias.requires_grad_()
        return inputs
    return make


def _residual_inputs(dtype, g):
    """A residual stream (2, 5, 4) and an addend broadcast along its first dimension (5, 4), as the GPT's
    position embeddings are."""
    return dict(input=randn(2, 5, 4, dtype=dtype, generator=g), other=randn(5, 4, dtype=dtype, generator=g))


def tiled_attention(block: int) -> Callable:
    """handgrad's attention cut into tiles of ``block`` keys (and queries, when causal): small inputs, many tiles."""
    def fn(**kwargs):
        return attention(**kwargs, block=block)
    return fn


def tiled_reference(block: int) -> Callable:
    """attention_dropout_reference for the hand-written op cut into tiles of ``block``."""
    def fn(**kwargs):
        return attention_dropout_reference(**kwargs, block=block)
    return fn


def seeded_keywords(fn: Callable, seed: int = 0) -> Callable:
    """``seeded`` for an op called with keywords only (query=, key=, value=)."""
    def wrapped(**kwargs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return fn(**kwargs)
    return wrapped


def attention_dropout_reference(query, key, value, dropout_p, is_causal=False, scale=None, enable_gqa=False,
                                block=BLOCK):
    """softmax(Q K^T scale + causal mask) V from torch's ops, dropping exactly the weights the hand-written op
    drops: its seed is the same draw from the global stream (call both under ``seeded_keywords``)."""
    grouped = False
    if enable_gqa:  # the hand-written op's grouping, so that the masks have its shape
        query, key, value, _, grouped = grouped_heads(query, key, value, None)
    L, S = query.size(-2), key.size(-2)
    batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    multipliers = dropout_multipliers(draw_seed(), dropout_p, batch, L, S, query.dtype, is_causal, block, query.device)
    scores = query @ key.mT * (1 / math.sqrt(query.size(-1)) if scale is None else scale)
    if is_causal:
        scores = scores.masked_fill(~torch.ones(L, S, dtype=torch.bool, device=scores.device).tril(), -math.inf)
    output = (torch.softmax(scores, -1) * multipliers.to(query.dtype)) @ value
    return output.flatten(-4, -3) if grouped else output


def torch_math_attention(**kwargs):
    """torch's scaled_dot_product_attention on its math backend (torch.nn.attention.SDPBackend.MATH): torch's own
    composed kernel, which has a second derivative and forward-mode AD; its CPU flash kernel, the default, has
    neither ("derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented").
    The OpInfo samples (verify/samples.py) compare with the default kernel."""
    with sdpa_kernel([SDPBackend.MATH]):
        return torch_F.scaled_dot_product_attention(**kwargs)


def sdpa(name: str, make_inputs: Callable, kwargs: dict | None = None, hand: Callable = F.scaled_dot_product_attention,
         reference: Callable = torch_math_attention, **more) -> OpCase:
    """A row of scaled_dot_product_attention: per-sample gradients over query, key and value together."""
    return OpCase(f"sdpa({name})", hand, reference, make_inputs, kwargs or {}, per_sample=("query", "key", "value"),
                  **more)


CASES: list[OpCase] = [
    OpCase("embedding", F.embedding, torch_F.embedding, _embedding_inputs(7, 4, 3, 5)),
    OpCase("embedding(0-d index)", F.embedding, torch_F.embedding, _embedding_inputs(7, 4)),
    # Finite differences cannot check a row that max_norm rescales (torch, too, leaves the rescaling out of the
    # graph), so every row here is already within max_norm; test_functional_sequence checks rescaled rows.
    OpCase("embedding(max_norm=2, rows within it)", F.embedding, torch_F.embedding,
           _embedding_inputs(6, 3, 2, 5, row_norm=1.5), dict(max_norm=2.0),
           opt_out={"vmap_grad": "torch fails: max_norm renormalises the shared weight in place from the rows the "
                                 "indices use (torch.unique, a data-dependent shape), which vmap cannot batch; "
                                 "torch's embedding_renorm_ fails under vmap too"}),
    OpCase("gelu(none)", F.gelu, torch_F.gelu, elementwise_inputs),
    OpCase("gelu(tanh)", F.gelu, torch_F.gelu, elementwise_inputs, dict(approximate="tanh")),
    OpCase("residual_add(broadcast)", residual_add, torch.add, _residual_inputs),
    sdpa("3-D, L != S, Ev != E", _attention_inputs((2, 5, 4), (2, 7, 4), 6)),
    sdpa("4-D, causal", _attention_inputs((2, 3, 6, 4), (2, 3, 6, 4)), dict(is_causal=True)),
    sdpa("causal, L < S, 2-key tiles", _attention_inputs((2, 2, 5, 4), (2, 2, 8, 4), 3), dict(is_causal=True),
         tiled_attention(2)),
    sdpa("causal, L > S, 3-key tiles", _attention_inputs((2, 2, 8, 4), (2, 2, 5, 4)), dict(is_causal=True),
         tiled_attention(3)),
    sdpa("bool mask, a row attends nothing, 3-key tiles", _attention_inputs((2, 3, 5, 4), (2, 3, 7, 4), mask="bool"),
         hand=tiled_attention(3)),
    sdpa("float mask per head, a row all -inf",
         _attention_inputs((2, 3, 5, 4), (2, 3, 7, 4), mask="float", mask_shape=(3, 5, 7))),
    sdpa("scale=0.3", _attention_inputs((2, 5, 4), (2, 6, 4)), dict(scale=0.3)),
    sdpa("GQA 6 query / 2 key heads, causal", _attention_inputs((2, 6, 5, 4), (2, 2, 5, 4)),
         dict(enable_gqa=True, is_causal=True)),
    sdpa("GQA, float mask per query head",
         _attention_inputs((2, 4, 5, 4), (2, 2, 6, 4), mask="float", mask_shape=(4, 5, 6)), dict(enable_gqa=True)),
    sdpa("5-D, query broadcast over the first dim", _attention_inputs((1, 2, 3, 5, 4), (2, 2, 3, 6, 4))),
    sdpa("2-D", _attention_inputs((5, 4), (6, 4))),
    # The same seed draws the same masks in both: attention_dropout_reference rebuilds the hand-written op's.
    # Under vmap every sample drops the same weights: the masks come from one seed a call, a Python int.
    sdpa("dropout_p=0.3, causal, 3-key tiles, seeded", _attention_inputs((2, 2, 7, 4), (2, 2, 7, 4)),
         dict(dropout_p=0.3, is_causal=True), seeded_keywords(tiled_attention(3)), seeded_keywords(tiled_reference(3)),
         randomness="same"),
]

# Options whose gradient torch defines to be other than the derivative: the padding row's is 0 although the
# output reads it, and scale_grad_by_freq divides each position's gradient by its index's count. Checked
# against torch (tests/test_functional_sequence.py), never against finite differences, which these fail by design.
DEFINED_GRADIENT_CASES: list[OpCase] = [
    OpCase("embedding(padding_idx=2)", F.embedding, torch_F.embedding, _embedding_inputs(7, 4, 3, 5, padding_idx=2),
           dict(padding_idx=2)),
    OpCase("embedding(padding_idx=-1)", F.embedding, torch_F.embedding,
           _embedding_inputs(7, 4, 12, padding_idx=-1), dict(padding_idx=-1)),
    OpCase("embedding(scale_grad_by_freq)", F.embedding, torch_F.embedding, _embedding_inputs(5, 3, 4, 6),
           dict(scale_grad_by_freq=True)),
    OpCase("embedding(scale_grad_by_freq, padding_idx=0)", F.embedding, torch_F.embedding,
           _embedding_inputs(5, 3, 4, 6, padding_idx=0), dict(scale_grad_by_freq=True, padding_idx=0)),
]

TORCH_OPS: dict[str, tuple[str, ...]] = {
    "embedding": ("nn.functional.embedding",),
    "gelu": ("nn.functional.gelu",),
    "scaled_dot_product_attention": ("nn.functional.scaled_dot_product_attention",),
}
TORCH_MODULES: tuple[str, ...] = ("Embedding", "GELU")
KNOWN_FAILURES: list[KnownFailure] = []


def embedding_as_its_opinfo_calls_it(weight, indices, **kwargs):
    """torch's embedding OpInfo passes the weight first (its op is lambda weight, idx: embedding(idx, weight))."""
    return F.embedding(indices, weight, **kwargs)


def attention_sample_reference(sample) -> Callable | None:
    """A dropout sample is compared with the composed math dropping the weights handgrad drops (both sides run
    under one seed); the others with torch's op."""
    return attention_dropout_reference if sample.kwargs.get("dropout_p", 0) > 0 else None


SAMPLE_CALLS: dict[str, Callable] = {"embedding": embedding_as_its_opinfo_calls_it}
SAMPLE_REFERENCES: dict[str, Callable] = {"scaled_dot_product_attention": attention_sample_reference}
RANDOM_OPS: dict[str, str] = {"scaled_dot_product_attention": "same"}  # one seed a call: see the dropout row
TRANSFORM_MAX_ELEMENTS: dict[str, int] = {"scaled_dot_product_attention": 500}  # torch's smallest: q, k, v, 480
