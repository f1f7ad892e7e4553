"""Where a small step goes (--breakdown): nielsen_ch1's step taken apart, the cost of calling a Function,
LeNet-5's ReLU and max pooling three ways, the fused path's pieces, and the logging events of a run.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
from collections.abc import Callable

import torch
import torch.nn.functional as torch_F

import handgrad.functional as F
from handgrad import cli
from handgrad.benchmarks.end_to_end import NIELSEN_CONFIG
from handgrad.benchmarks.networks import ROWS, build, make_batch, sequential
from handgrad.benchmarks.step_time import training_step
from handgrad.benchmarks.timing import time_interleaved
from handgrad.data import DataModule
from handgrad.functional.function import TwinnedFunction, twinned
from handgrad.functional.mlp_loss import mlp_loss_and_grads
from handgrad.models import MLP
from handgrad.optim import SGD
from handgrad.steps import fused_steps, sgd_update

DEFAULT_THREADS = torch.get_num_threads()  # before --threads changes it


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
    parts: dict[str, Callable[..., object]] = {
        f"{name} full step": (lambda net=net: training_step(net, x, target)) for name, net in nets.items()}
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
    from handgrad.functional.max_pool import max_pool_windows

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
    params: list[torch.Tensor] = list(net.parameters())  # weight and bias of each layer
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
    handgrad-train): the Classifier's histograms and the config's GradientCheck and GradientFlow.
    Each happens once per ``every_n_steps`` (1000) optimiser steps. Needs MNIST under --data-root."""
    from handgrad.callbacks import GradientCheck, GradientFlow
    from handgrad.data import Chunk

    try:
        n_total = len(DataModule("mnist", root=args.data_root, download=False, val_size=0).load(train=True)[1])
    except Exception:
        return []
    with tempfile.TemporaryDirectory() as log_dir, contextlib.redirect_stdout(sys.stderr):
        run = cli.build([
            "--config", str(NIELSEN_CONFIG), "--data.root", args.data_root, "--data.download", "false",
            "--data.val_size", str(n_total - 5000), "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0",
            "--checkpoint.monitor", "null", "--trainer.enable_model_summary", "false",
            "--trainer.logger.init_args.save_dir", log_dir])
        trainer, model = run.trainer, run.model
        trainer.fit(model, datamodule=run.datamodule)  # one epoch of 500 steps: weights, .grad, callbacks set up
        x, y = run.datamodule.splits["train"]
        chunk = Chunk(x, y, 10)
        callbacks = trainer.callbacks  # type: ignore[attr-defined]  # set in Trainer.__init__
        check = next(c for c in callbacks if isinstance(c, GradientCheck))
        flow = next(c for c in callbacks if isinstance(c, GradientFlow))
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
