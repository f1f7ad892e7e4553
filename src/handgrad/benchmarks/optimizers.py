"""Optimiser step time: handgrad.optim's hand-written updates against torch.optim's foreach implementation.

    python -m handgrad.benchmarks.optimizers                      # Adam and AdamW, markdown table to stdout
    python -m handgrad.benchmarks.optimizers --optimizers SGD RMSprop Adadelta Adagrad --repeats 500

What is timed: ``optimizer.step()`` alone, on the parameters of the 784-256-256-10 MLP (weights and
biases shaped as nn.Linear's, 269,322 numbers) whose .grad holds fixed random values, handgrad's
optimiser against torch's built with ``foreach=True`` (its multi-tensor implementation; on the CPU
torch's default is the for-loop one). One intra-op thread (``torch.set_num_threads(1)``), so a second
core that other jobs hold cannot stall a step.

Method: the two contenders alternate step by step, the order flipping every repeat, so a burst of load
on a shared machine hits both alike. Reported: the median time per step of each, the median of the
paired ratios handgrad / torch (target <= 1.0), and the lowest and highest median ratio among five equal
blocks of the repeats (the spread). Before timing, ``same_path`` checks that ten steps of each from the
same start leave the same parameters, bit for bit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import date

import torch

import handgrad.optim
from handgrad.benchmarks.timing import paired_ratio

MLP_SIZES = (784, 256, 256, 10)
OPTIMIZERS = ("Adam", "AdamW", "SGD", "RMSprop", "Adadelta", "Adagrad")
SETTINGS = {"SGD": dict(lr=0.01, momentum=0.9)}  # the others: torch's defaults


def mlp_parameters(sizes: tuple[int, ...] = MLP_SIZES, seed: int = 0) -> list[torch.Tensor]:
    """An MLP's weights (out, in) and biases (out,), each with a random .grad, in nn.Linear's layout."""
    g = torch.Generator().manual_seed(seed)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        params += [torch.randn(fan_out, fan_in, generator=g) * fan_in**-0.5, torch.zeros(fan_out)]
    for w in params:
        w.grad = torch.randn(w.shape, generator=g)
    return params


def contenders(name: str, sizes: tuple[int, ...] = MLP_SIZES) -> dict[str, torch.optim.Optimizer]:
    """handgrad's optimiser and torch's (foreach=True), each on its own copy of the same parameters."""
    settings = SETTINGS.get(name, {})
    return {"handgrad": getattr(handgrad.optim, name)(mlp_parameters(sizes), **settings),
            "torch_foreach": getattr(torch.optim, name)(mlp_parameters(sizes), foreach=True, **settings)}


def same_path(name: str, steps: int = 10, sizes: tuple[int, ...] = MLP_SIZES) -> bool:
    """Do ``steps`` steps of handgrad's and torch's foreach optimiser leave the same parameters, bit for bit?"""
    optimizers = contenders(name, sizes)
    for optimizer in optimizers.values():
        for _ in range(steps):
            optimizer.step()
    ours, theirs = ([w for group in o.param_groups for w in group["params"]] for o in optimizers.values())
    return all(torch.equal(w, v) for w, v in zip(ours, theirs, strict=True))


def step_times(optimizers: dict[str, torch.optim.Optimizer], repeats: int, warmup: int = 20) -> dict[str, list[float]]:
    """Seconds of each optimiser's step(), one value per repeat; the two alternate, the first flipping each repeat."""
    names = list(optimizers)
    for optimizer in optimizers.values():
        for _ in range(warmup):
            optimizer.step()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            optimizers[name].step()
            times[name].append(time.perf_counter() - start)
    return times


def optimizer_rows(names: tuple[str, ...] = ("Adam", "AdamW"), repeats: int = 2000,
                   sizes: tuple[int, ...] = MLP_SIZES) -> list[dict]:
    """One row per optimiser: median us per step of each contender, the median paired ratio and its spread."""
    rows = []
    for name in names:
        times = step_times(contenders(name, sizes), repeats)
        ratio, low, high = paired_ratio(times["handgrad"], times["torch_foreach"])
        rows.append(dict(optimizer=name, settings=SETTINGS.get(name, {}), parameters=sum(
            a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True)), repeats=repeats,
            handgrad_us=statistics.median(times["handgrad"]) * 1e6,
            torch_foreach_us=statistics.median(times["torch_foreach"]) * 1e6,
            ratio=ratio, ratio_low=low, ratio_high=high,
            same_path=same_path(name, sizes=sizes)))
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| optimizer | handgrad us / step | torch foreach us / step | handgrad / torch | "
             "spread (5 blocks) | same parameters after 10 steps |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        lines.append(f"| {r['optimizer']}{f' ({settings})' if settings else ''} | {r['handgrad_us']:.0f} | "
                     f"{r['torch_foreach_us']:.0f} | {r['ratio']:.3f} | {r['ratio_low']:.3f}-{r['ratio_high']:.3f} | "
                     f"{'yes' if r['same_path'] else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=["Adam", "AdamW"])
    parser.add_argument("--repeats", type=int, default=2000, help="timed steps of each contender (default 2000)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = optimizer_rows(tuple(args.optimizers), args.repeats)
    n = rows[0]["parameters"]
    print(f"{date.today()}, torch {torch.__version__}, 1 thread, {'-'.join(map(str, MLP_SIZES))} MLP "
          f"({n:,} parameters), medians of {args.repeats} interleaved steps")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
