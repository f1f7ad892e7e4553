"""How the benchmarks time: contenders take turns within every repeat, on the wall clock or the CPU clock.

On a machine shared with other jobs a burst of load hits every contender of a repeat alike when they
alternate, and ``clock="cpu"`` (this process's CPU time, with one thread) leaves out the time other
processes hold the cores. Reported values are medians over repeats, and medians of paired ratios.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import lightning as L
import torch

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_interleaved(steps: Mapping[str, Callable[..., object]], repeats: int, chunk_s: float,
                     device: torch.device, clock: str = "wall") -> dict[str, list[float]]:
    """Seconds per step of each contender, one value per repeat; contenders take turns in every repeat.

    clock="cpu" counts this process's CPU time (time.process_time) instead of wall time: on a
    shared machine it leaves out the time other processes hold the cores (use it with one thread).
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    now = CLOCKS[clock]
    names = list(steps)
    chunks = {}
    for name, step in steps.items():  # warm-up (allocator, lazy inits), then size a chunk to ~chunk_s
        for _ in range(5):
            step()
        sync()
        start = time.perf_counter()
        for _ in range(3):
            step()
        sync()
        chunks[name] = max(1, round(chunk_s / ((time.perf_counter() - start) / 3)))  # sized in wall time

    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
            step, chunk = steps[name], chunks[name]
            sync()
            start = now()
            for _ in range(chunk):
                step()
            sync()
            times[name].append((now() - start) / chunk)
    return times


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float],
                 blocks: int = 5) -> tuple[float, float, float]:
    """The median of the repeat-by-repeat ratios numerator / denominator, and the lowest and highest median
    among ``blocks`` equal blocks of the repeats in order: how far the ratio moved as the machine's load did."""
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    parts = [ratios[i * len(ratios) // blocks:(i + 1) * len(ratios) // blocks] for i in range(blocks)]
    block_medians = [statistics.median(part) for part in parts if part]
    return statistics.median(ratios), min(block_medians), max(block_medians)


class EpochTimer(L.Callback):
    """Seconds of each training epoch, by ``clock``. Put first in the callback list, it times from before every
    other callback's on_train_epoch_start to before their on_train_epoch_end (the checkpoint is saved after)."""

    def __init__(self, clock: str):
        self.now, self.seconds = CLOCKS[clock], list[float]()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = self.now()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(self.now() - self.start)
