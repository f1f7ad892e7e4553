"""Scaled dot-product attention, softmax(Q K^T scale + mask) V, with FlashAttention's backward.

No (L, S) matrix outlives a call. Forward saves the inputs, the output O and one number per query row, its
log-sum-exp L: O(T) beyond q, k and v, where autograd of the composed ops keeps the (L, S) probabilities.
Backward recomputes the probabilities tile by tile as P = exp(S - L). Forward and backward both walk
(queries x keys) tiles of at most BLOCK keys, so their temporaries are O(T) too. With is_causal, queries
come in tiles as well, and tiles that lie wholly above the diagonal (every key after every query) are skipped.
When one tile holds every score (at most BLOCK keys, and queries with is_causal) and no mask can empty a row,
the forward and a first-order backward skip the online rescaling and the bool masks (one_tile_forward,
one_tile_backward); what is saved is the same.

References: Dao, Fu, Ermon, Rudra & Re, "FlashAttention: Fast and Memory-Efficient Exact Attention with
IO-Awareness", NeurIPS 2022 (Algorithm 1, the online softmax; Algorithms 2 and 4, the backward from O and
L with D_i = dO_i . O_i); Dao, "FlashAttention-2", 2023 (the loop order); the reference implementation in
torch.nn.functional.scaled_dot_product_attention's documentation.
"""

from __future__ import annotations

import math

import torch

from handgrad.functional.attention_tiles import (
    BLOCK,
    NEG_INF,
    TileDropout,
    accumulation_dtype,
    add_tile,
    concat_tiles,
    cut,
    cut_mask,
    draw_seed,
    grouped_heads,
    query_rows,
    scores,
    tangent_scores,
    tiles,
)
from handgrad.functional.function import Autocast, TwinnedFunction, may_overwrite, twinned

LOG2_E = math.log2(math.e)  # e^z = 2^(z log2 e)


