"""The pieces attention.py's forward, backward and jvp share: which (queries x keys) tiles to compute, the
tiles themselves (cut with split), the masked scores of one tile (and their tangent), the key tiles' gradients
summed and put side by side, dropout masks drawn again from a seed, and grouped-query heads as views.

Reference: Dao et al., "FlashAttention" (2022), section 3.1 (tiling) and appendix B.2 (dropout masks
regenerated from the random generator's state instead of stored); Ainslie et al., "GQA: Training
Generalized Multi-Query Transformer Models from Multi-Head Checkpoints" (2023).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

# Keys per tile (and queries per tile with is_causal): each tile's temporaries are (..., BLOCK, BLOCK) with
# is_causal and (..., L, BLOCK) without, so memory grows linearly in T. 128 is the fastest of 64 / 128 / 256
# for forward + backward at T = 256 to 1024 on a CPU core (handgrad.benchmarks.attention).
BLOCK = 128

NEG_INF = float("-inf")


def tiles(n_queries: int, n_keys: int, block: int, is_causal: bool) -> Iterator[tuple[int, int, list]]:
    """(i0, i1, [(j0, j1), ...]): query rows i0:i1 and the key ranges they meet, in the order every pass walks.

    Without is_causal: one query tile of all rows, keys in tiles of ``block``. With it: query tiles of
    ``block`` rows too, and a query tile meets only the key tiles starting at or before its last query
    (top-left aligned: query i attends keys j <= i); the tiles above the diagonal are never computed.
    """
    rows = query_rows(n_queries, block, is_causal)
    for i0 in range(0, n_queries, rows):
        i1 = min(i0 + rows, n_queries)
        keys = [(j0, min(j0 + block, n_keys)) for j0 in range(0, n_keys, block) if not (is_causal and j0 > i1 - 1)]
        yield i0, i1, keys


def query_rows(n_queries: int, block: int, is_causal: bool) -> int:
    """Queries per tile: ``block`` with is_causal, else all of them (at least 1, so that ranges can step)."""
    return block if is_causal else max(n_queries, 1)


def cut(x: torch.Tensor | None, size: int, dim: int) -> dict[int, torch.Tensor]:
    """x in pieces of ``size`` along ``dim``, keyed by where each starts: {0: x[0:size], size: x[size:2 size], ...}
    ({} for None). split, not slicing: split's derivative is a cat (and cat's a split), where a slice's is
    aten::slice_backward, so a backward that cuts its tiles here and puts them together with cat can be
    differentiated again without any aten *_backward op."""
    if x is None:
        return {}
    return dict(zip(range(0, x.size(dim), size), x.split(size, dim), strict=False))


def cut_mask(mask: torch.Tensor | None, rows: int, block: int) -> dict[tuple[int, int], torch.Tensor]:
    """The mask's (rows x block) tiles, {(i0, j0): mask[..., i0:i0 + rows, j0:j0 + block]} ({} for None)."""
    return {(i0, j0): tile for i0, row in cut(mask, rows, -2).items() for j0, tile in cut(row, block, -1).items()}


def scores(q_i: torch.Tensor, k_j: torch.Tensor, mask_ij: torch.Tensor | None, is_causal: bool,
           i0: int, i1: int, j0: int, j1: int, in_place: bool) -> torch.Tensor:
    """S_ij = q_i . k_j + M_ij of one tile, (..., i1 - i0, j1 - j0); q_i already carries the scale.

    M is -inf where the tile of a bool mask, ``mask_ij``, is False or, with is_causal, where key j > query i
    (only tiles that reach above the diagonal have such entries); a float mask's tile is added as it is.
    """
    s = q_i @ k_j.mT
    if is_causal and j1 - 1 > i0:
        above = torch.ones(i1 - i0, j1 - j0, dtype=torch.bool, device=s.device).triu(i0 - j0 + 1)  # j > i
        return s.masked_fill_(above, NEG_INF) if in_place else s.masked_fill(above, NEG_INF)
    if mask_ij is None:
        return s
    if mask_ij.dtype == torch.bool:
        return torch.where(mask_ij, s, NEG_INF)
    return s + mask_ij.to(s.dtype)  # out of place: the mask's leading dims may be wider than the product's


def tangent_scores(t_qs_i, t_k_j, t_mask_ij, qs_i, k_j):
    """t_S of one tile: t_qs_i . k_j + qs_i . t_k_j (qs = scale q) + t_M_ij; None when no input has a tangent."""
    terms = []
    if t_qs_i is not None:
        terms.append(t_qs_i @ k_j.mT)
    if t_k_j is not None:
        terms.append(qs_i @ t_k_j.to(qs_i.dtype).mT)
    if t_mask_ij is not None:
        terms.append(t_mask_ij.to(qs_i.dtype))
    return sum(terms[1:], terms[0]) if terms else None


def add_tile(sums: dict, j0: int, tile: torch.Tensor) -> None:
    """sums[j0] += tile, out of place (several query tiles add into one key tile's gradient)."""
    sums[j0] = tile if j0 not in sums else sums[j0] + tile


