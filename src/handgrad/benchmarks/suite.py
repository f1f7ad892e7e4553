"""Do hand-written gradients cost anything? Training-step time and memory, hand vs autograd, and what
Lightning adds to an epoch: the command line of the benchmark (scripts/benchmark.py).

    python scripts/benchmark.py                 # every row; markdown to stdout, JSON to logs/benchmarks/
    python scripts/benchmark.py --quick         # fewer, shorter repeats: a smoke run
    python scripts/benchmark.py --device cuda   # the same rows on the GPU, fp32 and bf16 autocast
    python scripts/benchmark.py --breakdown     # where a nielsen_ch1 step goes: optimizer, zero_grad, threads
    python scripts/benchmark.py --threads 1 --clock cpu   # on a shared CPU box: one thread, this process's CPU time

Row groups:
  1. Step time (handgrad.benchmarks.step_time): zero_grad, forward, loss, backward and SGD update of each
     hand-written backend (handgrad.benchmarks.networks), against its autograd twin built with the same weights.
  2. Memory (the same module): bytes saved for backward in one step; on CUDA, the step's peak memory.
  3. End to end (handgrad.benchmarks.end_to_end, CPU): nielsen_ch1 epochs through Lightning, as
     handgrad-train runs them, against the plain PyTorch loop and steps.bare_epoch. Needs MNIST.
  4. With CUDA: groups 1 and 2 on the GPU, in fp32 and under bf16 autocast.
  5. Layers and optimisers (CPU, one thread, thread CPU time): attention forward + backward and its bytes
     saved for backward over T (handgrad.benchmarks.attention), LSTM and GRU over a sequence
     (handgrad.benchmarks.recurrent), an Adam / AdamW step (handgrad.benchmarks.optimizers). Each module
     also runs alone: ``python -m handgrad.benchmarks.attention`` and so on.

Method (handgrad.benchmarks.timing): a row's contenders live in one process and take turns within every
repeat (the order rotates), so a burst of load on a shared machine hits them alike. A repeat times a
chunk of steps sized to ~``--chunk-ms``, after warm-up steps. Reported: the median over repeats of the
time per step, and the median over repeats of the paired ratio backend / autograd.
On a CPU shared with other jobs, two intra-op threads can make a small step 10-200x slower
(threads wait on each other while the cores are busy), so use --threads 1 there. --threads does
not reach numpy's OpenBLAS, which TensorBoard's histograms call (row group 3): its own thread pool
then spins beside the training thread, so this module sets OPENBLAS_NUM_THREADS=1 before numpy loads
(an explicit value in the environment wins).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads (with torch, below)

import argparse
import json
import platform
import sys
from datetime import datetime
from pathlib import Path

import torch

from handgrad.benchmarks import attention, optimizers, recurrent
from handgrad.benchmarks.breakdown import breakdown
from handgrad.benchmarks.end_to_end import end_to_end_markdown, end_to_end_rows
from handgrad.benchmarks.step_time import markdown, step_time_rows
from handgrad.benchmarks.timing import CLOCKS

GROUPS = ("steps", "end_to_end", "attention", "recurrent", "optimizers")


def layer_rows(groups: list[str], quick: bool) -> dict[str, list[dict]]:
    """Row group 5, each module's rows at its own defaults (fewer repeats with --quick), on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows: dict[str, list[dict]] = {}
    if "attention" in groups:
        rows["attention"] = attention.attention_rows(repeats=5 if quick else 40)
        rows["attention_memory"] = attention.saved_bytes_rows((64, 128) if quick else (64, 128, 256, 512, 1024))
    if "recurrent" in groups:
        rows["recurrent"] = recurrent.recurrent_rows(repeats=3 if quick else 30)
    if "optimizers" in groups:
        rows["optimizers"] = optimizers.optimizer_rows(repeats=50 if quick else 2000)
    torch.set_num_threads(threads)
    return rows