@twinned
class Attention(TwinnedFunction):
    """Attention with the output O and the row log-sum-exp L as outputs.

    q (..., L, E), k (..., S, E), v (..., S, Ev), leading dims broadcast; M (..., L, S) a float mask, or 0 / -inf
    from a bool mask or is_causal; Z the dropout multiplier keep / (1 - p) (1 without dropout):

        S_ij = scale q_i . k_j + M_ij                                      (..., L, S), one tile at a time
        L_i  = log sum_j e^(S_ij)                                          (..., L)
        P_ij = e^(S_ij - L_i)                                              softmax over the keys
        O_i  = sum_j P_ij Z_ij v_j                                         (..., L, Ev)

    backward, from grad_O = dO and grad_L = dL (L is an output, R2: it gets a gradient under double backward):
        dv_j  = sum_i P_ij Z_ij dO_i                                       (..., S, Ev)
        dP_ij = Z_ij dO_i . v_j
        dS_ij = P_ij (dP_ij - D_i),  D_i = dO_i . O_i - dL_i               softmax: dP_ij/dS_ik = P_ij ([j = k] - P_ik);
                                                                           log-sum-exp: dL_i/dS_ij = P_ij
        dq_i  = scale sum_j dS_ij k_j                                      (..., L, E)
        dk_j  = scale sum_i dS_ij q_i                                      (..., S, E)
        dM_ij = dS_ij                                                      (float mask)
    D_i is where O earns its place: sum_j P_ij dP_ij = sum_j P_ij Z_ij dO_i . v_j = dO_i . O_i, a number per
    row from two saved (L, Ev) tensors, where the softmax's own backward would need the whole row of P.
    Each gradient is summed down to its input's shape where leading dims were broadcast. Tiles are cut with
    split (attention_tiles.cut) and put together with cat, never sliced: differentiating this backward again
    then runs no aten *_backward op (a slice's derivative is aten::slice_backward).

    grouped (enable_gqa): q (..., Hkv, G, L, E) against k, v (..., Hkv, 1, S, *); O and L are computed in those
    dims and returned with the heads merged, (..., Hq, L, Ev) and (..., Hq, L), Hq = Hkv G (query head h is
    group h // G, member h % G). backward and jvp split the heads of dO, dL, O and L again, and merge their
    tangents' (a reshape, whose inverse is a reshape).

    jvp, from tangents t_q, t_k, t_v, t_M:
        t_S_ij = scale (t_q_i . k_j + q_i . t_k_j) + t_M_ij
        t_L_i  = sum_j P_ij t_S_ij = c_i
        t_O_i  = sum_j Z_ij (P_ij (t_S_ij - c_i) v_j + P_ij t_v_j) = sum_j P_ij Z_ij (t_S_ij v_j + t_v_j) - c_i O_i

    Saves q, k, v, the mask, O and L; dropout masks are drawn again from their seed (attention_tiles.TileDropout).
    Precision: P = e^(S - L) inherits L's rounding, a relative error of about |L| 2^-24 in float32 (~1e-5 where
    scores reach 200), as in FlashAttention; torch's TestCommon tolerance for its own kernel (atol 5e-5) holds.
    """

    autocast = Autocast.LOWER_PRECISION  # as torch's: q, k, v (and a float mask) in the autocast dtype

    @staticmethod
    def forward(query, key, value, mask, dropout_p, is_causal, scale, seed, block, grouped):
        acc = accumulation_dtype(query.dtype)
        qs, k, v = query.to(acc) * scale, key.to(acc), value.to(acc)
        L, S = query.size(-2), key.size(-2)
        batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2],
                                       mask.shape[:-2] if mask is not None else ())
        ok = may_overwrite()
        dropout = TileDropout(seed, dropout_p, acc, query.device)
        if one_tile(L, S, block, is_causal) and mask is None:
            output, lse = one_tile_forward(qs, k, v, is_causal, dropout, ok)
            output, lse = merge_heads(output, lse, grouped)
            return output.to(query.dtype), lse
        lowest = torch.finfo(acc).min
        rows = query_rows(L, block, is_causal)
        q_tiles, k_tiles, v_tiles, mask_tiles = cut(qs, rows, -2), cut(k, block, -2), cut(v, block, -2), \
            cut_mask(mask, rows, block)
        outputs, lses = [], []
        for i0, i1, key_tiles in tiles(L, S, block, is_causal):
            # Online softmax over the key tiles (Algorithm 1): m the running row max, denom = sum_j e^(S_ij - m),
            # o = sum_j e^(S_ij - m) Z_ij v_j; a tile with a larger max rescales both by e^(m_old - m_new).
            # m starts at, and stays >=, the lowest finite number, so a row that has seen only masked keys
            # gets e^(-inf - lowest) = 0, never e^(-inf + inf) = nan.
            m = qs.new_full((*batch, i1 - i0, 1), lowest)  # (..., Bq, 1)
            denom = qs.new_zeros(*batch, i1 - i0, 1)  # (..., Bq, 1)
            o = qs.new_zeros(*batch, i1 - i0, v.size(-1))  # (..., Bq, Ev)
            for j0, j1 in key_tiles:
                s = scores(q_tiles[i0], k_tiles[j0], mask_tiles.get((i0, j0)), is_causal, i0, i1, j0, j1, ok)
                m_new = torch.maximum(m, s.amax(-1, keepdim=True))
                p = s.sub_(m_new).exp_() if ok else torch.exp(s - m_new)  # e^(S_ij - m_new)
                rescale = torch.exp(m - m_new)
                denom = rescale * denom + p.sum(-1, keepdim=True)
                o = rescale * o + dropout.apply(p) @ v_tiles[j0]
                m = m_new
            # denom >= 1 where a row has an unmasked key (its max contributes e^0). A row with none (or no keys,
            # S = 0) gets O = 0 and L = +inf, so that P = e^(S - L) = 0 there in backward: torch's output and
            # gradients are 0 there too.
            attended = denom > 0
            o_i, lse_i = torch.where(attended, o / denom, 0), torch.where(attended, m + torch.log(denom), math.inf)
            o_i, lse_i = merge_heads(o_i, lse_i.squeeze(-1), grouped)  # before the cat: O and L are new tensors,
            outputs.append(o_i)  # not views, which a caller could not update in place
            lses.append(lse_i)
        if grouped:
            batch = torch.Size((*batch[:-2], batch[-2] * batch[-1]))  # (..., Hkv, G) -> (..., Hq)
        output = torch.cat(outputs, -2) if outputs else qs.new_zeros(*batch, 0, v.size(-1))
        lse = torch.cat(lses, -1) if lses else qs.new_zeros(*batch, 0)
        return output.to(query.dtype), lse

    @staticmethod
    def setup_context(ctx, inputs, output):
        query, key, value, mask, ctx.dropout_p, ctx.is_causal, ctx.scale, ctx.seed, ctx.block, ctx.grouped = inputs
        out, lse = output
        ctx.set_materialize_grads(False)  # R2: the gradient of L is None in first order, and is skipped
        saved = (query, key, value, mask, out, lse)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    @staticmethod
    def backward(ctx, grad_output, grad_lse):
        query, key, value, mask, out, lse = ctx.saved_tensors
        needs_q, needs_k, needs_v, needs_mask = ctx.needs_input_grad[:4]
        if grad_output is None and grad_lse is None:
            return (None,) * 10
        if ctx.grouped:
            out, lse, grad_output, grad_lse = split_heads(query, out, lse, grad_output, grad_lse)
        acc = lse.dtype
        qs, k, v = query.to(acc) * ctx.scale, key.to(acc), value.to(acc)
        L, S = query.size(-2), key.size(-2)
        ok = may_overwrite(grad_output if grad_output is not None else grad_lse)
        dropout = TileDropout(ctx.seed, ctx.dropout_p, acc, query.device)
        d_out = None if grad_output is None else grad_output.to(acc)
        if ok and d_out is not None and grad_lse is None and mask is None and one_tile(L, S, ctx.block, ctx.is_causal):
            grad_query, grad_key, grad_value = one_tile_backward(qs, k, v, out.to(acc), lse, d_out, ctx.is_causal,
                                                                 dropout, needs_q, needs_k, needs_v)
            if grad_query is not None:
                grad_query = grad_query.mul_(ctx.scale).sum_to_size(query.shape).to(query.dtype)
            if grad_key is not None:
                grad_key = grad_key.sum_to_size(key.shape).to(key.dtype)
            if grad_value is not None:
                grad_value = grad_value.sum_to_size(value.shape).to(value.dtype)
            return grad_query, grad_key, grad_value, None, None, None, None, None, None, None
        D = torch.zeros_like(lse).unsqueeze(-1)  # (..., L, 1): dO_i . O_i - dL_i
        if d_out is not None:
            D = D + (d_out * out.to(acc)).sum(-1, keepdim=True)
        if grad_lse is not None:
            D = D - grad_lse.to(acc).unsqueeze(-1)
        rows, block = query_rows(L, ctx.block, ctx.is_causal), ctx.block
        q_tiles, k_tiles, v_tiles, mask_tiles = cut(qs, rows, -2), cut(k, block, -2), cut(v, block, -2), \
            cut_mask(mask, rows, block)
        lse_tiles, D_tiles, d_out_tiles = cut(lse.unsqueeze(-1), rows, -2), cut(D, rows, -2), cut(d_out, rows, -2)
        grad_q: list[torch.Tensor] = []  # query tiles in order
        grad_k: dict[int, torch.Tensor] = {}  # key tiles by j0, each summed over the query tiles
        grad_v: dict[int, torch.Tensor] = {}
        mask_rows = []
        for i0, i1, key_tiles in tiles(L, S, block, ctx.is_causal):
            q_i, D_i, lse_i, mask_row = q_tiles[i0], D_tiles[i0], lse_tiles[i0], []
            dq_i: torch.Tensor | int = 0
            for j0, j1 in key_tiles:
                k_j, v_j = k_tiles[j0], v_tiles[j0]
                s = scores(q_i, k_j, mask_tiles.get((i0, j0)), ctx.is_causal, i0, i1, j0, j1, ok)  # (..., Bq, Bk)
                p = s.sub_(lse_i).exp_() if ok else torch.exp(s - lse_i)
                z = dropout.multiplier(p.shape)  # None without dropout
                if d_out is not None:
                    d_out_i = d_out_tiles[i0]
                    if needs_v:
                        pz = p if z is None else p * z
                        add_tile(grad_v, j0, (pz.mT @ d_out_i).sum_to_size(v_j.shape))  # (..., Bk, Ev)
                    dp = d_out_i @ v_j.mT if z is None else (d_out_i @ v_j.mT) * z  # (..., Bq, Bk)
                    ds = dp.sub_(D_i).mul_(p) if ok else (dp - D_i) * p
                else:
                    ds = -D_i * p
                if needs_q:
                    dq_i = dq_i + ds @ k_j  # (..., Bq, E), scale applied once below
                if needs_k:
                    add_tile(grad_k, j0, (ds.mT @ q_i).sum_to_size(k_j.shape))  # q_i carries the scale
                if needs_mask:
                    mask_row.append(ds.sum_to_size(*mask.shape[:-2], i1 - i0, j1 - j0))
            if needs_q:  # dq_i is still 0 where the tile met no keys (S = 0)
                grad_q.append(dq_i * ctx.scale if isinstance(dq_i, torch.Tensor) else torch.zeros_like(q_i))
            mask_rows.append(mask_row)
        grad_query = grad_key = grad_value = grad_mask = None
        if needs_q:
            grad_query = torch.cat(grad_q, -2).sum_to_size(query.shape).to(query.dtype) if grad_q else query * 0
        if needs_k:
            grad_key = concat_tiles(grad_k, key, block, acc)
        if needs_v:
            grad_value = concat_tiles(grad_v, value, block, acc)
        if needs_mask:
            row_grads = [torch.cat(row, -1) for row in mask_rows if row]
            grad_mask = torch.cat(row_grads, -2).to(mask.dtype) if row_grads and S else mask * 0
        return grad_query, grad_key, grad_value, grad_mask, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, t_query, t_key, t_value, t_mask, *_):
        query, key, value, mask, out, lse = ctx.saved_tensors
        if ctx.grouped:
            out, lse, _, _ = split_heads(query, out, lse)
        acc = lse.dtype
        qs, k, v = query.to(acc) * ctx.scale, key.to(acc), value.to(acc)
        t_qs = None if t_query is None else t_query.to(acc) * ctx.scale
        L, S = query.size(-2), key.size(-2)
        rows, block = query_rows(L, ctx.block, ctx.is_causal), ctx.block
        q_tiles, k_tiles, v_tiles, mask_tiles = cut(qs, rows, -2), cut(k, block, -2), cut(v, block, -2), \
            cut_mask(mask, rows, block)
        t_q_tiles, t_k_tiles, t_v_tiles, t_mask_tiles = cut(t_qs, rows, -2), cut(t_key, block, -2), \
            cut(t_value, block, -2), cut_mask(t_mask, rows, block)
        lse_tiles, out_tiles = cut(lse.unsqueeze(-1), rows, -2), cut(out, rows, -2)
        dropout = TileDropout(ctx.seed, ctx.dropout_p, acc, query.device)
        t_outs, t_lses = [], []
        for i0, i1, key_tiles in tiles(L, S, block, ctx.is_causal):
            a_i: torch.Tensor | int = 0  # sum_j P Z (t_S v + t_v)
            c_i: torch.Tensor | int = 0  # t_L = sum_j P t_S
            for j0, j1 in key_tiles:
                s = scores(q_tiles[i0], k_tiles[j0], mask_tiles.get((i0, j0)), ctx.is_causal, i0, i1, j0, j1, False)
                p = torch.exp(s - lse_tiles[i0])  # (..., Bq, Bk)
                z = dropout.multiplier(p.shape)
                pz = p if z is None else p * z
                t_s = tangent_scores(t_q_tiles.get(i0), t_k_tiles.get(j0), t_mask_tiles.get((i0, j0)), q_tiles[i0],
                                     k_tiles[j0])
                if t_s is not None:
                    c_i = c_i + (p * t_s).sum(-1, keepdim=True)
                    a_i = a_i + (pz * t_s) @ v_tiles[j0]
                if j0 in t_v_tiles:
                    a_i = a_i + pz @ t_v_tiles[j0].to(acc)
            t_outs.append(a_i - c_i * out_tiles[i0].to(acc))
            t_lses.append(c_i + torch.zeros_like(lse_tiles[i0]))
        if not t_outs:  # no queries (L = 0)
            return merge_heads(torch.zeros_like(out), torch.zeros_like(lse), ctx.grouped)
        # R8: tensors, never None
        return merge_heads(torch.cat(t_outs, -2).to(out.dtype), torch.cat(t_lses, -2).squeeze(-1), ctx.grouped)


