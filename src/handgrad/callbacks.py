"""Training-time diagnostics: the hand-written gradients checked against autograd while the
network trains, how the gradient flows back through the layers, and what the network gets wrong.

    GradientCheck          every N optimiser steps: the current mini-batch's gradients by the
                           hand-written backward and by the network's autograd twin; per layer
                           the max relative difference -> gradcheck/<layer>, and a loud
                           GradientMismatchWarning naming the layer when it exceeds a threshold
    GradientFlow           every N optimiser steps: per layer ||grad|| -> grad/<layer>/norm and
                           ||lr * grad|| / ||w|| -> update_ratio/<layer>, with histograms of both
    MisclassifiedExamples  once per validation epoch: a grid of wrongly classified images titled
                           "pred p / true t" -> val/misclassified (TensorBoard's Images tab)

A Lightning batch here is a chunk of many mini-batches (handgrad.data.Chunk) that
``Classifier.training_step`` steps through itself, so the step callbacks act in
``on_train_batch_end``: the parameters are those after the chunk's last update, ``p.grad`` is
the last mini-batch's gradient, and "N steps" means the optimiser step count (trainer.global_step)
crossed a multiple of N during the chunk. Both also act on the first chunk of every fit, so a
wrong backward shows at once and the gradients at initialisation are on record.
Scalars go to every logger at x = the optimiser step; histograms and figures to TensorBoard.

In a config (LightningCLI), next to scripts/train.py's own callbacks:

    trainer:
      callbacks:
        - class_path: handgrad.callbacks.GradientCheck
          init_args: {every_n_steps: 1000}

Reference: Nielsen, "Neural Networks and Deep Learning", ch. 5 (per-layer gradient norms);
CS231n, "Neural Networks 3" (gradient checks; the ratio of updates to weights, about 1e-3).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import cast

import lightning as L
import torch
from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter

from handgrad.data import Chunk
from handgrad.steps import fused_gradients, loss_function, targets_for


class GradientMismatchWarning(UserWarning):
    """A hand-written gradient differs from autograd's by more than GradientCheck's threshold."""


def layer_of(parameter_name: str) -> str:
    """'layers.0.weight' -> 'layers.0': the module that holds the parameter."""
    return parameter_name.rpartition(".")[0] or parameter_name


def last_minibatch(batch, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of the last mini-batch the chunk stepped on (max_steps may stop a chunk early)."""
    if isinstance(batch, Chunk):
        start = (steps - 1) * batch.batch_size
        return batch.x[start:start + batch.batch_size], batch.y[start:start + batch.batch_size]
    return batch[0], batch[1]  # a plain (x, y) batch: one step


