"""Do hand-written gradients cost anything? Training-step time and memory, hand vs autograd.

    python scripts/benchmark.py                 # every row; markdown to stdout, JSON to logs/benchmarks/
    python scripts/benchmark.py --quick         # fewer, shorter repeats: a smoke run
    python scripts/benchmark.py --device cuda   # the same rows on the GPU, fp32 and bf16 autocast
    python scripts/benchmark.py --breakdown     # where a nielsen_ch1 step goes: optimizer, zero_grad, threads
    python scripts/benchmark.py --threads 1 --clock cpu   # on a shared CPU box: one thread, this process's CPU time

Row groups (issue 5):
  1. Step time: zero_grad, forward, loss, backward and SGD update of each hand-written backend,
     against its autograd twin built with the same weights. Backends:
       autograd      torch.nn layers, torch.nn.functional loss, torch.optim.SGD
       hand          handgrad.nn layers, one Function per op (Linear, Sigmoid, ...), handgrad.optim.SGD
       fused_layers  one Function per layer: linear + activation (functional.fused.linear_activation)
       fused_mlp     one Function for the whole network (functional.fused.mlp), Nielsen's backprop
       fused_mlp_loss  one Function for the network and its loss (functional.mlp_loss.mlp_loss)
       no_autograd   the same hand-written forward and backward called directly, no graph at all
                     (functional.mlp_loss.mlp_loss_and_grads): .grad is set, then the SGD step (fp32 only)
       fused_step    what Classifier trains an MLP with (its fused path): no_autograd's gradients, and
                     SGD's update in foreach ops (steps.sgd_update), no .grad (fp32 only)
     Before timing, each backend's first step must give autograd's loss and gradients.
  2. Memory: bytes of the distinct storages saved for backward in one step, counted exactly with
     torch.autograd.graph.saved_tensors_hooks (with and without the parameters, which exist anyway);
     on CUDA also the step's torch.cuda.max_memory_allocated above the memory in use before it.
  3. End to end (CPU): epochs of nielsen_ch1 run as ``scripts/train.py --config configs/nielsen_ch1.yaml``
     runs them (Lightning, TensorBoard logging, histograms and the config's callbacks; validation off)
     against the plain PyTorch loop (torch.nn twin, torch.optim.SGD) and steps.bare_epoch over the
     same tensors in the same order: us per example at batch 10 (50,000 examples) and batch 1 (5,000),
     and the ratio Lightning / loop. Needs MNIST under --data-root.
  4. With CUDA: groups 1 and 2 on the GPU, in fp32 and under bf16 autocast.

Method: a row's contenders live in one process and take turns within every repeat (the order
rotates), so a burst of load on a shared machine hits them alike. A repeat times a chunk of
steps sized to ~``--chunk-ms``, after warm-up steps. Reported: the median over repeats of the
time per step, and the median over repeats of the paired ratio backend / autograd.
On a CPU shared with other jobs, two intra-op threads can make a small step 10-200x slower
(threads wait on each other while the cores are busy), so use --threads 1 there. --threads does
not reach numpy's OpenBLAS, which TensorBoard's histograms call (row group 3): its own thread pool
then spins beside the training thread; OPENBLAS_NUM_THREADS=1 in the environment stops it.
"""

from __future__ import annotations

import os

# One OpenBLAS thread, set before numpy loads: TensorBoard's histograms call numpy, whose OpenBLAS
# otherwise starts a pool of its own that spins beside torch's thread (10 us per example on
# nielsen_ch1 on a 2-core machine; README, Performance). An explicit OPENBLAS_NUM_THREADS wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import contextlib
import importlib.util
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as torch_F
import yaml

import handgrad.functional as F
import handgrad.nn as hnn
from handgrad.data import DataModule
from handgrad.functional.function import TwinnedFunction, twinned
from handgrad.functional.fused import linear_activation, mlp
from handgrad.functional.mlp_loss import mlp_loss, mlp_loss_and_grads
from handgrad.models import MLP
from handgrad.optim import SGD
from handgrad.steps import bare_epoch, fused_steps, sgd_update

BACKENDS = ("autograd", "hand", "fused_layers", "fused_mlp", "fused_mlp_loss", "no_autograd", "fused_step")
REPO = Path(__file__).resolve().parents[1]
LOG_DIR = REPO / "logs" / "benchmarks"
DEFAULT_THREADS = torch.get_num_threads()  # before --threads changes it

