"""Attention forward + backward: handgrad's (FlashAttention's backward) against autograd of the composed math.

    python -m handgrad.benchmarks.attention                       # T = 256, markdown tables to stdout
    python -m handgrad.benchmarks.attention --length 512 --repeats 20

Contenders, each timed for one forward and one backward from fresh leaves q, k, v (batch, heads, T, head dim):
``hand``, handgrad.functional.scaled_dot_product_attention; ``autograd``, softmax(Q K^T / sqrt(d) + mask) V
composed from torch's ops (handgrad.models_blocks.composed_attention), which keeps the (T, T) probabilities for
backward; ``torch``, torch.nn.functional.scaled_dot_product_attention, torch's own kernel. float32, one
intra-op thread, the thread's CPU time (so a second job on a shared core costs nothing it did not use). The
three alternate call by call, the order flipping every repeat. Reported: medians, the median of the paired
ratios hand / autograd (target <= 1.0) with its lowest and highest median among five blocks of the repeats,
and hand / torch.

Memory: the bytes of every distinct storage autograd saves for backward (torch.autograd.graph.
saved_tensors_hooks), q, k and v included, for each contender (target hand / autograd <= 0.5 at T = 256), and
over T = 64 ... 1024: handgrad's grows as T (O and one log-sum-exp per row beyond the inputs), the composed
math's as T^2. Before timing, ``same_results`` checks that hand and autograd agree (outputs and gradients).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date

import torch
import torch.nn.functional as torch_F

import handgrad.functional as F
from handgrad.benchmarks.timing import paired_ratio
from handgrad.models_blocks import composed_attention

CONTENDERS: dict[str, Callable] = {"hand": F.scaled_dot_product_attention, "autograd": composed_attention,
                                   "torch": torch_F.scaled_dot_product_attention}
BATCH, HEADS, HEAD_DIM = 4, 4, 32  # the timed shape: (4, 4, T, 32), a small GPT's attention


def inputs(length: int, batch: int = 4, heads: int = 4, head_dim: int = 32, seed: int = 0) -> list[torch.Tensor]:
    """q, k, v and an upstream gradient, each (batch, heads, length, head_dim), float32."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, length, head_dim, generator=g) for _ in range(4)]


def forward_backward(attention: Callable, tensors: list[torch.Tensor], is_causal: bool) -> list[torch.Tensor]:
    """The output and the gradients of q, k, v, from fresh leaves."""
    q, k, v = (t.detach().requires_grad_() for t in tensors[:3])
    output = attention(q, k, v, is_causal=is_causal)
    return [output, *torch.autograd.grad(output, (q, k, v), tensors[3])]