# --------------------------------------------------------------------------- one tile


def one_tile(n_queries: int, n_keys: int, block: int, is_causal: bool) -> bool:
    """Whether ``tiles`` walks a single (queries x keys) tile, which holds every score: 1 <= n_keys <= block,
    and with is_causal 1 <= n_queries <= block too (without it the queries always form one tile)."""
    return 0 < n_keys <= block and 0 < n_queries and (not is_causal or n_queries <= block)


def one_tile_forward(qs: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool, dropout: TileDropout,
                     in_place: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention's forward when one tile holds every score and every row attends a key (no mask; is_causal's
    row i attends key 0 <= i): Algorithm 1 without the online rescaling,

        m_i = max_j S_ij,   denom_i = sum_j e^(S_ij - m_i),   O_i = sum_j e^(S_ij - m_i) Z_ij v_j / denom_i
        L_i = m_i + log denom_i

    in place on the tile's own temporaries where ``in_place`` (may_overwrite(): rule R3), with e^z as
    2^(z log2 e) (torch's exp2 kernel is about twice as fast as its exp on CPU; z <= 0, so the product's
    rounding stays below |z| ulp). qs (..., L, E) carries the scale; returns O (..., L, Ev) and L (..., L).
    """
    s = qs @ k.mT  # (..., L, S)
    if is_causal:
        s = causal_masked(s, in_place)
    m = s.amax(-1, keepdim=True)  # (..., L, 1): finite, every row has a key
    e = s.sub_(m).mul_(LOG2_E).exp2_() if in_place else torch.exp(s - m)  # e^(S - m)
    denom = e.sum(-1, keepdim=True)  # (..., L, 1), >= 1
    out = dropout.apply(e) @ v  # (..., L, Ev)
    return out.div_(denom) if in_place else out / denom, (m + torch.log(denom)).squeeze(-1)


def causal_masked(s: torch.Tensor, in_place: bool) -> torch.Tensor:
    """The scores s (..., L, S) with -inf where key j > query i: tril zeroes those entries (whatever they hold,
    inf or nan included), then a 0 / -inf matrix is added; two plain passes, several times faster on CPU
    than masked_fill with a bool mask."""
    above = torch.full(s.shape[-2:], NEG_INF, dtype=s.dtype, device=s.device).triu_(1)  # (L, S): -inf where j > i
    return s.tril_().add_(above) if in_place else s.tril() + above


def one_tile_backward(qs: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                      d_out: torch.Tensor, is_causal: bool, dropout: TileDropout, needs_q: bool, needs_k: bool,
                      needs_v: bool) -> tuple:
    """Attention's first-order backward (grad mode off, no gradient of L, no mask) when one tile holds every
    score: the class docstring's formulas with D_i = dO_i . O_i, in place on the tile's own temporaries,
    P = e^(S - L) as 2^((S - L) log2 e) and, with is_causal, set to 0 where key j > query i by tril (no -inf
    needed: those entries are overwritten). Returns dq / scale (the caller scales it), dk and dv in the
    broadcast leading dims, None where not needed."""
    s = qs @ k.mT  # (..., L, S)
    p = s.sub_(lse.unsqueeze(-1)).mul_(LOG2_E).exp2_()  # e^(S - L)
    if is_causal:
        p.tril_()
    z = dropout.multiplier(p.shape)  # None without dropout
    D = (d_out * out).sum(-1, keepdim=True)  # (..., L, 1)
    grad_v = ((p if z is None else p * z).mT @ d_out) if needs_v else None  # (..., S, Ev)
    dp = d_out @ v.mT  # (..., L, S)
    if z is not None:
        dp.mul_(z)
    ds = dp.sub_(D).mul_(p)  # dS = P (dP - D)
    grad_q = ds @ k if needs_q else None  # (..., L, E), before the scale
    grad_k = ds.mT @ qs if needs_k else None  # (..., S, E): qs carries the scale
    return grad_q, grad_k, grad_v


def merge_heads(out: torch.Tensor, lse: torch.Tensor, grouped: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """O (..., Hkv, G, L, Ev) and L (..., Hkv, G, L) as (..., Hq, L, Ev) and (..., Hq, L) when grouped."""
    return (out.flatten(-4, -3), lse.flatten(-3, -2)) if grouped else (out, lse)


def split_heads(query: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, grad_output: torch.Tensor | None = None,
                grad_lse: torch.Tensor | None = None) -> tuple:
    """merge_heads undone: O, L and their gradients back in the (..., Hkv, G, L, *) of the grouped query."""
    heads = query.shape[-4:-2]  # (Hkv, G)

    def split(t: torch.Tensor | None, dim: int) -> torch.Tensor | None:
        return None if t is None else t.unflatten(dim, heads)
    return split(out, -3), split(lse, -2), split(grad_output, -3), split(grad_lse, -2)


# --------------------------------------------------------------------------- the wrapper


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.scaled_dot_product_attention.

    query (..., L, E), key (..., S, E), value (..., S, Ev)  ->  (..., L, Ev); the leading dims broadcast.
    attn_mask broadcasts to (..., L, S): bool (True: attend) or a float added to the scores (it gets a
    gradient). is_causal: query i attends keys j <= i (top-left aligned, as torch). scale defaults to
    1 / sqrt(E). enable_gqa: query heads (dim -3) share key / value heads in groups of Hq / Hkv.
    A row that may attend no key gives 0, with zero gradients, as torch does.

    dropout_p > 0 drops attention weights with masks drawn from a torch.Generator seeded from the global
    random stream (one draw a call) and drawn again from that seed in backward, so no mask is stored. A
    given seed therefore drops other weights than torch's kernel would; attention_tiles.dropout_multipliers
    rebuilds the masks for a comparison with the composed math.
    """
    return attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, BLOCK)


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
              dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False,
              block: int = BLOCK) -> torch.Tensor:
    """scaled_dot_product_attention in tiles of ``block`` keys (and queries, with is_causal): the size only
    changes how the work is cut, which the tests use to cut small inputs into many tiles."""
    L, S, E = check_arguments(query, key, value, attn_mask, dropout_p, is_causal)
    grouped = False
    if enable_gqa:
        query, key, value, attn_mask, grouped = grouped_heads(query, key, value, attn_mask)
    mask = None if attn_mask is None else tile_mask(attn_mask, L, S)
    check_broadcast(query, key, value, mask)
    seed = draw_seed() if dropout_p > 0 else 0
    output, _ = Attention.call(query, key, value, mask, float(dropout_p), bool(is_causal),
                                1 / math.sqrt(E) if scale is None else float(scale), seed, block, grouped)
    return output  # (..., Hq, L, Ev): with grouped heads, merged inside the Function