# --------------------------------------------------------------------------- the networks


@dataclass(frozen=True)
class Row:
    """One network, loss and batch size, as benchmarked."""

    name: str
    sizes: tuple[int, ...]
    activation: str
    output_activation: str | None  # None: logits
    loss: str  # "mse" (on one-hot targets) or "cross_entropy" (on class indices)
    batch: int


ROWS = [
    Row("nielsen_ch1 784-30-10 sigmoid, mse", (784, 30, 10), "sigmoid", "sigmoid", "mse", 10),
    Row("784-256-256-10 relu, cross-entropy", (784, 256, 256, 10), "relu", None, "cross_entropy", 128),
    Row("784-256-256-10 relu, cross-entropy", (784, 256, 256, 10), "relu", None, "cross_entropy", 1024),
]

TORCH_ACTIVATIONS = {"sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh, "relu": torch.nn.ReLU,
                     "leaky_relu": torch.nn.LeakyReLU}
HAND_ACTIVATIONS = {"sigmoid": hnn.Sigmoid, "tanh": hnn.Tanh, "relu": hnn.ReLU, "leaky_relu": hnn.LeakyReLU}


def sequential(sizes, activation, output_activation, linear=torch.nn.Linear, activations=TORCH_ACTIVATIONS):
    """nn.Sequential(Linear, act, Linear, act, ..., Linear[, out_act]): keys '0.weight', '0.bias', '2.weight', ..."""
    layers = []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        f = output_activation if i == len(sizes) - 2 else activation
        layers += [linear(d_in, d_out)] + ([activations[f]()] if f is not None else [])
    return layers


class FusedMLP(torch.nn.Sequential):
    """The plain nn.Sequential of Linear and activation layers, computed as ONE hand-written Function.

    Same modules, parameters, ``state_dict`` keys ('0.weight', '0.bias', '2.weight', ...) and
    repr as ``torch.nn.Sequential(Linear, Sigmoid, Linear, Sigmoid)``; only ``forward`` differs:
    it hands every weight and bias to ``handgrad.functional.fused.mlp``. ``loss`` goes one
    step further and folds the cost into the same Function (``mlp_loss.mlp_loss``).
    """

    def __init__(self, sizes, activation="relu", output_activation=None):
        super().__init__(*sequential(sizes, activation, output_activation))
        self.activation, self.output_activation = activation, output_activation
        self.linears = [m for m in self if isinstance(m, torch.nn.Linear)]  # a plain list: registered once, above

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return mlp(input, [m.weight for m in self.linears], [m.bias for m in self.linears], self.activation,
                   self.output_activation)

    def loss(self, input: torch.Tensor, target: torch.Tensor, loss: str = "cross_entropy",
             reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, output): loss(self(input), target) and the output, from one Function (no node for the loss)."""
        return mlp_loss(input, target, [m.weight for m in self.linears], [m.bias for m in self.linears],
                        self.activation, self.output_activation, loss, reduction)

    def loss_and_grads(self, input: torch.Tensor, target: torch.Tensor, loss: str = "cross_entropy",
                       reduction: str = "mean") -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """(loss, gradients in the order of self.parameters()), without autograd (``mlp_loss.mlp_loss_and_grads``)."""
        value, _, grads = mlp_loss_and_grads(input, target, [m.weight for m in self.linears],
                                             [m.bias for m in self.linears], self.activation,
                                             self.output_activation, loss, reduction)
        return value, grads


class FusedLayersMLP(FusedMLP):
    """The same network with one Function per layer (linear + activation) instead of one in all."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.linears):
            f = self.output_activation if i == len(self.linears) - 1 else self.activation
            input = linear_activation(input, layer.weight, layer.bias, f)
        return input


@dataclass
class Network:
    model: torch.nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, target) -> the batch's loss
    optimizer: torch.optim.Optimizer
    # (x, target) -> (loss, gradients of model.parameters()) without autograd; then loss is unused
    loss_and_grads: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, list]] | None = None
    # grads -> None: the update with those gradients (None: set .grad and call optimizer.step())
    update: Callable[[list[torch.Tensor]], None] | None = None


