"""The language models' training step, hand-written backend against its autograd twin, and an epoch of
gpt_chars through Lightning against the same steps in a plain loop.

    python -m handgrad.benchmarks.language_models                  # markdown table to stdout
    python -m handgrad.benchmarks.language_models --repeats 10 --epoch_steps 50

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
from handgrad.benchmarks.timing import time_interleaved
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
        ratios = [h / a for h, a in zip(times["hand"], times["autograd"], strict=True)]
        rows.append(dict(name=name, hand=statistics.median(times["hand"]),
                         autograd=statistics.median(times["autograd"]), ratio=statistics.median(ratios),
                         hand_saved=saved_bytes(hand, x, y), autograd_saved=saved_bytes(twin, x, y)))
    return rows


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
            float(loss)
        results[how] = time.perf_counter() - start
    return dict(steps=steps, **results, ratio=results["lightning"] / results["plain"])


def markdown(rows: list[dict], epoch: dict | None) -> str:
    lines = ["| training step | hand ms | autograd ms | hand / autograd | saved for backward MiB hand / autograd |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {1e3 * r['hand']:.1f} | {1e3 * r['autograd']:.1f} | {r['ratio']:.2f} | "
                     f"{r['hand_saved'] / 2**20:.1f} / {r['autograd_saved'] / 2**20:.1f} |")
    if epoch:
        lines += ["", "| gpt_chars steps | Lightning s | plain loop s | Lightning / plain |", "|---:|---:|---:|---:|",
                  f"| {epoch['steps']} | {epoch['lightning']:.1f} | {epoch['plain']:.1f} | {epoch['ratio']:.2f} |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed turns of each contender (default 10)")
    parser.add_argument("--epoch_steps", type=int, default=100, help="steps of the Lightning row; 0: skip it")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = step_rows(args.repeats)
    epoch = epoch_rows(args.epoch_steps) if args.epoch_steps else None
    print(f"{date.today()}, torch {torch.__version__}, 1 thread, float32, batch {BATCH}, T {T}; step times are "
          f"medians of {args.repeats} interleaved turns (process CPU time); the epoch row is wall time")
    print(markdown(rows, epoch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