def concat_tiles(sums: dict, like: torch.Tensor, block: int, dtype: torch.dtype) -> torch.Tensor:
    """The key tiles' gradients side by side, shaped and typed like ``like`` (key or value); zeros for a tile no
    query reaches (is_causal with fewer queries than keys)."""
    n = like.size(-2)
    parts = [sums[j0] if j0 in sums else torch.zeros(*like.shape[:-2], min(j0 + block, n) - j0, like.size(-1),
                                                     dtype=dtype, device=like.device)
             for j0 in range(0, n, block)]
    return (torch.cat(parts, -2) if parts else torch.zeros_like(like)).to(like.dtype)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs (sums of e^(.) in bfloat16 lose the small terms), else the dtype."""
    return torch.promote_types(dtype, torch.float32)


# --------------------------------------------------------------------------- dropout


def draw_seed() -> int:
    """One draw from the global (CPU) random stream: torch.manual_seed(s) before a call fixes its masks."""
    return int(torch.randint(2**62, ()))


class TileDropout:
    """Dropout's multipliers Z = keep / (1 - p), keep ~ Bernoulli(1 - p), one tile at a time.

    The masks come from a torch.Generator seeded with ``seed``, in tile order. Forward, backward and jvp
    walk the same tiles in the same order, so each draws the same masks, and none is kept in between. The
    uniform numbers are float32 whatever the dtype, so a seed drops the same weights in every dtype.
    They are drawn with torch.func's transforms set aside: a backward that runs under vmap (jacrev,
    vmap(grad)) must redraw its forward's masks, one set for every sample, which vmap would otherwise
    refuse ("called random operation while in randomness error mode") or draw per sample.
    """

    def __init__(self, seed: int, p: float, dtype: torch.dtype, device: torch.device):
        self.p, self.dtype, self.device = p, dtype, device
        self.generator = torch.Generator(device=device).manual_seed(seed) if p > 0 else None
        self.scale = 1 / (1 - p) if p < 1 else 0.0  # p = 1 drops everything

    def multiplier(self, shape: torch.Size) -> torch.Tensor | None:
        """Z for the next tile, of ``shape``; None without dropout."""
        if self.generator is None:
            return None
        with torch._C._DisableFuncTorch():  # a function of the seed, not fresh randomness: see the class docstring
            uniform = torch.rand(shape, generator=self.generator, dtype=torch.float32, device=self.device)
        return (uniform >= self.p).to(self.dtype) * self.scale

    def apply(self, p: torch.Tensor) -> torch.Tensor:
        z = self.multiplier(p.shape)
        return p if z is None else p * z


def dropout_multipliers(seed: int, p: float, batch: torch.Size, n_queries: int, n_keys: int, dtype: torch.dtype,
                        is_causal: bool, block: int = BLOCK, device: torch.device | str = "cpu") -> torch.Tensor:
    """Every tile's Z of one call, as one (*batch, L, S) tensor (0 in tiles never computed): what a reference
    built from torch's ops multiplies its softmax by to drop exactly the weights the hand-written op drops.
    ``batch``: the broadcast leading dims the op computed in (with grouped heads, (..., Hkv, G)); ``device``: the
    op's (each device has its own generator)."""
    dropout = TileDropout(seed, p, accumulation_dtype(dtype), torch.device(device))
    z = torch.zeros(*batch, n_queries, n_keys, dtype=dropout.dtype, device=device)
    for i0, i1, key_tiles in tiles(n_queries, n_keys, block, is_causal):
        for j0, j1 in key_tiles:
            tile = dropout.multiplier(torch.Size((*batch, i1 - i0, j1 - j0)))
            z[..., i0:i1, j0:j1] = 1 if tile is None else tile  # None: p = 0, nothing dropped
    return z


# --------------------------------------------------------------------------- grouped-query attention


def grouped_heads(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
    """enable_gqa: query (..., Hq, L, E) against key and value (..., Hkv, S, *), query head h using key / value
    head h // (Hq / Hkv). Returned as views, query (..., Hkv, G, L, E) against key (..., Hkv, 1, S, E) with
    G = Hq / Hkv, so the products broadcast over a group's G query heads and backward sums their key and
    value gradients: no copy of key or value. Also returns whether the heads were regrouped."""
    name = "scaled_dot_product_attention"
    if min(query.dim(), key.dim(), value.dim()) < 3:
        raise ValueError(f"{name}: enable_gqa=True needs a heads dim (..., heads, length, features) in query, key and "
                         f"value, got shapes {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
    hq, hk, hv = query.size(-3), key.size(-3), value.size(-3)
    if hq % hk or hq % hv:
        raise ValueError(f"{name}: with enable_gqa=True the query heads ({hq}) must be a multiple of the key heads "
                         f"({hk}) and of the value heads ({hv})")
    if hk == hq and hv == hq:
        return query, key, value, attn_mask, False
    if hk != hv:  # key and value grouped differently: torch's own copies
        return query, key.repeat_interleave(hq // hk, -3), value.repeat_interleave(hq // hv, -3), attn_mask, False
    group = hq // hk
    if attn_mask is not None and attn_mask.dim() >= 3:  # its heads dim, if any, splits like the query's
        attn_mask = attn_mask.unflatten(-3, (hk, group)) if attn_mask.size(-3) == hq else attn_mask.unsqueeze(-3)
    return query.unflatten(-3, (hk, group)), key.unsqueeze(-3), value.unsqueeze(-3), attn_mask, True
