"""The language models' training step, hand-written backend against its autograd twin, and an epoch of
gpt_chars through Lightning against the same steps in a plain loop.

    python -m handgrad.benchmarks.language_models                  # markdown table to stdout
    python -m handgrad.benchmarks.language_models --repeats 10 --epoch_steps 50
    python -m handgrad.benchmarks.language_models --ops                # and the GPT's ops one by one

Rows:
- a training step (forward, cross-entropy, backward, handgrad's AdamW step) of configs/gpt_chars.yaml's
  GPT (2 layers, 4 heads, width 64, T = 64, batch 32, vocabulary 103) and of lstm_chars.yaml's CharLSTM
  (width 64, one layer of 256), hand backend and autograd twin on the same weights and batch, taking
  turns (handgrad.benchmarks.timing.time_interleaved, CPU time of this process, one thread): the medians
  and their ratio (target hand / autograd <= 1.0); and the bytes each saves for backward in one forward
  (distinct storages that autograd keeps, the parameters excluded).
- ``--epoch_steps`` optimiser steps of gpt_chars through ``LanguageModel.training_step`` in a Lightning
  Trainer (no validation, logging or checkpoints) against the same steps in a plain loop over the same
  chunks (target Lightning / plain <= 1.2).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from functools import partial

import lightning as L
import torch
import torch.nn.functional as torch_F

import handgrad.functional as F
from handgrad.benchmarks.timing import paired_ratio, time_interleaved
from handgrad.lm_module import LanguageModel, clip_grad_norm
from handgrad.models_lm import GPT, CharLSTM
from handgrad.optim import AdamW
from handgrad.text_data import TextDataModule

VOCAB, T, BATCH = 103, 64, 32
MODELS: dict[str, Callable[[str], GPT | CharLSTM]] = {
    "GPT (gpt_chars)": lambda backend: GPT(VOCAB, T, n_layer=2, n_head=4, n_embd=64, backend=backend),
    "CharLSTM (lstm_chars)": lambda backend: CharLSTM(VOCAB, 64, 256, 1, block_size=T, backend=backend),
}


def training_step(model: torch.nn.Module, optimizer: AdamW, x: torch.Tensor, y: torch.Tensor):
    cost = F.cross_entropy if model.backend == "hand" else torch_F.cross_entropy
    loss = cost(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def saved_bytes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for backward in one forward and loss (parameters excluded)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        pointer = t.untyped_storage().data_ptr()
        if pointer not in parameters:
            storages[pointer] = t.untyped_storage().nbytes()
        return t

    cost = F.cross_entropy if model.backend == "hand" else torch_F.cross_entropy
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        cost(model(x).flatten(0, 1), y.flatten())
    return sum(storages.values())


def step_rows(repeats: int) -> list[dict]:
    rows = []
    data = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, VOCAB, (BATCH, T), generator=data) for _ in range(2))
    for name, build in MODELS.items():
        torch.manual_seed(0)
        hand = build("hand")
        twin = hand.twin()
        steps = {backend: partial(training_step, model, AdamW(model.parameters(), 1e-4), x, y)
                 for backend, model in (("hand", hand), ("autograd", twin))}
        times = time_interleaved(steps, repeats, chunk_s=0.3, device=torch.device("cpu"), clock="cpu")
        rows.append(dict(name=name, hand=statistics.median(times["hand"]),
                         autograd=statistics.median(times["autograd"]),
                         ratio=paired_ratio(times["hand"], times["autograd"])[0],
                         hand_saved=saved_bytes(hand, x, y), autograd_saved=saved_bytes(twin, x, y)))
    return rows


def op_rows(repeats: int) -> list[dict]:
    """Forward + backward of each op of the GPT at gpt_chars's sizes, hand-written against torch's."""
    from handgrad.models_blocks import composed_attention

    g = torch.Generator().manual_seed(0)
    target, ids = torch.randint(0, VOCAB, (BATCH * T,), generator=g), torch.randint(0, VOCAB, (BATCH, T), generator=g)
    heads: list[tuple[int, ...]] = [(BATCH, 4, T, 16)] * 3
    Op = Callable[..., torch.Tensor]
    ops: dict[str, tuple[Op, Op, list[tuple[int, ...]]]] = {  # name: (hand, torch, input shapes)
        "gelu (32, 64, 256)": (F.gelu, torch_F.gelu, [(BATCH, T, 256)]),
        "causal attention (32, 4, 64, 16)": (partial(F.scaled_dot_product_attention, is_causal=True),
                                             partial(composed_attention, is_causal=True), heads),
        "layer_norm (32, 64, 64)": (lambda x, w: F.layer_norm(x, (64,), w),
                                    lambda x, w: torch_F.layer_norm(x, (64,), w), [(BATCH, T, 64), (64,)]),
        "linear (2048, 64) -> 256": (F.linear, torch_F.linear, [(BATCH * T, 64), (256, 64)]),
        "cross_entropy (2048, 103)": (lambda x: F.cross_entropy(x, target), lambda x: torch_F.cross_entropy(x, target),
                                      [(BATCH * T, VOCAB)]),
        "embedding (32, 64) of (103, 64)": (lambda w: F.embedding(ids, w), lambda w: torch_F.embedding(ids, w),
                                            [(VOCAB, 64)]),
    }
    rows = []
    for name, (hand, reference, shapes) in ops.items():
        inputs = [torch.randn(*shape, generator=g, requires_grad=True) for shape in shapes]
        steps = {"hand": partial(_forward_backward, hand, inputs),
                 "autograd": partial(_forward_backward, reference, inputs)}
        times = time_interleaved(steps, repeats, chunk_s=0.1, device=torch.device("cpu"), clock="cpu")
        rows.append(dict(name=name, hand=statistics.median(times["hand"]),
                         autograd=statistics.median(times["autograd"]),
                         ratio=paired_ratio(times["hand"], times["autograd"])[0]))
    return rows


def _forward_backward(op, inputs: list[torch.Tensor]) -> None:
    op(*inputs).sum().backward()


class _NoLog(LanguageModel):
    def log_dict(self, *args, **kwargs) -> None:  # the plain loop logs nothing either
        pass


def epoch_rows(steps: int) -> dict:
    """Seconds for ``steps`` optimiser steps of gpt_chars through Lightning and through a plain loop."""
    data = TextDataModule(block_size=T, batch_size=BATCH, chunk_size=BATCH * 25)
    results = {}
    for how in ("plain", "lightning"):
        torch.manual_seed(0)
        model = _NoLog(GPT(len(data.vocab), T, 2, 4, 64), vocab=data.vocab, warmup_steps=100, decay_steps=2000)
        if how == "lightning":
            trainer = L.Trainer(max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
            start = time.perf_counter()
            trainer.fit(model, datamodule=data)
        else:
            optimizer = model.configure_optimizers()
            parameters = list(model.net.parameters())
            x, y = data.splits["train"]
            start = time.perf_counter()
            for step in range(steps):  # the same loop body as LanguageModel.training_step, without Lightning
                for group in optimizer.param_groups:
                    group["lr"] = 1e-3
                xb, yb = x[step * BATCH:(step + 1) * BATCH], y[step * BATCH:(step + 1) * BATCH]
                loss = F.cross_entropy(model.net(xb).flatten(0, 1), yb.flatten(), ignore_index=-100)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                clip_grad_norm(parameters, 1.0)
                optimizer.step()
            float(loss.detach())  # wait for the last step, as Lightning's divergence check does
        results[how] = time.perf_counter() - start
    return dict(steps=steps, **results, ratio=results["lightning"] / results["plain"])


def markdown(rows: list[dict], epoch: dict | None, ops: list[dict] | None = None) -> str:
    lines = ["| training step | hand ms | autograd ms | hand / autograd | saved for backward MiB hand / autograd |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {1e3 * r['hand']:.1f} | {1e3 * r['autograd']:.1f} | {r['ratio']:.2f} | "
                     f"{r['hand_saved'] / 2**20:.1f} / {r['autograd_saved'] / 2**20:.1f} |")
    if ops:
        lines += ["", "| op, forward + backward | hand ms | torch ms | hand / torch |", "|---|---:|---:|---:|"]
        lines += [f"| {r['name']} | {1e3 * r['hand']:.2f} | {1e3 * r['autograd']:.2f} | {r['ratio']:.2f} |"
                  for r in ops]
    if epoch:
        lines += ["", "| gpt_chars steps | Lightning s | plain loop s | Lightning / plain |", "|---:|---:|---:|---:|",
                  f"| {epoch['steps']} | {epoch['lightning']:.1f} | {epoch['plain']:.1f} | {epoch['ratio']:.2f} |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed turns of each contender (default 10)")
    parser.add_argument("--epoch_steps", type=int, default=100, help="steps of the Lightning row; 0: skip it")
    parser.add_argument("--ops", action="store_true", help="also time the GPT's ops one by one, hand against torch")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = step_rows(args.repeats)
    epoch = epoch_rows(args.epoch_steps) if args.epoch_steps else None
    ops = op_rows(args.repeats) if args.ops else None
    print(f"{date.today()}, torch {torch.__version__}, 1 thread, float32, batch {BATCH}, T {T}; step times are "
          f"medians of {args.repeats} interleaved turns (process CPU time); the epoch row is wall time")
    print(markdown(rows, epoch, ops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