def build(row: Row, backend: str, state_dict: dict, device: torch.device, lr: float = 0.01) -> Network:
    """``row``'s network from ``backend``, loaded with ``state_dict`` (so every backend starts equal)."""
    args = (row.sizes, row.activation, row.output_activation)
    if backend == "autograd":
        model = torch.nn.Sequential(*sequential(*args))
    elif backend == "hand":
        model = torch.nn.Sequential(*sequential(*args, linear=hnn.Linear, activations=HAND_ACTIVATIONS))
    else:
        model = FusedLayersMLP(*args) if backend == "fused_layers" else FusedMLP(*args)
    model.load_state_dict(state_dict)
    model.to(device)
    if backend == "autograd":
        loss_fn = torch_F.mse_loss if row.loss == "mse" else torch_F.cross_entropy
        return Network(model, lambda x, t: loss_fn(model(x), t), torch.optim.SGD(model.parameters(), lr=lr))
    if backend == "fused_mlp_loss":
        return Network(model, lambda x, t: model.loss(x, t, row.loss)[0], SGD(model.parameters(), lr=lr))
    if backend in ("no_autograd", "fused_step"):
        optimizer = SGD(model.parameters(), lr=lr)
        return Network(model, lambda x, t: model.loss(x, t, row.loss)[0], optimizer,
                       loss_and_grads=lambda x, t: model.loss_and_grads(x, t, row.loss),
                       update=sgd_update(optimizer, list(model.parameters())) if backend == "fused_step" else None)
    loss_fn = F.mse_loss if row.loss == "mse" else F.cross_entropy
    return Network(model, lambda x, t: loss_fn(model(x), t), SGD(model.parameters(), lr=lr))


