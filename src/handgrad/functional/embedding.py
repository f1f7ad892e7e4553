"""Embedding: a lookup table of rows, trained by scattering the gradient back into the rows that were used.

Reference: torch.nn.functional.embedding and aten's embedding_dense_backward / embedding_sparse_backward /
embedding_renorm_ (the CPU kernels whose semantics these follow); llm.c train_gpt2.c (encoder_forward /
encoder_backward: the backward accumulates, because a token used twice gets two gradient contributions).
"""

from __future__ import annotations

import torch

from handgrad.functional.function import Autocast, TwinnedFunction, twinned


@twinned
class Embedding(TwinnedFunction):
    """y[n] = W[i_n]                 W (V, D), indices i (*) integers in [0, V)  ->  y (*, D)

    dy[n]/dW[r] = [i_n = r] (identity on the row), so the gradient scatters back, accumulating:
    grad_W[r] = sum_{n: i_n = r} grad_y[n] / c_n                         (V, D)
        c_n = 1, or with scale_grad_by_freq the number of times i_n occurs among all the indices
        positions with i_n = padding_idx are skipped: the padding row's gradient is 0
    grad_i: none (integers)
    jvp: t_y[n] = t_W[i_n]

    sparse: grad_W as a sparse COO tensor of the (kept) positions' rows, duplicates not summed, as torch's.
    Saves the indices (zero derivative, R1) and the weight's shape; the backward is linear in grad_y alone.
    """

    autocast = Autocast.INPUT_DTYPE  # as torch's: no cast, the weight's dtype (the weight comes first)

    @staticmethod
    def forward(weight, indices, padding_idx, scale_grad_by_freq, sparse):
        return weight.index_select(0, indices.reshape(-1)).reshape(*indices.shape, weight.size(1))

    @staticmethod
    def setup_context(ctx, inputs, output):
        weight, indices, ctx.padding_idx, ctx.scale_grad_by_freq, ctx.sparse = inputs
        ctx.weight_shape = weight.shape
        ctx.save_for_backward(indices)
        ctx.save_for_forward(indices)

    @staticmethod
    def backward(ctx, grad_output):
        (indices,) = ctx.saved_tensors
        if ctx.sparse and ctx.scale_grad_by_freq:  # the forward alone is fine, as in torch
            raise ValueError("embedding: scale_grad_by_freq=True has no sparse gradient (torch refuses the pair in "
                             "backward too); pass sparse=False or scale_grad_by_freq=False")
        num_embeddings, dim = ctx.weight_shape
        positions = indices.reshape(-1)  # (N,)
        grad_rows = grad_output.reshape(-1, dim).contiguous()  # (N, D); index_add takes a slower path for a
        # broadcast gradient (stride 0, e.g. from a sum), several times the cost of this copy
        if ctx.scale_grad_by_freq:
            counts = torch.bincount(positions, minlength=num_embeddings)  # (V,)
            grad_rows = grad_rows * (1 / counts[positions].to(grad_rows.dtype))[:, None]
        if ctx.padding_idx is not None:
            used = positions != ctx.padding_idx
            if ctx.sparse:
                positions, grad_rows = positions[used], grad_rows[used]
            else:
                grad_rows = torch.where(used[:, None], grad_rows, 0)  # skipped: an inf there stays out too
        if ctx.sparse:  # the rows as they are, one per kept position (a repeated index is summed by its user)
            grad_weight = torch.sparse_coo_tensor(positions[None].long(), grad_rows, (num_embeddings, dim),
                                                  check_invariants=False)  # the lookup checked the indices
            return grad_weight, None, None, None, None
        grad_weight = grad_rows.new_zeros(num_embeddings, dim).index_add(0, positions, grad_rows)  # (V, D)
        return grad_weight, None, None, None, None

    @staticmethod
    def jvp(ctx, t_weight, *_):
        (indices,) = ctx.saved_tensors
        return t_weight.index_select(0, indices.reshape(-1)).reshape(*indices.shape, t_weight.size(1))


def embedding_renorm_(weight: torch.Tensor, indices: torch.Tensor, max_norm: float, norm_type: float) -> torch.Tensor:
    """torch.embedding_renorm_ written out: each row of ``weight`` that ``indices`` use, once however often it
    is used, whose norm exceeds max_norm is scaled in place, under no_grad:

        W[r] <- W[r] * max_norm / (||W[r]||_norm_type + 1e-7)      if ||W[r]|| > max_norm

    The norm in the weight's dtype, the comparison and the factor in float64, as aten's kernel computes them.
    """
    with torch.no_grad():
        rows = torch.unique(indices)  # sorted, each once
        norms = torch.linalg.vector_norm(weight[rows], ord=norm_type, dim=1).double()  # (R,)
        factor = torch.where(norms > max_norm, max_norm / (norms + 1e-7), 1.0)
        weight[rows] = weight[rows] * factor.to(weight.dtype)[:, None]
    return weight


def embedding(input: torch.Tensor, weight: torch.Tensor, padding_idx: int | None = None, max_norm: float | None = None,
              norm_type: float = 2.0, scale_grad_by_freq: bool = False, sparse: bool = False) -> torch.Tensor:
    """Hand-written twin of torch.nn.functional.embedding: ``weight[input]``, input (*) -> (*, D).

    padding_idx (negative counts from the end) gets no gradient. max_norm renormalises the rows used in place
    first (``embedding_renorm_``), as torch does, so the weight changes. sparse=True returns a sparse
    gradient; with scale_grad_by_freq its backward is refused, as torch refuses the pair there.
    """
    name = "embedding"
    if weight.dim() != 2:
        raise ValueError(f"{name}: weight must be 2-D (num_embeddings, embedding_dim), got shape {tuple(weight.shape)}")
    if input.dtype not in (torch.long, torch.int):
        raise TypeError(f"{name}: input must hold integer indices (torch.long or torch.int), got {input.dtype}; "
                        "convert with input.long()")
    num_embeddings = weight.size(0)
    if padding_idx is not None:
        if not -num_embeddings <= padding_idx < num_embeddings:
            raise ValueError(f"{name}: padding_idx={padding_idx} must be within num_embeddings={num_embeddings}, "
                             f"i.e. in [{-num_embeddings}, {num_embeddings - 1}]")
        padding_idx %= num_embeddings
    check_indices(input, num_embeddings)
    if max_norm is not None:
        embedding_renorm_(weight, input, max_norm, norm_type)
    return Embedding.call(weight, input, padding_idx, scale_grad_by_freq, sparse)


def check_indices(indices: torch.Tensor, num_embeddings: int) -> None:
    """IndexError naming the first index outside [0, num_embeddings). Skipped under torch.func transforms and
    torch.compile, where a Python branch on tensor values is not possible (the lookup then fails by itself)."""
    if indices.numel() == 0 or torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling():
        return
    low, high = (int(value) for value in torch.aminmax(indices))  # one kernel where a mask takes four
    if low < 0 or high >= num_embeddings:
        bad = int(indices[(indices < 0) | (indices >= num_embeddings)][0])
        raise IndexError(f"embedding: index {bad} is out of range for {num_embeddings} embeddings (valid: 0 to "
                         f"{num_embeddings - 1}); the vocabulary or num_embeddings is too small")