def saved_bytes(attention: Callable, tensors: list[torch.Tensor], is_causal: bool) -> int:
    """Bytes of the distinct storages autograd saves for backward in one call (q, k, v included)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    q, k, v = (t.detach().requires_grad_() for t in tensors[:3])
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        attention(q, k, v, is_causal=is_causal)
    return sum(storages.values())


def same_results(tensors: list[torch.Tensor], is_causal: bool) -> bool:
    """Do hand and autograd give the same output and gradients (assert_close's float32 tolerances)?"""
    ours, theirs = (forward_backward(CONTENDERS[name], tensors, is_causal) for name in ("hand", "autograd"))
    return all(torch.allclose(a, b, rtol=1.3e-6, atol=1e-5) for a, b in zip(ours, theirs, strict=True))


def times(tensors: list[torch.Tensor], is_causal: bool, repeats: int, warmup: int = 3) -> dict[str, list[float]]:
    """Seconds of thread CPU time per forward + backward, one value per repeat and contender, interleaved."""
    names = list(CONTENDERS)
    for name in names:
        for _ in range(warmup):
            forward_backward(CONTENDERS[name], tensors, is_causal)
    result: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.thread_time()
            forward_backward(CONTENDERS[name], tensors, is_causal)
            result[name].append(time.thread_time() - start)
    return result


def attention_rows(length: int = 256, repeats: int = 40, batch: int = 4, heads: int = 4,
                   head_dim: int = 32) -> list[dict]:
    """One row per is_causal: median ms of each contender, paired ratios and their spread, saved bytes."""
    tensors = inputs(length, batch, heads, head_dim)
    rows = []
    for is_causal in (True, False):
        measured = times(tensors, is_causal, repeats)
        ratio, low, high = paired_ratio(measured["hand"], measured["autograd"])
        saved = {name: saved_bytes(fn, tensors, is_causal) for name, fn in CONTENDERS.items()}
        rows.append(dict(length=length, is_causal=is_causal, repeats=repeats,
                         **{f"{name}_ms": statistics.median(t) * 1e3 for name, t in measured.items()},
                         ratio=ratio, ratio_low=low, ratio_high=high,
                         torch_ratio=paired_ratio(measured["hand"], measured["torch"])[0],
                         **{f"{name}_saved": n for name, n in saved.items()},
                         saved_ratio=saved["hand"] / saved["autograd"], same_results=same_results(tensors, is_causal)))
    return rows


def saved_bytes_rows(lengths: tuple[int, ...] = (64, 128, 256, 512, 1024), batch: int = 4, heads: int = 4,
                     head_dim: int = 32, is_causal: bool = True) -> list[dict]:
    """Saved bytes of each contender, and hand's and autograd's beyond q, k and v, for each length."""
    rows = []
    for length in lengths:
        tensors = inputs(length, batch, heads, head_dim)
        qkv = 3 * tensors[0].nbytes
        saved = {name: saved_bytes(fn, tensors, is_causal) for name, fn in CONTENDERS.items()}
        rows.append(dict(length=length, **{f"{name}_saved": n for name, n in saved.items()},
                         hand_beyond_qkv=saved["hand"] - qkv, autograd_beyond_qkv=saved["autograd"] - qkv,
                         ratio=saved["hand"] / saved["autograd"]))
    return rows


def mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def markdown(rows: list[dict], memory: list[dict]) -> str:
    lines = ["| T | causal | hand ms | autograd ms | torch ms | hand / autograd (5 blocks) | hand / torch "
             "| saved MiB hand / autograd / torch | saved hand / autograd | same results |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['length']} | {'yes' if r['is_causal'] else 'no'} | {r['hand_ms']:.2f} | "
                     f"{r['autograd_ms']:.2f} | {r['torch_ms']:.2f} | {r['ratio']:.2f} ({r['ratio_low']:.2f}-"
                     f"{r['ratio_high']:.2f}) | {r['torch_ratio']:.2f} | {mib(r['hand_saved'])} / "
                     f"{mib(r['autograd_saved'])} / {mib(r['torch_saved'])} | {r['saved_ratio']:.2f} | "
                     f"{'yes' if r['same_results'] else 'no'} |")
    lines += ["", "| T | saved MiB hand | autograd | torch | hand beyond q, k, v | autograd beyond q, k, v "
              "| hand / autograd |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for m in memory:
        lines.append(f"| {m['length']} | {mib(m['hand_saved'])} | {mib(m['autograd_saved'])} | "
                     f"{mib(m['torch_saved'])} | {mib(m['hand_beyond_qkv'])} | {mib(m['autograd_beyond_qkv'])} | "
                     f"{m['ratio']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=256, help="sequence length T of the timed rows (default 256)")
    parser.add_argument("--repeats", type=int, default=40, help="timed calls of each contender (default 40)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024],
                        help="sequence lengths of the saved-bytes table (causal)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = attention_rows(args.length, args.repeats, BATCH, HEADS, HEAD_DIM)
    memory = saved_bytes_rows(tuple(args.lengths), BATCH, HEADS, HEAD_DIM)
    print(f"{date.today()}, torch {torch.__version__}, 1 thread, float32, batch {BATCH}, {HEADS} heads, head dim "
          f"{HEAD_DIM}; forward + backward, medians of {args.repeats} interleaved calls (thread CPU time)")
    print(markdown(rows, memory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