def log_scalars(trainer: L.Trainer, metrics: dict[str, float]) -> None:
    """To every logger, at x = the optimiser step (what the Classifier's own metrics use)."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)


# Bins of every histogram handgrad writes to TensorBoard: 64 of equal width between the smallest and largest
# value. TensorBoard's default ("tensorflow": ~1,500 exponentially spaced edges) takes 4x the time to bin a
# 30 x 784 weight (3.8 ms against 0.9 ms on the dev CPU), several us per example of a nielsen_ch1 epoch.
HISTOGRAM_BINS = 64


def tensorboard(trainer: L.Trainer):
    """The SummaryWriter of the first logger that writes TensorBoard events (None if there is none)."""
    for logger in trainer.loggers:
        writer = getattr(logger, "experiment", None)
        if hasattr(writer, "add_histogram"):
            return writer
    return None


class EveryNSteps(L.Callback):
    """Calls ``check(trainer, pl_module, batch, steps)`` after a chunk if it is the fit's first
    chunk or if the optimiser step count crossed a multiple of ``every_n_steps`` during it."""

    def __init__(self, every_n_steps: int):
        if every_n_steps < 1:
            raise ValueError(f"{type(self).__name__}: every_n_steps={every_n_steps} must be >= 1")
        self.every_n_steps = every_n_steps
        self._step_before = 0
        self._first = True

    def on_fit_start(self, trainer, pl_module) -> None:
        self._first = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        steps = trainer.global_step - self._step_before  # optimiser steps in this chunk
        n = self.every_n_steps
        if steps > 0 and (self._first or trainer.global_step // n != self._step_before // n):
            self._first = False
            self.check(trainer, pl_module, batch, steps)

    def check(self, trainer, pl_module, batch, steps: int) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------- the gradient check


class GradientCheck(EveryNSteps):
    """Recomputes the current mini-batch's gradients by hand and by autograd, and compares them.

    On a copy of ``pl_module.net`` (hand-written backward) and on ``net.twin()`` (the same
    network in torch.nn, autograd's backward), both loaded with the current weights and run
    on the chunk's last mini-batch from the same random state, so training's parameters,
    gradients and random stream are untouched. The copy's gradients come from the code that
    computed training's: the fused step (handgrad.steps.fused_gradients) when the chunk
    took it (``pl_module.fused_step``), else the per-layer Functions and autograd's engine.
    Per layer it logs

        gradcheck/<layer> = max over the layer's parameters of max|g_hand - g_autograd| / max|g_autograd|

    (the README's "rel" error) and warns when that exceeds ``threshold``.

    Args:
        every_n_steps: check when the optimiser step count crosses a multiple of this (and on
            the first chunk). The configs' 1000 (nielsen_ch1) and 500 (the others) cost under
            2% of training time (scripts/callback_cost.py; README, "Seeing backpropagation at work").
        threshold: the largest relative difference taken as rounding. In float64 two correct
            backwards agree to ~1e-15 and a wrong derivative is typically off by 1e-2 or more,
            so 1e-6 sits far from both; in float32 rounding alone reaches ~1e-6.
        float64: compare in float64 (True) or in the network's own dtype.
        max_examples: check at most this many rows of the mini-batch (its first ones): a check
            then costs a few small steps even when training is full-batch.
    """

    def __init__(self, every_n_steps: int = 1000, threshold: float = 1e-6, float64: bool = True,
                 max_examples: int = 1000):
        super().__init__(every_n_steps)
        if not threshold > 0:
            raise ValueError(f"GradientCheck: threshold={threshold} must be > 0, e.g. 1e-6")
        if max_examples < 1:
            raise ValueError(f"GradientCheck: max_examples={max_examples} must be >= 1")
        self.threshold, self.float64, self.max_examples = threshold, float64, max_examples
        self.last_errors: dict[str, float] = {}  # layer -> relative difference, at the latest check
        self._copies: tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module] | None = None
        self._skipped = False

    def check(self, trainer, pl_module, batch, steps: int) -> None:
        net = getattr(pl_module, "net", None)
        if net is None or not callable(getattr(net, "twin", None)) or not hasattr(pl_module, "loss"):
            if not self._skipped:
                self._skipped = True
                warnings.warn(f"GradientCheck: {type(net).__name__} offers no twin() (an autograd copy of "
                              "itself) to compare with; gradients are not checked", stacklevel=2)
            return
        hand, twin = self.copies_of(net)
        x, y = last_minibatch(batch, steps)
        x, y = x[:self.max_examples].to(next(hand.parameters()).dtype), y[:self.max_examples]
        target = targets_for(pl_module.loss, y, pl_module.num_classes, x.dtype)
        if getattr(pl_module, "fused_step", False):  # training stepped by F.mlp_loss_and_grads: check that
            grads_hand = fused_gradients(hand, pl_module.loss, x, target)
        else:
            grads_hand = gradients(hand, loss_function(pl_module.loss, "hand"), x, target)
        grads_twin = gradients(twin, loss_function(pl_module.loss, "autograd"), x, target)

        errors: dict[str, float] = {}
        for name, g_twin in grads_twin.items():
            g_hand = grads_hand.get(name)
            error = math.inf if g_hand is None else relative_difference(g_hand, g_twin)
            errors[layer_of(name)] = max(errors.get(layer_of(name), 0.0), error)
        self.last_errors = errors
        log_scalars(trainer, {f"gradcheck/{layer}": error for layer, error in errors.items()})

        wrong = {layer: error for layer, error in errors.items() if not error <= self.threshold}
        if wrong:
            listed = ", ".join(f"{layer} {error:.1e}" for layer, error in wrong.items())
            warnings.warn(
                f"GradientCheck at step {trainer.global_step}: the hand-written gradients differ from autograd's "
                f"(max relative difference above {self.threshold:.0e}) in {listed}. A backward in that layer, or "
                "in an op between it and the cost, is wrong.", GradientMismatchWarning, stacklevel=2)

    def copies_of(self, net: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
        """A hand-written copy and the autograd twin of ``net``, made once and loaded with its current weights."""
        if self._copies is None or self._copies[0] is not net:
            with torch.random.fork_rng(devices=[]):  # twin() initialises fresh layers: keep training's random stream
                hand, twin = copy.deepcopy(net), cast(Callable, net.twin)()
            if self.float64:
                hand, twin = hand.double(), twin.double()
            self._copies = (net, hand, twin)
        _, hand, twin = self._copies
        for copied in (hand, twin):
            copied.load_state_dict(net.state_dict())  # copies (and converts) weights and buffers
            copied.train(net.training)
        return hand, twin


def gradients(net: torch.nn.Module, cost, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """{parameter name: d cost / d parameter} for one forward and backward of ``net`` on (x, target).

    Runs on a fork of the random state, which is restored afterwards: two calls draw the same
    numbers (the same dropout masks: handgrad draws them as torch does) and training's random
    stream is untouched.
    """
    net.zero_grad(set_to_none=True)
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        cost(net(x), target).backward()
    return {name: p.grad for name, p in net.named_parameters() if p.grad is not None}


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b| (the absolute difference where b is all zeros)."""
    scale = b.abs().max()
    difference = (a - b).abs().max()
    return float(difference / scale if scale > 0 else difference)


# --------------------------------------------------------------------------- gradient flow


class GradientFlow(EveryNSteps):
    """How large each layer's gradient is, and how far one update moves its weights.

    Per layer (its weight and bias together), from the last mini-batch's gradient:

        grad/<layer>/norm          ||g||
        update_ratio/<layer>       ||lr * g|| / ||w||  (about 1e-3 is healthy: CS231n); with
                                   momentum the step taken is lr * velocity, larger than lr * g

    and, to TensorBoard, the histograms grad/<layer>/values (the entries of g) and
    update_ratio/<layer>/log10 (log10 |lr * g_i| / |w_i| per entry). A layer with more than
    ``HISTOGRAM_SAMPLE`` entries is histogrammed from that many drawn at random (from a generator
    of its own, so training's random stream is untouched): the same shape, at a fraction of the
    cost of binning every entry of, say, a 784 x 512 layer.

    Args:
        every_n_steps: log when the optimiser step count crosses a multiple of this (and on the first chunk).
        histograms: also write the two histograms per layer.
    """

    HISTOGRAM_SAMPLE = 20_000

    def __init__(self, every_n_steps: int = 1000, histograms: bool = True):
        super().__init__(every_n_steps)
        self.histograms = histograms
        self._sampler = torch.Generator().manual_seed(0)

    def check(self, trainer, pl_module, batch, steps: int) -> None:
        net = getattr(pl_module, "net", pl_module)
        lr = {p: group["lr"] for optimizer in trainer.optimizers for group in optimizer.param_groups
              for p in group["params"]}
        by_layer: dict[str, list[torch.nn.Parameter]] = {}
        for name, p in net.named_parameters():
            if p.grad is not None and p in lr:
                by_layer.setdefault(layer_of(name), []).append(p)

        metrics, writer = {}, tensorboard(trainer) if self.histograms else None
        for layer, params in by_layer.items():
            with torch.no_grad():
                g = torch.cat([cast(torch.Tensor, p.grad).flatten() for p in params])  # (n,)
                w = torch.cat([p.flatten() for p in params])  # (n,)
                step = torch.cat([lr[p] * cast(torch.Tensor, p.grad).flatten() for p in params])  # (n,) lr * g
                metrics[f"grad/{layer}/norm"] = g.norm()
                metrics[f"update_ratio/{layer}"] = step.norm() / w.norm()
                if writer is not None:
                    if len(g) > self.HISTOGRAM_SAMPLE:
                        some = torch.randint(len(g), (self.HISTOGRAM_SAMPLE,), generator=self._sampler).to(g.device)
                        g, w, step = g[some], w[some], step[some]
                    ratio = (step.abs() / w.abs()).log10()
                    writer.add_histogram(f"grad/{layer}/values", g, trainer.global_step, bins=HISTOGRAM_BINS)
                    ratio = ratio[ratio.isfinite()]  # a zero gradient (dead units) or weight has no log10
                    if len(ratio):  # TensorBoard refuses an empty histogram
                        writer.add_histogram(f"update_ratio/{layer}/log10", ratio, trainer.global_step,
                                             bins=HISTOGRAM_BINS)
        log_scalars(trainer, {tag: float(value) for tag, value in metrics.items()})


# --------------------------------------------------------------------------- what the network gets wrong


class MisclassifiedExamples(L.Callback):
    """Once per validation epoch, a grid of the first ``n`` misclassified validation images, each
    titled "pred p / true t", logged as the TensorBoard image ``tag``.

    Inputs must be images: (N, C, H, W), (N, H, W), or (N, D) with D a square (784 -> 28 x 28);
    other data (e.g. the 2-D spirals) is skipped with one warning. A figure costs about 0.1 s;
    ``every_n_epochs`` spaces them out for runs of short epochs.
    """

    def __init__(self, n: int = 16, tag: str = "val/misclassified", every_n_epochs: int = 1):
        if n < 1 or every_n_epochs < 1:
            raise ValueError(f"MisclassifiedExamples: n={n} and every_n_epochs={every_n_epochs} must be >= 1")
        self.n, self.tag, self.every_n_epochs = n, tag, every_n_epochs
        self.found: list[tuple[torch.Tensor, int, int]] = []  # (image (H, W) or (H, W, 3), predicted, true)
        self._skipped = False

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.found = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if (trainer.sanity_checking or len(self.found) >= self.n or self._skipped
                or (trainer.current_epoch + 1) % self.every_n_epochs):
            return
        x, y = (batch.x, batch.y) if isinstance(batch, Chunk) else (batch[0], batch[1])
        with torch.no_grad():
            # a few forward passes, not the whole split
            for x_part, y_part in zip(x.split(1000), y.split(1000), strict=True):
                predicted = pl_module(x_part).argmax(1)  # (b,)
                wrong = (predicted != y_part).nonzero().flatten()[:self.n - len(self.found)]
                images = as_images(x_part[wrong])
                if images is None:
                    self._skipped = True
                    warnings.warn(f"MisclassifiedExamples: inputs of shape {tuple(x.shape[1:])} are not images; "
                                  "skipped", stacklevel=2)
                    return
                self.found += [(image, int(p), int(t))
                               for image, p, t in zip(images.cpu(), predicted[wrong], y_part[wrong], strict=True)]
                if len(self.found) >= self.n:
                    return

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        writer = tensorboard(trainer)
        if trainer.sanity_checking or writer is None or not self.found:
            return
        writer.add_figure(self.tag, grid(self.found), global_step=trainer.global_step)


def as_images(x: torch.Tensor) -> torch.Tensor | None:
    """(N, H, W) grey or (N, H, W, 3) colour images in float, or None if ``x`` is not image-shaped."""
    x = x.detach().float()
    if x.dim() == 4 and x.shape[1] == 1:
        return x[:, 0]
    if x.dim() == 4 and x.shape[1] == 3:
        return x.permute(0, 2, 3, 1)
    if x.dim() == 3:
        return x
    side = math.isqrt(x.shape[1]) if x.dim() == 2 else 0
    return x.reshape(-1, side, side) if side > 1 and side * side == x.shape[1] else None


def grid(found: list[tuple[torch.Tensor, int, int]], columns: int = 4) -> Figure:
    """The images in rows of ``columns``, each titled "pred p / true t".

    One mosaic image on one axes, with the titles as text: a tenth of the cost of a grid of
    subplots (about 0.1 s a figure on a CPU, rendering included).
    """
    rows = math.ceil(len(found) / columns)
    h, w = found[0][0].shape[:2]
    cell_h, cell_w, top = h + 8, w + 2, 8  # white gaps; the top 8 pixels of a cell hold its title
    mosaic = torch.ones(rows * cell_h, columns * cell_w, *found[0][0].shape[2:])  # (rows*cell_h, cols*cell_w[, 3])
    figure = Figure(figsize=(1.5 * columns, 1.7 * rows), dpi=80)
    ax = figure.add_axes((0, 0, 1, 1))
    for i, (image, predicted, true) in enumerate(found):
        r, c = divmod(i, columns)
        image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-12)  # [0, 1]
        y0, x0 = r * cell_h + top, c * cell_w + 1
        mosaic[y0:y0 + h, x0:x0 + w] = 1 - image if image.dim() == 2 else image  # grey: dark ink on white
        ax.text(x0 + w / 2, y0 - 1, f"pred {predicted} / true {true}", ha="center", va="bottom", fontsize=9)
    ax.imshow(mosaic.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    return figure


def fresh_run(logdir: str | Path, name: str) -> SummaryWriter:
    """A TensorBoard SummaryWriter for logdir/name, its earlier event files removed, so a script
    that is run again shows one run per name (scripts/compare_batch_modes.py, gradient_flow.py)."""
    run = Path(logdir) / name
    for old in run.glob("events.out.tfevents.*"):
        old.unlink()
    return SummaryWriter(str(run))
