"""Language models: a GPT and a character LSTM, each with a hand-written and an autograd backend.

    gpt = GPT(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)   # handgrad.nn layers
    twin = gpt.twin()                                  # torch.nn layers, the same weights
    logits = gpt(idx)                                  # idx (B, T) int64 -> (B, T, vocab_size)
    lstm = CharLSTM(vocab_size=65, n_embd=64, hidden_size=256, num_layers=2)
    text = generate(gpt, prompt_ids, 200, temperature=0.8, top_k=10)

As in handgrad.models, both backends create the same parameters under the same names (nanoGPT's for
the GPT: ``transformer.wte.weight``, ``transformer.h.0.attn.c_attn.weight``, ..., ``lm_head.weight``),
drawn in the same order from the same random stream, so two models built after the same
torch.manual_seed are equal and ``twin.load_state_dict(model.state_dict())`` works both ways.

The GPT's output head is tied to the token embedding (``lm_head.weight is transformer.wte.weight``):
the one matrix gets two gradient contributions, the embedding's scatter-add and the head's
grad_W = grad_logits^T x, which autograd sums in the shared leaf's .grad.

References: Radford et al., "Language Models are Unsupervised Multitask Learners", 2019 (GPT-2: pre-LN
blocks, a final LayerNorm, N(0, 0.02) weights, residual projections scaled by 1 / sqrt(2 n_layer));
Karpathy, nanoGPT model.py (names and layout) and char-rnn (the character LSTM); Press & Wolf, "Using
the Output Embedding to Improve Language Models", 2017 (weight tying).
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import torch

import handgrad.nn
from handgrad.functional.residual import residual_add
from handgrad.models_blocks import BACKENDS, CausalSelfAttention

M = TypeVar("M", bound=torch.nn.Module)


def _layers(backend: str, who: str) -> Any:  # the module handgrad.nn or torch.nn
    """handgrad.nn for the hand backend, torch.nn for the autograd one; a ValueError for anything else."""
    if backend not in BACKENDS:
        raise ValueError(f"{who}: unknown backend {backend!r}; choose one of {', '.join(map(repr, BACKENDS))}")
    return handgrad.nn if backend == "hand" else torch.nn


class MLP(torch.nn.Module):
    """A GPT block's second half: x (B, T, C) -> c_fc (B, T, 4C) -> GELU -> c_proj (B, T, C) -> dropout."""

    def __init__(self, n_embd: int, dropout: float, bias: bool, backend: str):
        super().__init__()
        nn = _layers(backend, "MLP")
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class Block(torch.nn.Module):
    """A pre-LayerNorm transformer block: x + attn(ln_1(x)), then that + mlp(ln_2(that)); (B, T, C) -> (B, T, C)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool, backend: str):
        super().__init__()
        nn = _layers(backend, "Block")
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias, backend)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias, backend)
        self.add = residual_add if backend == "hand" else torch.add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.add(x, self.attn(self.ln_1(x)))  # the residual stream carries x past each half
        return self.add(x, self.mlp(self.ln_2(x)))


class Transformer(torch.nn.Module):
    """The GPT's body, under nanoGPT's names: embeddings wte and wpe, dropout, the blocks h, the final ln_f."""

    def __init__(self, nn: Any, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int,
                 dropout: float, bias: bool, backend: str):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.h = torch.nn.ModuleList(Block(n_embd, n_head, dropout, bias, backend) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)


class GPT(torch.nn.Module):
    """GPT-2's architecture at any size: a decoder-only transformer over a vocabulary of tokens.

        idx                                    (B, T) token ids, T <= block_size
        x = wte(idx) + wpe(0..T-1)             (B, T, C)   token and position embeddings, then dropout
        x = h[n_layer - 1](... h[0](x))        (B, T, C)   pre-LN blocks (Block)
        logits = lm_head(ln_f(x))              (B, T, V)   lm_head.weight is wte.weight (tied)

    Args:
        vocab_size: V, the number of distinct tokens (the command line sets it from the data).
        block_size: the longest context, positions in wpe (the command line sets it from the data).
        n_layer: transformer blocks.
        n_head: attention heads per block.
        n_embd: the width C, a multiple of n_head.
        dropout: after the embeddings, on the attention weights and after each residual branch; 0 is off.
        bias: biases in the Linear and LayerNorm layers (GPT-2: true).
        backend: "hand" (handgrad.nn layers, every gradient hand-written) or "autograd" (torch.nn's).

    Weights: N(0, 0.02) for every Linear and Embedding, zero biases, and N(0, 0.02 / sqrt(2 n_layer))
    for the projections that end each residual branch (attn.c_proj, mlp.c_proj): GPT-2's initialisation.
    """

    def __init__(self, vocab_size: int, block_size: int = 64, n_layer: int = 4, n_head: int = 4, n_embd: int = 128,
                 dropout: float = 0.0, bias: bool = True, backend: str = "hand"):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("block_size", block_size), ("n_layer", n_layer)):
            if value < 1:
                raise ValueError(f"GPT: {name}={value} must be >= 1")
        nn = _layers(backend, "GPT")
        self.spec: dict[str, Any] = dict(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
                         n_embd=n_embd, dropout=dropout, bias=bias)
        self.backend, self.block_size = backend, block_size
        self.add = residual_add if backend == "hand" else torch.add
        self.transformer = Transformer(nn, vocab_size, block_size, n_layer, n_head, n_embd, dropout, bias, backend)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one matrix, two uses
        self.apply(_gpt2_init)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        if T > self.block_size:
            raise ValueError(f"GPT: a context of {T} tokens is longer than block_size={self.block_size}; "
                             f"crop it to the last {self.block_size} tokens")
        positions = torch.arange(T, device=idx.device)  # (T,)
        body = self.transformer
        x = body.drop(self.add(body.wte(idx), body.wpe(positions)))  # (B, T, C) + (T, C)
        for block in body.h:
            x = block(x)  # (B, T, C)
        return self.lm_head(body.ln_f(x))  # (B, T, V)

    def twin(self, backend: str = "autograd") -> GPT:
        """The same model (weights, dtype, device, train/eval mode) built by ``backend`` (default: autograd)."""
        return _twin(self, GPT(**self.spec, backend=backend))

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, " + ", ".join(f"{k}={v!r}" for k, v in self.spec.items())


def _gpt2_init(module: torch.nn.Module) -> None:
    if isinstance(module, torch.nn.Linear):
        torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            torch.nn.init.zeros_(module.bias)
    elif isinstance(module, torch.nn.Embedding):
        torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)


class CharLSTM(torch.nn.Module):
    """A character-level LSTM language model (char-rnn):

        idx                          (B, T) token ids
        x = embedding(idx)           (B, T, n_embd)
        h, state = lstm(x, state)    (B, T, hidden_size); state = (h_n, c_n), each (num_layers, B, hidden_size)
        logits = head(h)             (B, T, V)

    Args:
        vocab_size: V, the number of distinct tokens (the command line sets it from the data).
        n_embd: the embedding width.
        hidden_size: the LSTM's state width.
        num_layers: stacked LSTM layers.
        dropout: between stacked LSTM layers and before the head; 0 is off.
        block_size: the context of the training windows (the command line sets it from the data); the LSTM
            itself takes any length.
        backend: "hand" (handgrad.nn layers) or "autograd" (torch.nn's). Weights: torch's default initialisation.
    """

    def __init__(self, vocab_size: int, n_embd: int = 64, hidden_size: int = 256, num_layers: int = 2,
                 dropout: float = 0.0, block_size: int = 128, backend: str = "hand"):
        super().__init__()
        nn = _layers(backend, "CharLSTM")
        self.spec: dict[str, Any] = dict(vocab_size=vocab_size, n_embd=n_embd, hidden_size=hidden_size,
                                         num_layers=num_layers, dropout=dropout, block_size=block_size)
        self.backend, self.block_size = backend, block_size
        self.embedding = nn.Embedding(vocab_size, n_embd)
        self.lstm = nn.LSTM(n_embd, hidden_size, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, idx: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None,
                return_state: bool = False) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        h, state = self.lstm(self.embedding(idx), state)  # (B, T, hidden_size)
        logits = self.head(self.drop(h))  # (B, T, V)
        return (logits, state) if return_state else logits

    def twin(self, backend: str = "autograd") -> CharLSTM:
        """The same model (weights, dtype, device, train/eval mode) built by ``backend`` (default: autograd)."""
        return _twin(self, CharLSTM(**self.spec, backend=backend))

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, " + ", ".join(f"{k}={v!r}" for k, v in self.spec.items())


def _twin(model: torch.nn.Module, other: M) -> M:
    other.to(next(model.parameters()))
    other.load_state_dict(model.state_dict())
    return other.train(model.training)


@torch.no_grad()
def generate(model: torch.nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample ``max_new_tokens`` tokens after the context idx (B, T); returns (B, T + max_new_tokens).

    Each new token is drawn from softmax(logits / temperature) of the last position, restricted to the
    ``top_k`` most likely tokens if given; temperature 0 takes the most likely token (greedy). The GPT
    sees the last block_size tokens; the LSTM reads the prompt once and then carries its state forward."""
    recurrent = isinstance(model, CharLSTM)
    state = None
    feed = idx
    for _ in range(max_new_tokens):
        if recurrent:
            logits, state = model(feed, state, return_state=True)
        else:
            logits = model(idx[:, -model.block_size:])  # type: ignore[operator]
        logits = logits[:, -1, :].float()  # (B, V)
        if temperature == 0:
            next_id = logits.argmax(-1, keepdim=True)  # (B, 1)
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.size(-1):
                kth = torch.topk(logits, top_k).values[:, -1:]  # (B, 1)
                logits = logits.masked_fill(logits < kth, -math.inf)
            next_id = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)  # (B, 1)
        idx = torch.cat([idx, next_id], 1)
        feed = next_id
    return idx
