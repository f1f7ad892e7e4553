"""Row groups 1 and 2 (and 4, on CUDA): the time of one training step and the bytes it saves for backward,
each hand-written backend against its autograd twin (handgrad.benchmarks.networks).

A step is zero_grad, forward, loss, backward and SGD update. Before timing, each backend's first step
must give autograd's loss and gradients. Memory: bytes of the distinct storages saved for backward in
one step, counted exactly with torch.autograd.graph.saved_tensors_hooks (with and without the
parameters, which exist anyway); on CUDA also the step's torch.cuda.max_memory_allocated above the
memory in use before it.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
from collections.abc import Callable
from typing import Any, cast

import torch

from handgrad.benchmarks.networks import BACKENDS, ROWS, Network, build, lenet_networks, make_batch, sequential
from handgrad.benchmarks.timing import time_interleaved

LENET_ROWS = {"LeNet-5": False, "LeNet-5, batch norm (configs/lenet5.yaml)": True}  # label -> batch_norm


def bf16_autocast(device: torch.device, enabled: bool):
    """torch.autocast to bf16, or a no-op context (even a disabled torch.autocast costs ~6 us a step)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def training_step(net: Network, x: torch.Tensor, target: torch.Tensor, autocast: bool = False) -> torch.Tensor:
    """zero_grad, forward, loss, backward, update: one step of SGD."""
    if net.update is not None:  # no autograd, and the update takes the gradients directly
        assert net.loss_and_grads is not None
        with torch.no_grad():  # the training loop enters it once per chunk
            loss, grads = net.loss_and_grads(x, target)
            net.update(grads)
        return loss
    if net.loss_and_grads is not None:  # no autograd: the gradients are computed, then handed to the optimizer
        loss, grads = net.loss_and_grads(x, target)
        for p, grad in zip(net.model.parameters(), grads, strict=True):
            p.grad = grad
    else:
        net.optimizer.zero_grad()
        with bf16_autocast(x.device, autocast):
            loss = net.loss(x, target)
        loss.backward()
    net.optimizer.step()
    return loss


def first_step_gradients(net: Network, x, target, autocast: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    if net.loss_and_grads is not None:
        loss, grads = net.loss_and_grads(x, target)
        return loss.float(), grads
    net.optimizer.zero_grad()
    with bf16_autocast(x.device, autocast):
        loss = net.loss(x, target)
    loss.backward()
    return loss.detach().float(), [cast(torch.Tensor, p.grad).clone() for p in net.model.parameters()]


def check_first_step(nets: dict[str, Network], x, target, autocast: bool) -> dict[str, str]:
    """Assert every backend's loss and gradients equal autograd's on the same weights and batch.

    Returns the backends that raise a RuntimeError instead (e.g. a backward that cannot run
    under autocast), with the error; a backend that runs but disagrees fails the benchmark.
    """
    tolerance: dict[str, Any]
    if autocast:
        tolerance = dict(rtol=1.6e-2, atol=1e-2)  # bf16 keeps ~3 significant digits
    elif x.device.type == "cuda":
        tolerance = dict(rtol=1e-4, atol=1e-5)  # cuBLAS may pick different kernels (split-k) for the two
    else:
        tolerance = {}  # torch.testing.assert_close's float32 defaults
    expected_loss, expected_grads = first_step_gradients(nets["autograd"], x, target, autocast)
    failures = {}
    for name, net in nets.items():
        try:
            loss, grads = first_step_gradients(net, x, target, autocast)
        except RuntimeError as error:
            failures[name] = str(error).splitlines()[0]
            continue
        torch.testing.assert_close(loss, expected_loss, **tolerance, msg=prefixed(f"{name} loss"))
        for i, (grad, expected) in enumerate(zip(grads, expected_grads, strict=True)):
            torch.testing.assert_close(grad, expected, **tolerance, msg=prefixed(f"{name} grad {i}"))
    return failures


def prefixed(prefix: str) -> Callable[[str], str]:
    """torch.testing.assert_close's message, after ``prefix``."""
    return lambda message: f"{prefix}: {message}"


def saved_bytes(net: Network, x, target, autocast: bool) -> tuple[int, int]:
    """(all, excluding parameters): bytes of the distinct storages one step saves for backward."""
    storages = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    net.optimizer.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), bf16_autocast(x.device, autocast):
        loss = net.loss(x, target)
    loss.backward()
    parameters = {p.untyped_storage().data_ptr() for p in net.model.parameters()}
    return sum(storages.values()), sum(n for ptr, n in storages.items() if ptr not in parameters)