def make_batch(row: Row, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(row.batch, row.sizes[0], generator=g)  # pixel-like values in [0, 1)
    labels = torch.randint(row.sizes[-1], (row.batch,), generator=g)
    target = torch_F.one_hot(labels, row.sizes[-1]).float() if row.loss == "mse" else labels
    return x.to(device), target.to(device)


def lenet_networks(device: torch.device, batch_norm: bool = False) -> dict[str, Network] | str:
    """A LeNet-5 row's backends, or the reason it is skipped."""
    import handgrad.models

    LeNet5 = getattr(handgrad.models, "LeNet5", None)
    if LeNet5 is None:
        return "handgrad.models.LeNet5 does not exist yet"
    try:  # the convention of handgrad.models.MLP: backend="hand" | "autograd", same state_dict keys
        hand = LeNet5(batch_norm=batch_norm, backend="hand")
        twin = LeNet5(batch_norm=batch_norm, backend="autograd")
        twin.load_state_dict(hand.state_dict())
    except (TypeError, ValueError, RuntimeError) as error:
        return f"handgrad.models.LeNet5 could not be built as LeNet5(backend=...): {error}"
    twin, hand = twin.to(device), hand.to(device)
    return {"autograd": Network(twin, lambda x, t: torch_F.cross_entropy(twin(x), t),
                                torch.optim.SGD(twin.parameters(), lr=0.01)),
            "hand": Network(hand, lambda x, t: F.cross_entropy(hand(x), t), SGD(hand.parameters(), lr=0.01))}


# --------------------------------------------------------------------------- one step, and what it saves


def bf16_autocast(device: torch.device, enabled: bool):
    """torch.autocast to bf16, or a no-op context (even a disabled torch.autocast costs ~6 us a step)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def training_step(net: Network, x: torch.Tensor, target: torch.Tensor, autocast: bool = False) -> torch.Tensor:
    """zero_grad, forward, loss, backward, update: one step of SGD."""
    if net.update is not None:  # no autograd, and the update takes the gradients directly
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
    return loss.detach().float(), [p.grad.clone() for p in net.model.parameters()]


def check_first_step(nets: dict[str, Network], x, target, autocast: bool) -> dict[str, str]:
    """Assert every backend's loss and gradients equal autograd's on the same weights and batch.

    Returns the backends that raise a RuntimeError instead (e.g. a backward that cannot run
    under autocast), with the error; a backend that runs but disagrees fails the benchmark.
    """
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
        torch.testing.assert_close(loss, expected_loss, **tolerance, msg=lambda m, n=name: f"{n} loss: {m}")
        for i, (grad, expected) in enumerate(zip(grads, expected_grads, strict=True)):
            torch.testing.assert_close(grad, expected, **tolerance, msg=lambda m, n=name, i=i: f"{n} grad {i}: {m}")
    return failures


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


# --------------------------------------------------------------------------- timing


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_interleaved(steps: dict[str, Callable[[], object]], repeats: int, chunk_s: float,
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

    times = {name: [] for name in names}
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
        nets = lenet_networks(device, batch_norm) if not args.only or 128 in args.only else \
            "not among --only's batch sizes"
        if isinstance(nets, str):
            print(f"note: {label} row skipped: {nets}", file=sys.stderr)
            continue
        g = torch.Generator().manual_seed(0)
        x = torch.rand(128, 1, 28, 28, generator=g).to(device)  # (N, C, H, W) MNIST-shaped
        target = torch.randint(10, (128,), generator=g).to(device)
        results += bench_row(label, 128, nets, x, target, device, autocast, args)
    return results


LENET_ROWS = {"LeNet-5": False, "LeNet-5, batch norm (configs/lenet5.yaml)": True}  # label -> batch_norm


# --------------------------------------------------------------------------- row group 3: end to end

NIELSEN_CONFIG = REPO / "configs" / "nielsen_ch1.yaml"
E2E_BATCHES = {10: None, 1: 5000}  # batch -> training examples an epoch (None: the config's split, 50,000)
E2E_CONTENDERS = {  # name -> what it is, for the table
    "lightning": "Lightning: scripts/train.py --config configs/nielsen_ch1.yaml (fused step)",
    "plain_torch": "plain PyTorch loop: torch.nn twin, torch mse_loss, torch.optim.SGD",
    "bare_epoch": "steps.bare_epoch, fused step (Lightning's path without Lightning)",
    "bare_epoch_per_layer": "steps.bare_epoch(fused=False): per-layer Functions + autograd engine",
}


class EpochTimer(L.Callback):
    """Seconds of each training epoch, by ``clock``. Put first in the callback list, it times from before every
    other callback's on_train_epoch_start to before their on_train_epoch_end (the checkpoint is saved after)."""

    def __init__(self, clock: str):
        self.now, self.seconds = CLOCKS[clock], []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = self.now()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(self.now() - self.start)


def train_script():
    """scripts/train.py as a module: the Lightning contender is built by it, exactly as a user's run is."""
    spec = importlib.util.spec_from_file_location("handgrad_train_script", Path(__file__).with_name("train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lightning_epochs(train, batch: int, val_size: int, epochs: int, data_root: str, clock: str):
    """``epochs`` epochs of nielsen_ch1 as ``scripts/train.py --config configs/nielsen_ch1.yaml`` runs them (TensorBoard
    logging, histograms and the config's callbacks on), with validation off and the run written to a temporary
    folder. Returns (the trained Classifier, seconds of each epoch)."""
    with tempfile.TemporaryDirectory() as log_dir, contextlib.redirect_stdout(sys.stderr):  # its epoch lines
        cli = train.build(["--config", str(NIELSEN_CONFIG), "--data.root", data_root, "--data.download", "false",
                           "--data.batch_size", str(batch), "--data.val_size", str(val_size),
                           "--trainer.max_epochs", str(epochs), "--trainer.limit_val_batches", "0",
                           "--checkpoint.monitor", "null", "--trainer.enable_model_summary", "false",
                           "--trainer.logger.init_args.save_dir", log_dir])
        timer = EpochTimer(clock)
        cli.trainer.callbacks.insert(0, timer)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli.model, timer.seconds


def plain_torch_epoch(net: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                      batch: int, order: torch.Tensor) -> None:
    """The issue's reference: the plain PyTorch loop over the same tensors in the same order."""
    x, targets = x[order], torch_F.one_hot(y[order], 10).float()
    for start in range(0, len(targets), batch):
        loss = torch_F.mse_loss(net(x[start:start + batch]), targets[start:start + batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def end_to_end_rows(args) -> list[dict]:
    """Row group 3: epochs of nielsen_ch1 through the Lightning pipeline against bare loops, at batch 10 and 1.

    Each repeat runs every contender for ``--e2e-epochs`` epochs (the first a warm-up, untimed), from the
    config's initial weights, over the same training split in the same per-epoch order (the DataModule's);
    the contenders take turns, the order rotating. Reported: median us per example, and the median over
    repeats of the paired ratio Lightning / contender.
    """
    config = yaml.safe_load(NIELSEN_CONFIG.read_text())
    data_args = {**config["data"], "root": args.data_root, "download": False}
    try:
        n_total = len(DataModule(**{**data_args, "val_size": 0}).load(train=True)[1])
    except Exception as error:  # no MNIST files there
        print(f"note: row group 3 skipped: MNIST not readable under --data-root {args.data_root} ({error})",
              file=sys.stderr)
        return []
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.get("threads") or threads_before)  # as train.py sets it from the config
    train = train_script()
    results = [row for batch, examples in E2E_BATCHES.items()
               for row in end_to_end_at(args, config, data_args, n_total, train, batch, examples)]
    torch.set_num_threads(threads_before)
    return results


def end_to_end_at(args, config: dict, data_args: dict, n_total: int, train, batch: int, examples: int | None
                  ) -> list[dict]:
    """end_to_end_rows at one batch size: a row per contender."""
    model, net_args = config["model"], config["model"]["net"]["init_args"]
    results = []
    n_train = args.e2e_examples or examples or n_total - config["data"]["val_size"]
    data = DataModule(**{**data_args, "batch_size": batch, "val_size": n_total - n_train})
    data.setup("fit")
    x, y = data.splits["train"]
    sampler = data.train_dataloader().sampler

    def orders():
        for epoch in range(args.e2e_epochs):
            sampler.set_epoch(epoch)
            yield sampler.permutation()  # the order Lightning's sampler draws for this epoch

    def fresh(backend: str) -> MLP:
        torch.manual_seed(config["seed_everything"])  # the initial weights of train.py's run
        return MLP(**net_args, backend=backend)

    trained = {}  # contender -> its network after its latest run

    def run_lightning():
        classifier, seconds = lightning_epochs(train, batch, data.val_size, args.e2e_epochs, args.data_root,
                                               args.clock)
        trained["lightning"] = classifier.net
        return seconds

    def run_loop(name: str, backend: str, epoch_fn):
        net = fresh(backend)
        optimizer = (torch.optim.SGD if backend == "autograd" else SGD)(
            net.parameters(), lr=model["lr"], momentum=model["momentum"], weight_decay=model["weight_decay"])
        seconds, now = [], CLOCKS[args.clock]
        for order in orders():
            start = now()
            epoch_fn(net, optimizer, order)
            seconds.append(now() - start)
        trained[name] = net
        return seconds

    contenders = {
        "lightning": run_lightning,
        "plain_torch": lambda: run_loop("plain_torch", "autograd", lambda net, opt, order: plain_torch_epoch(
            net, opt, x, y, batch, order)),
        "bare_epoch": lambda: run_loop("bare_epoch", "hand", lambda net, opt, order: bare_epoch(
            net, opt, x, y, batch, model["loss"], order, fused=True)),
        "bare_epoch_per_layer": lambda: run_loop("bare_epoch_per_layer", "hand", lambda net, opt, order: bare_epoch(
            net, opt, x, y, batch, model["loss"], order, fused=False)),
    }
    per_example = {name: [] for name in contenders}  # seconds per example, one value per repeat
    names = list(contenders)
    for r in range(args.e2e_repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
            seconds = contenders[name]()[1:]  # the first epoch warms up
            per_example[name].append(statistics.mean(seconds) / n_train)
        print(f"  end to end b{batch}, repeat {r + 1}/{args.e2e_repeats}: " + ", ".join(
            f"{name} {ts[-1] * 1e6:.1f}" for name, ts in per_example.items()) + " us/example", file=sys.stderr)

    same = all(torch.equal(p, q) for p, q in zip(trained["lightning"].parameters(),  # after the same epochs
                                                  trained["bare_epoch"].parameters(), strict=True))
    for name, ts in per_example.items():
        results.append(dict(
            network="nielsen_ch1 784-30-10 sigmoid, mse", batch=batch, examples=n_train, contender=name,
            what=E2E_CONTENDERS[name], us_per_example=statistics.median(ts) * 1e6,
            lightning_vs_this=statistics.median(a / b for a, b in zip(per_example["lightning"], ts, strict=True)),
            repeats_us_per_example=[t * 1e6 for t in ts], timed_epochs=args.e2e_epochs - 1,
            threads=torch.get_num_threads(), clock=args.clock,
            **({"same_weights_as_bare_epoch": same} if name == "lightning" else {})))
    return results


# --------------------------------------------------------------------------- where a small step goes


def breakdown(args) -> list[dict]:
    """nielsen_ch1 at batch 10: the optimizer and zero_grad alone, the cost of calling a Function,
    relu's derivative two ways, and one intra-op thread vs the default."""
    row = ROWS[0]
    torch.manual_seed(0)
    state_dict = torch.nn.Sequential(*sequential(row.sizes, row.activation, row.output_activation)).state_dict()
    x, target = make_batch(row, torch.device("cpu"))
    nets = {backend: build(row, backend, state_dict, torch.device("cpu"))
            for backend in ("autograd", "fused_mlp_loss", "no_autograd", "fused_step")}
    for net in nets.values():
        training_step(net, x, target)  # every .grad exists

    def update_only(net):
        return lambda: net.optimizer.step()

    def zero_grad_then_restore(net):
        params = list(net.model.parameters())
        grads = [p.grad for p in params]

        def run():
            net.optimizer.zero_grad()
            # put the gradients back for the next call (included in the time)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
        return run

    plain, combined = calling_cost_probes()
    one = torch.ones(10, 30, requires_grad=True)
    parts = {f"{name} full step": (lambda net=net: training_step(net, x, target)) for name, net in nets.items()}
    grad, relu_output = torch.randn(1024, 256), torch.randn(1024, 256).clamp_min(0)
    parts |= {"Function.apply with setup_context": lambda: plain.apply(one, 1.0),
              "Function.call, @twinned": lambda: combined.call(one, 1.0),
              "relu backward (1024, 256), grad * bool mask": lambda: grad * (relu_output > 0),
              "relu backward (1024, 256), grad * sign(y)": lambda: grad * relu_output.sign(),
              "torch.optim.SGD.step": update_only(nets["autograd"]),
              "handgrad.optim.SGD.step": update_only(nets["fused_mlp_loss"]),
              "zero_grad + restoring .grad": zero_grad_then_restore(nets["autograd"])}
    results = []
    timed = time_interleaved(parts, args.repeats, args.chunk_ms / 1e3, torch.device("cpu"), args.clock)
    for name, ts in timed.items():
        results.append(dict(part=name, threads=torch.get_num_threads(), step_us=statistics.median(ts) * 1e6))

    threads_now = torch.get_num_threads()
    for threads in (1, DEFAULT_THREADS) if DEFAULT_THREADS > 1 else ():
        torch.set_num_threads(threads)
        steps = {name: (lambda net=net: training_step(net, x, target)) for name, net in nets.items()}
        for name, ts in time_interleaved(steps, args.repeats, args.chunk_ms / 1e3, torch.device("cpu"),
                                         "wall").items():  # wall: CPU time would count threads spinning
            results.append(dict(part=f"{name} full step", threads=threads, step_us=statistics.median(ts) * 1e6))
    torch.set_num_threads(threads_now)
    return results + fused_path_parts(args) + pooling_parts(args) + logging_costs(args)


def pooling_parts(args) -> list[dict]:
    """LeNet-5's first ReLU and 2 x 2 max pooling at batch 128, input (128, 6, 28, 28): the pooling forward
    by torch's kernel and by handgrad's running maximum, and ReLU + pooling forward and backward three ways."""
    from handgrad.functional.pooling import max_pool_windows

    torch.manual_seed(0)
    z = torch.randn(128, 6, 28, 28, requires_grad=True)  # the first convolution's output
    grad = torch.randn(128, 6, 14, 14)

    def forward_backward(fn):
        def run():
            z.grad = None  # no accumulation into an earlier .grad
            fn(z).backward(grad)
        return run

    parts = {
        "max pool forward (128, 6, 28, 28): torch's kernel, max_pool2d_with_indices":
            lambda: torch_F.max_pool2d(z.detach(), 2, return_indices=True),
        "max pool forward (128, 6, 28, 28): handgrad's running maximum, max_pool_windows":
            lambda: max_pool_windows(z.detach(), (2, 2), (2, 2), (1, 1), (14, 14)),
        "relu + max pool, forward and backward: autograd (torch.nn.functional)":
            forward_backward(lambda z: torch_F.max_pool2d(torch_F.relu(z), 2)),
        "relu + max pool, forward and backward: F.relu, then F.max_pool2d (two Functions)":
            forward_backward(lambda z: F.max_pool2d(F.relu(z), 2)),
        "relu + max pool, forward and backward: F.max_pool2d_relu (one Function, what LeNet5 runs)":
            forward_backward(lambda z: F.max_pool2d_relu(z, 2)),
    }
    timed = time_interleaved(parts, args.repeats, args.chunk_ms / 1e3, torch.device("cpu"), args.clock)
    return [dict(part=name, threads=torch.get_num_threads(), step_us=statistics.median(ts) * 1e6)
            for name, ts in timed.items()]


def fused_path_parts(args) -> list[dict]:
    """What one step of Classifier's fused path spends, nielsen_ch1 at batch 10 and 1: the whole step as
    training runs it (steps.fused_steps over a chunk), and its pieces."""

    torch.manual_seed(0)
    net = MLP([784, 30, 10], "sigmoid", "sigmoid", init="nielsen_scaled")
    weights, biases = [layer.weight for layer in net.layers], [layer.bias for layer in net.layers]
    params = [p for w, b in zip(weights, biases, strict=True) for p in (w, b)]
    optimizer = SGD(params, lr=0.01)
    update = sgd_update(optimizer, params)
    return [row for batch in (10, 1) for row in fused_path_parts_at(args, net, optimizer, update, batch)]


def fused_path_parts_at(args, net, optimizer, update, batch: int) -> list[dict]:
    """fused_path_parts at one batch size."""
    from handgrad.functional.mlp_loss import _check_mlp_loss_args

    weights, biases = [layer.weight for layer in net.layers], [layer.bias for layer in net.layers]
    params = [p for w, b in zip(weights, biases, strict=True) for p in (w, b)]
    results = []
    steps = 100  # a chunk of 100 mini-batches; every part below is timed per mini-batch
    x = torch.rand(steps * batch, 784)
    targets = torch_F.one_hot(torch.randint(10, (steps * batch,)), 10).float()
    xs, ts = x.split(batch), targets.split(batch)
    _, _, grads = mlp_loss_and_grads(xs[0], ts[0], weights, biases, "sigmoid", "sigmoid", "mse")

    def each(fn):
        def run():
            for x_b, t_b in zip(xs, ts, strict=True):
                fn(x_b, t_b)
        return run

    def set_grads_and_step(x_b, t_b):
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        optimizer.step()

    def foreach_update(x_b, t_b):
        with torch.no_grad():
            update(grads)

    parts = {
        "fused path: a whole step (steps.fused_steps)": lambda: fused_steps(
            net, "mse", optimizer, x, targets, batch),
        "  F.mlp_loss_and_grads": each(lambda x_b, t_b: mlp_loss_and_grads(
            x_b, t_b, weights, biases, "sigmoid", "sigmoid", "mse")),
        "    its argument checks": each(lambda x_b, t_b: _check_mlp_loss_args(
            "mlp_loss_and_grads", x_b, t_b, weights, biases, "sigmoid", "sigmoid", "mse", "mean", 0.01)),
        "    torch.no_grad() entered and left": each(lambda x_b, t_b: no_grad_once()),
        "  SGD update in foreach ops (steps.sgd_update), with no_grad": each(foreach_update),
        "  instead: set .grad and handgrad.optim.SGD.step()": each(set_grads_and_step),
        "  cutting the chunk: split and zip": lambda: list(zip(x.split(batch), targets.split(batch), strict=True)),
    }
    for name, ts_ in time_interleaved(parts, args.repeats, args.chunk_ms / 1e3, torch.device("cpu"),
                                      args.clock).items():
        results.append(dict(part=f"{name}, batch {batch}", threads=torch.get_num_threads(),
                            step_us=statistics.median(ts_) * 1e6 / steps))
    return results


def no_grad_once() -> None:
    with torch.no_grad():
        pass


def logging_costs(args) -> list[dict]:
    """Milliseconds of each logging event of a nielsen_ch1 run (configs/nielsen_ch1.yaml, built by
    scripts/train.py): the Classifier's histograms and the config's GradientCheck and GradientFlow.
    Each happens once per ``every_n_steps`` (1000) optimiser steps. Needs MNIST under --data-root."""
    from handgrad.callbacks import GradientCheck, GradientFlow
    from handgrad.data import Chunk

    try:
        n_total = len(DataModule("mnist", root=args.data_root, download=False, val_size=0).load(train=True)[1])
    except Exception:
        return []
    with tempfile.TemporaryDirectory() as log_dir, contextlib.redirect_stdout(sys.stderr):
        cli = train_script().build([
            "--config", str(NIELSEN_CONFIG), "--data.root", args.data_root, "--data.download", "false",
            "--data.val_size", str(n_total - 5000), "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0",
            "--checkpoint.monitor", "null", "--trainer.enable_model_summary", "false",
            "--trainer.logger.init_args.save_dir", log_dir])
        trainer, model = cli.trainer, cli.model
        trainer.fit(model, datamodule=cli.datamodule)  # one epoch of 500 steps: weights, .grad, callbacks set up
        x, y = cli.datamodule.splits["train"]
        chunk = Chunk(x, y, 10)
        check = next(c for c in trainer.callbacks if isinstance(c, GradientCheck))
        flow = next(c for c in trainer.callbacks if isinstance(c, GradientFlow))
        events = {"Classifier._log_histograms (8 histograms)": model._log_histograms,
                  "GradientCheck.check": lambda: check.check(trainer, model, chunk, 500),
                  "GradientFlow.check (norms, 2 histograms a layer)": lambda: flow.check(trainer, model, chunk, 500)}
        times = time_interleaved(events, max(3, args.repeats // 3), 0.0, torch.device("cpu"), args.clock)
    return [dict(part=f"logging event: {name}", threads=torch.get_num_threads(), step_us=statistics.median(ts) * 1e6)
            for name, ts in times.items()]


def calling_cost_probes() -> tuple[type[torch.autograd.Function], type[TwinnedFunction]]:
    """Two copies of a trivial Function (y = x * c): as written (forward + setup_context), and @twinned."""

    class Scale(torch.autograd.Function):
        @staticmethod
        def forward(input, c):
            return input * c

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.c = inputs[1]

        @staticmethod
        def backward(ctx, grad_output):
            return grad_output * ctx.c, None

    @twinned
    class TwinnedScale(TwinnedFunction):
        forward, setup_context, backward = Scale.forward, Scale.setup_context, Scale.backward

        @staticmethod
        def jvp(ctx, t_input, _t_c):
            return t_input * ctx.c

    return Scale, TwinnedScale


# --------------------------------------------------------------------------- report


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


def end_to_end_markdown(rows: list[dict]) -> str:
    lines = ["| batch | examples an epoch | contender | us / example | Lightning / this |",
             "|---:|---:|---|---:|---:|"]
    for r in rows:
        ratio = "" if r["contender"] == "lightning" else f"{r['lightning_vs_this']:.2f}"
        lines.append(f"| {r['batch']} | {r['examples']:,} | {r['what']} | {r['us_per_example']:.1f} | {ratio} |")
    return "\n".join(lines)


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
    parser.add_argument("--out-dir", type=Path, default=LOG_DIR, help="where the JSON goes (default: logs/benchmarks)")
    parser.add_argument("--groups", nargs="*", choices=("steps", "end_to_end"), default=["steps", "end_to_end"],
                        help="steps: row groups 1, 2 (and 4 on CUDA); end_to_end: row group 3 (needs MNIST)")
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

    if results:
        print(markdown(results))
    if end_to_end:
        print("\n" + end_to_end_markdown(end_to_end))
    for part in parts:
        print(f"- {part['part']} ({part['threads']} threads): {part['step_us']:.1f} us")

    meta = dict(torch=torch.__version__, python=platform.python_version(), machine=platform.machine(),
                cpu_count=os.cpu_count(), threads=torch.get_num_threads(), device=str(device),
                cuda=torch.cuda.get_device_name() if device.type == "cuda" else None,
                time=datetime.now().isoformat(timespec="seconds"), args={**vars(args), "out_dir": str(args.out_dir)})
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"{args.name or datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(dict(meta=meta, step_rows=results, end_to_end_rows=end_to_end, breakdown=parts),
                               indent=1))
    print(f"\nsaved {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
