"""Building blocks of sequence models, each with a hand-written and an autograd backend of identical parameters.

    block = CausalSelfAttention(n_embd=128, n_head=4)             # handgrad.nn.Linear + hand-written attention
    twin = block.twin()                                           # torch.nn.Linear + attention from torch's ops
    y = block(x)                                                  # x (B, T, 128) -> (B, T, 128)

As in handgrad.models, both backends create the same parameters under the same names (``c_attn.weight``,
``c_attn.bias``, ``c_proj.weight``, ``c_proj.bias``: nanoGPT's, so its checkpoints load), drawn in the same
order from the same random stream, so two blocks built after the same torch.manual_seed are equal and
``twin.load_state_dict(block.state_dict())`` works both ways.

References: Karpathy, nanoGPT model.py (CausalSelfAttention); Vaswani et al., "Attention Is All You Need",
2017 (multi-head attention); torch.nn.functional.scaled_dot_product_attention's documentation (the composed
reference math that ``composed_attention`` writes out).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as torch_F

import handgrad.functional as F
import handgrad.nn

BACKENDS = ("hand", "autograd")


def composed_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
                       scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
    """softmax(Q K^T scale + mask) V from torch's ops, differentiated by autograd: the autograd twin of
    handgrad.functional.scaled_dot_product_attention (torch's documented reference implementation), which
    keeps the (..., L, S) probabilities for backward. Dropout on the weights uses torch_F.dropout. A row with no
    key to attend gives nan here (the softmax of all -inf), where torch's kernels and handgrad's give 0."""
    L, S = query.size(-2), key.size(-2)
    if enable_gqa:  # query head h uses key / value head h // (Hq / Hkv)
        key = key.repeat_interleave(query.size(-3) // key.size(-3), -3)
        value = value.repeat_interleave(query.size(-3) // value.size(-3), -3)
    scores = query @ key.mT * (1 / math.sqrt(query.size(-1)) if scale is None else scale)  # (..., L, S)
    if is_causal:
        scores = scores.masked_fill(~torch.ones(L, S, dtype=torch.bool, device=scores.device).tril(), -math.inf)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool else scores + attn_mask
    weights = torch.softmax(scores, -1)  # (..., L, S)
    return torch_F.dropout(weights, dropout_p) @ value if dropout_p > 0 else weights @ value  # (..., L, Ev)


class CausalSelfAttention(torch.nn.Module):
    """Multi-head causal self-attention (nanoGPT's CausalSelfAttention), a GPT block's first half.

        x                                                  (B, T, C),  C = n_embd
        q, k, v = c_attn(x).split(C)                       (B, T, C) each
        heads: view (B, T, n_head, C / n_head), transpose  (B, n_head, T, C / n_head)
        y = attention(q, k, v, is_causal=True)             token t attends tokens <= t, within each head
        y: transpose back, merge the heads                 (B, T, C)
        return dropout(c_proj(y))                          (B, T, C)

    Args:
        n_embd: the model width C; a multiple of n_head.
        n_head: attention heads, each of width C / n_head.
        dropout: probability of dropping an attention weight, and of dropping an output unit after
            c_proj, in training (nanoGPT's attn_dropout and resid_dropout); 0 is off.
        bias: whether c_attn and c_proj have biases (nanoGPT's config.bias).
        backend: "hand" (handgrad.nn.Linear, handgrad's scaled_dot_product_attention and Dropout) or
            "autograd" (torch.nn.Linear, ``composed_attention`` and torch.nn.Dropout). Their dropout masks
            differ; with dropout=0 both compute the same function of the same parameters.

    Initialisation is nn.Linear's default in both backends; nanoGPT's GPT re-initialises its blocks
    (N(0, 0.02), c_proj scaled by 1 / sqrt(2 n_layer)), which is the model's business, not the block's.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True, backend: str = "hand"):
        super().__init__()
        if n_head < 1 or n_embd < 1 or n_embd % n_head:
            raise ValueError(f"CausalSelfAttention: n_embd={n_embd} must be a positive multiple of n_head={n_head} "
                             "(each head gets n_embd / n_head features)")
        if not 0 <= dropout < 1:
            raise ValueError(f"CausalSelfAttention: dropout={dropout} must be in [0, 1) (0: off)")
        if backend not in BACKENDS:
            raise ValueError(f"CausalSelfAttention: unknown backend {backend!r}; choose one of "
                             f"{', '.join(map(repr, BACKENDS))}")
        nn = handgrad.nn if backend == "hand" else torch.nn
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # q, k and v projections side by side
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.attention = F.scaled_dot_product_attention if backend == "hand" else composed_attention
        self.n_embd, self.n_head, self.dropout, self.bias, self.backend = n_embd, n_head, dropout, bias, backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        if C != self.n_embd:
            raise ValueError(f"CausalSelfAttention: expected input (batch, tokens, {self.n_embd}), "
                             f"got {tuple(x.shape)}")
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = self.attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # the heads side by side again
        return self.resid_dropout(self.c_proj(y))  # (B, T, C)

    def twin(self, backend: str = "autograd") -> CausalSelfAttention:
        """The same block (weights, dtype, device, train/eval mode) built by ``backend`` (default: the autograd one)."""
        other = CausalSelfAttention(self.n_embd, self.n_head, self.dropout, self.bias, backend)
        other.to(next(self.parameters()))
        other.load_state_dict(self.state_dict())
        return other.train(self.training)

    def extra_repr(self) -> str:
        return f"n_embd={self.n_embd}, n_head={self.n_head}, dropout={self.dropout}, backend={self.backend!r}"