def tile_mask(attn_mask: torch.Tensor, L: int, S: int) -> torch.Tensor:
    """attn_mask as a view of shape (..., L, S) in its last two dims, so that tiles can be cut from it."""
    mask = attn_mask.reshape((1,) * (2 - attn_mask.dim()) + attn_mask.shape) if attn_mask.dim() < 2 else attn_mask
    try:
        return mask.expand(*mask.shape[:-2], L, S)
    except RuntimeError:
        raise ValueError(f"scaled_dot_product_attention: attn_mask of shape {tuple(attn_mask.shape)} does not "
                         f"broadcast to (..., L, S) = (..., {L}, {S})") from None


def check_broadcast(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None) -> None:
    """The leading dims of query, key, value (and the mask) must broadcast together."""
    shapes = [t.shape[:-2] for t in (query, key, value, mask) if t is not None]
    try:
        torch.broadcast_shapes(*shapes)
    except RuntimeError:
        raise ValueError(f"scaled_dot_product_attention: the leading dims {', '.join(str(tuple(s)) for s in shapes)} "
                         "of query, key, value (and attn_mask) do not broadcast; with fewer key / value heads than "
                         "query heads pass enable_gqa=True") from None


def check_arguments(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None,
                    dropout_p: float, is_causal: bool) -> tuple[int, int, int]:
    """(L, S, E), or an error that names the value and the fix."""
    name = "scaled_dot_product_attention"
    if min(query.dim(), key.dim(), value.dim()) < 2:
        raise ValueError(f"{name}: query, key and value need at least 2 dims (..., length, features), got shapes "
                         f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}; add a length dim, "
                         "e.g. x[None]")
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(f"{name}: query, key and value must share a dtype, got {query.dtype}, {key.dtype}, "
                        f"{value.dtype}; cast them, e.g. key.to(query.dtype)")
    if query.size(-1) != key.size(-1) or key.size(-2) != value.size(-2):
        raise ValueError(f"{name}: query (..., L, E) and key (..., S, E) must share E, and key and value S; got "
                         f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool and attn_mask.dtype != query.dtype:
            raise TypeError(f"{name}: attn_mask must be bool (True: attend) or of the query's dtype {query.dtype}, "
                            f"got {attn_mask.dtype}")
        if is_causal:
            raise ValueError(f"{name}: pass either attn_mask or is_causal=True, not both (torch refuses the pair "
                             "too); fold the causal mask into attn_mask, e.g. attn_mask & causal")
    if not 0 <= dropout_p <= 1:
        raise ValueError(f"{name}: dropout_p={dropout_p} must be a probability in [0, 1]")
    return query.size(-2), key.size(-2), query.size(-1)