def cuda_peak_bytes(net: Network, x, target, autocast: bool) -> int:
    """torch.cuda.max_memory_allocated during one step, above what was allocated before it."""
    training_step(net, x, target, autocast)  # the optimizer state and .grad exist from here on
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    training_step(net, x, target, autocast)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def summarize(times: dict[str, list[float]], batch: int) -> dict[str, dict]:
    base = times["autograd"]
    return {name: dict(step_us=statistics.median(ts) * 1e6, us_per_example=statistics.median(ts) * 1e6 / batch,
                       ratio=statistics.median(t / b for t, b in zip(ts, base, strict=True)),
                       repeats_us=[t * 1e6 for t in ts])
            for name, ts in times.items()}


def bench_row(label: str, batch: int, nets: dict[str, Network], x, target, device, autocast, args) -> list[dict]:
    dtype = "bf16 autocast" if autocast else "fp32"
    failures = check_first_step(nets, x, target, autocast)
    nets = {name: net for name, net in nets.items() if name not in failures}
    steps = {name: (lambda net=net: training_step(net, x, target, autocast)) for name, net in nets.items()}
    stats = summarize(time_interleaved(steps, args.repeats, args.chunk_ms / 1e3, device, args.clock), batch)
    results = []
    for name, net in nets.items():
        # without autograd nothing is saved for a backward: the step holds the same tensors, briefly
        saved, saved_activations = saved_bytes(net, x, target, autocast) if net.loss_and_grads is None else (None, None)
        result = dict(network=label, batch=batch, device=device.type, dtype=dtype, backend=name,
                      saved_bytes=saved, saved_bytes_without_params=saved_activations, **stats[name])
        if device.type == "cuda":
            result["cuda_peak_bytes"] = cuda_peak_bytes(net, x, target, autocast)
        results.append(result)
        print(f"  {label} b{batch} {dtype} {name}: {result['step_us']:.0f} us/step, x{result['ratio']:.2f}",
              file=sys.stderr)
    for name, error in failures.items():
        results.append(dict(network=label, batch=batch, device=device.type, dtype=dtype, backend=name, error=error))
        print(f"  {label} b{batch} {dtype} {name}: FAILS: {error}", file=sys.stderr)
    return results


def step_time_rows(device: torch.device, autocast: bool, args) -> list[dict]:
    """Row groups 1 and 2 (and 4, on CUDA): every row, every backend."""
    results = []
    for row in ROWS if not args.only else [r for r in ROWS if r.batch in args.only]:
        torch.manual_seed(0)
        state_dict = torch.nn.Sequential(*sequential(row.sizes, row.activation, row.output_activation)).state_dict()
        backends = [b for b in BACKENDS if not (autocast and b in ("no_autograd", "fused_step"))]  # fp32 only
        nets = {backend: build(row, backend, state_dict, device) for backend in backends}
        x, target = make_batch(row, device)
        results += bench_row(row.name, row.batch, nets, x, target, device, autocast, args)

    for label, batch_norm in LENET_ROWS.items():
        lenet = lenet_networks(device, batch_norm) if not args.only or 128 in args.only else \
            "not among --only's batch sizes"
        if isinstance(lenet, str):
            print(f"note: {label} row skipped: {lenet}", file=sys.stderr)
            continue
        g = torch.Generator().manual_seed(0)
        x = torch.rand(128, 1, 28, 28, generator=g).to(device)  # (N, C, H, W) MNIST-shaped
        target = torch.randint(10, (128,), generator=g).to(device)
        results += bench_row(label, 128, lenet, x, target, device, autocast, args)
    return results


def markdown(results: list[dict]) -> str:
    lines = ["| network | batch | device | dtype | backend | step (us) | us / example | vs autograd "
             "| saved for backward (KiB) | same, without params (KiB) | CUDA peak (KiB) |",
             "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['network']} | {r['batch']} | {r['device']} | {r['dtype']} | {r['backend']} "
                         f"| fails: {r['error']} | | | | | |")
            continue
        peak = f"{r['cuda_peak_bytes'] / 1024:.1f}" if "cuda_peak_bytes" in r else "-"
        saved = "-" if r["saved_bytes"] is None else f"{r['saved_bytes'] / 1024:.1f}"
        saved_activations = "-" if r["saved_bytes"] is None else f"{r['saved_bytes_without_params'] / 1024:.1f}"
        lines.append(f"| {r['network']} | {r['batch']} | {r['device']} | {r['dtype']} | {r['backend']} "
                     f"| {r['step_us']:.1f} | {r['us_per_example']:.2f} | {r['ratio']:.2f} "
                     f"| {saved} | {saved_activations} | {peak} |")
    return "\n".join(lines)