def layer_markdown(rows: dict[str, list[dict]]) -> str:
    parts = []
    if "attention" in rows:
        parts.append("Attention, forward + backward (float32, batch 4, 4 heads, head dim 32):\n\n"
                     + attention.markdown(rows["attention"], rows["attention_memory"]))
    if "recurrent" in rows:
        parts.append("Recurrent layers over a sequence (forward + backward of one layer):\n\n"
                     + recurrent.markdown(rows["recurrent"]))
    if "optimizers" in rows:
        parts.append("Optimiser step on the 784-256-256-10 MLP's parameters:\n\n"
                     + optimizers.markdown(rows["optimizers"]))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=31, help="timed repeats per contender (median reported)")
    parser.add_argument("--chunk-ms", type=float, default=40.0, help="target duration of one timed chunk of steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when available); on cuda, bf16 autocast rows are added")
    parser.add_argument("--quick", action="store_true", help="7 repeats of 10 ms chunks: a smoke run")
    parser.add_argument("--bf16", action="store_true", help="also the bf16 autocast rows on cpu")
    parser.add_argument("--only", type=int, nargs="*", help="only the rows with these batch sizes")
    parser.add_argument("--breakdown", action="store_true", help="also time optimizer, zero_grad, thread counts")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for the run (default: torch's)")
    parser.add_argument("--clock", choices=CLOCKS, default="wall",
                        help="wall time, or this process's CPU time (robust on a shared machine with --threads 1)")
    parser.add_argument("--name", help="JSON file name under logs/benchmarks/ (default: a timestamp)")
    parser.add_argument("--out-dir", type=Path, default=Path("logs/benchmarks"),
                        help="where the JSON goes (default: logs/benchmarks, under the current folder)")
    parser.add_argument("--groups", nargs="*", choices=GROUPS, default=list(GROUPS),
                        help="steps: row groups 1, 2 (and 4 on CUDA); end_to_end: row group 3 (needs MNIST); "
                             "attention, recurrent, optimizers: row group 5")
    parser.add_argument("--data-root", default="data",
                        help="row group 3: the folder holding MNIST/raw/ (on the dev machine: ../shared/data)")
    parser.add_argument("--e2e-repeats", type=int, default=5, help="row group 3: repeats (median reported)")
    parser.add_argument("--e2e-epochs", type=int, default=2, help="row group 3: epochs a run, the first untimed")
    parser.add_argument("--e2e-examples", type=int,
                        help="row group 3: training examples an epoch at both batch sizes (default: 50,000 at "
                             "batch 10, the config's split; 5,000 at batch 1)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.chunk_ms = 7, 10.0
        args.e2e_repeats = min(args.e2e_repeats, 2)
    if args.e2e_epochs < 2:
        parser.error("--e2e-epochs must be >= 2: the first epoch of a run is a warm-up")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    results = step_time_rows(device, autocast=False, args=args) if "steps" in args.groups else []
    if "steps" in args.groups and (device.type == "cuda" or args.bf16):
        results += step_time_rows(device, autocast=True, args=args)
    end_to_end = end_to_end_rows(args) if "end_to_end" in args.groups and device.type == "cpu" else []
    parts = breakdown(args) if args.breakdown else []
    layers = layer_rows(args.groups, args.quick) if device.type == "cpu" else {}

    if results:
        print(markdown(results))
    if end_to_end:
        print("\n" + end_to_end_markdown(end_to_end))
    for part in parts:
        print(f"- {part['part']} ({part['threads']} threads): {part['step_us']:.1f} us")
    if layers:
        print("\n" + layer_markdown(layers))

    meta = dict(torch=torch.__version__, python=platform.python_version(), machine=platform.machine(),
                cpu_count=os.cpu_count(), threads=torch.get_num_threads(), device=str(device),
                cuda=torch.cuda.get_device_name() if device.type == "cuda" else None,
                time=datetime.now().isoformat(timespec="seconds"), args={**vars(args), "out_dir": str(args.out_dir)})
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"{args.name or datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(dict(meta=meta, step_rows=results, end_to_end_rows=end_to_end, breakdown=parts,
                                          layer_rows=layers),
                               indent=1))
    print(f"\nsaved {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
