"""The LightningModule (the "system"): a network, a cost and handgrad's SGD, trained in chunks.

Lightning costs about 1 ms of bookkeeping per batch on a CPU, more than a whole optimiser
step of a small MLP. So a Lightning batch here is a *chunk* of many consecutive
mini-batches (handgrad.data.Chunk), and ``training_step`` runs the plain loop over them
with manual optimisation:

    for x, t in chunk:           # batch_size rows each, the last may be shorter
        loss = cost(net(x), t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()         # w <- w - lr * grad  (handgrad.optim.SGD)

Losses and outputs are kept as tensors and logged once per chunk (no .item() per step).
``trainer.global_step`` counts optimiser steps, as it does in Lightning's manual
optimisation: there each ``LightningOptimizer.step()`` adds one to the manual loop's
``optim_step_progress``; here the raw optimiser steps and the chunk adds its number of
steps to that same counter once. That skips Lightning's per-step hooks (on_before_backward,
on_after_backward, on_before_optimizer_step) and their cost: ``manual_backward`` plus
``LightningOptimizer.step`` took about 430 us more per step on the 2-core dev CPU, more
than half of a whole batch-1 step of Nielsen's 784-30-10 network.
``bare_epoch`` is the same loop without Lightning: the reference that tests compare with
and benchmarks time against.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as torch_F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

import handgrad.functional as F
from handgrad.data import Chunk, ConfigError
from handgrad.optim import SGD

LOSSES = ("cross_entropy", "mse")


def loss_function(name: str, backend: str = "hand"):
    """cost(output (N, C), target) -> () for a loss name: hand-written, or torch's for the autograd twin.

    "cross_entropy" takes logits and class indices; "mse" takes outputs and one-hot targets
    and averages (output - target)^2 over all N * C elements (torch's mse_loss). Nielsen's
    quadratic cost (1/2N) sum_n ||y_n - a_n||^2 is C/2 times that, so his learning rate eta
    corresponds to lr = eta * C / 2 here (C = 10: eta 3.0 -> lr 15.0).
    """
    functional = F if backend == "hand" else torch_F
    return functional.cross_entropy if name == "cross_entropy" else functional.mse_loss


def targets_for(loss: str, y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """What the cost compares the output with: class indices (N,), or one-hot rows (N, C) for mse."""
    return torch_F.one_hot(y, num_classes).to(dtype) if loss == "mse" else y


def num_outputs(net: torch.nn.Module) -> int:
    """The width of the network's last linear layer: the number of classes."""
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ConfigError(f"model.net: {type(net).__name__} has no Linear layer to read the number of classes from")
    return linears[-1].out_features


class Classifier(L.LightningModule):
    """Trains ``net`` on class labels with handgrad.optim.SGD.

    Args:
        net: the network (e.g. handgrad.models.MLP); outputs (N, C).
        loss: "cross_entropy" (net outputs logits) or "mse" (squared error on one-hot targets).
        lr: learning rate, > 0.
        momentum: SGD momentum in [0, 1).
        weight_decay: L2 penalty coefficient, >= 0.
        histogram_every_n_steps: log weight and gradient histograms when the optimiser step
            count crosses a multiple of this (checked once per chunk); 0 turns them off.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        loss: str = "cross_entropy",
        lr: float = 0.1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        histogram_every_n_steps: int = 1000,
    ):
        super().__init__()
        if loss not in LOSSES:
            raise ConfigError(f"model.loss={loss!r} is unknown; choose one of {', '.join(map(repr, LOSSES))}")
        if not lr > 0:
            raise ConfigError(f"model.lr={lr} must be > 0; use e.g. --model.lr 0.1")
        if not 0 <= momentum < 1:
            raise ConfigError(f"model.momentum={momentum} must be in [0, 1); use 0 (plain SGD) or e.g. 0.9")
        if weight_decay < 0:
            raise ConfigError(f"model.weight_decay={weight_decay} must be >= 0; use 0 or e.g. 5e-4")
        if histogram_every_n_steps < 0:
            raise ConfigError(f"model.histogram_every_n_steps={histogram_every_n_steps} must be >= 0 (0: off)")
        output_activation = getattr(net, "spec", {}).get("output_activation")
        if loss == "cross_entropy" and output_activation is not None:
            raise ConfigError(
                f"model.loss='cross_entropy' applies softmax to logits itself, but the net ends in "
                f"output_activation={output_activation!r}; set it to null (or use loss 'mse')"
            )
        self.save_hyperparameters()
        self.automatic_optimization = False  # training_step steps the optimiser itself, once per mini-batch
        self.net = net
        self.loss = loss
        self.num_classes = num_outputs(net)
        self.cost = loss_function(loss, getattr(net, "backend", "hand"))
        self.val_loss, self.val_acc = MeanMetric(), MulticlassAccuracy(self.num_classes, average="micro")
        self.test_loss, self.test_acc = MeanMetric(), MulticlassAccuracy(self.num_classes, average="micro")

    def setup(self, stage: str) -> None:
        """Refuse a network whose input or output width does not fit the data, before any step."""
        datamodule = getattr(self.trainer, "datamodule", None)
        sizes = getattr(self.net, "spec", {}).get("sizes")
        if datamodule is None or sizes is None or not hasattr(datamodule, "num_features"):
            return
        if (sizes[0], sizes[-1]) != (datamodule.num_features, datamodule.num_classes):
            raise ConfigError(
                f"model.net sizes={sizes} do not fit data.dataset={datamodule.dataset!r}, which has "
                f"{datamodule.num_features} input features and {datamodule.num_classes} classes; use sizes "
                f"[{datamodule.num_features}, ..., {datamodule.num_classes}]"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # ----------------------------------------------------------------------- training: the hot loop

    def training_step(self, chunk: Chunk, chunk_idx: int) -> None:
        optimizer = self.optimizers().optimizer  # the raw handgrad SGD: no per-step Lightning hooks
        x, y = chunk.x, chunk.y
        if self.trainer.max_steps >= 0:  # stop exactly at max_steps, even inside a chunk
            keep = (self.trainer.max_steps - self.global_step) * chunk.batch_size
            x, y = x[:keep], y[:keep]
        targets = targets_for(self.loss, y, self.num_classes, x.dtype)

        losses, outputs = [], []
        for x_b, t_b in zip(x.split(chunk.batch_size), targets.split(chunk.batch_size)):
            output = self.net(x_b)  # (b, C)
            loss = self.cost(output, t_b)  # ()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            outputs.append(output.detach())

        steps = len(losses)
        self._count_optimizer_steps(steps)
        self._log_chunk(torch.stack(losses), torch.cat(outputs), y, chunk.batch_size, optimizer)
        if self.hparams.histogram_every_n_steps:
            n = self.hparams.histogram_every_n_steps
            if self.global_step // n != (self.global_step - steps) // n:
                self._log_histograms()

    def _count_optimizer_steps(self, steps: int) -> None:
        """Add ``steps`` to trainer.global_step (what ``steps`` calls of LightningOptimizer.step would add)."""
        self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress.increment_by(steps)

    def _log_chunk(self, losses, outputs, y, batch_size: int, optimizer) -> None:
        """Mean loss and accuracy over the chunk's steps, with the optimiser step count as TensorBoard's x-axis."""
        weights = torch.full_like(losses, batch_size)
        weights[-1] = len(y) - batch_size * (len(losses) - 1)  # the last mini-batch may be shorter
        self.log_dict({
            "train/loss": (losses * weights).sum() / len(y),
            "train/acc": (outputs.argmax(1) == y).float().mean(),
            "train/lr": float(optimizer.param_groups[0]["lr"]),
            "step": float(self.global_step),  # Lightning's loggers use a logged "step" as the x value
        }, prog_bar=False)

    def _log_histograms(self) -> None:
        writer = getattr(self.logger, "experiment", None)
        if not hasattr(writer, "add_histogram"):  # TensorBoard only
            return
        for name, p in self.net.named_parameters():
            writer.add_histogram(f"weights/{name}", p.detach(), self.global_step)
            if p.grad is not None:  # the last mini-batch's gradient (zero_grad runs before backward)
                writer.add_histogram(f"grads/{name}", p.grad, self.global_step)

    # ----------------------------------------------------------------------- evaluation: big batches

    def model_step(self, chunk: Chunk) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.net(chunk.x)  # (M, C)
        return self.cost(output, targets_for(self.loss, chunk.y, self.num_classes, output.dtype)), output

    def validation_step(self, chunk: Chunk, chunk_idx: int) -> None:
        loss, output = self.model_step(chunk)
        self.val_loss.update(loss, weight=len(chunk.y))
        self.val_acc.update(output, chunk.y)

    def on_validation_epoch_end(self) -> None:
        acc = self.val_acc.compute()
        self.log_dict({"val/loss": self.val_loss.compute(), "val/acc": acc, "hp_metric": acc,
                       "step": float(self.global_step)}, prog_bar=False)
        self.val_loss.reset()
        self.val_acc.reset()

    def test_step(self, chunk: Chunk, chunk_idx: int) -> None:
        loss, output = self.model_step(chunk)
        self.test_loss.update(loss, weight=len(chunk.y))
        self.test_acc.update(output, chunk.y)

    def on_test_epoch_end(self) -> None:
        self.log_dict({"test/loss": self.test_loss.compute(), "test/acc": self.test_acc.compute()})
        self.test_loss.reset()
        self.test_acc.reset()

    def configure_optimizers(self) -> SGD:
        return SGD(self.net.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum,
                   weight_decay=self.hparams.weight_decay)


def bare_epoch(net: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               batch_size: int, loss: str = "cross_entropy", order: torch.Tensor | None = None) -> torch.Tensor:
    """One epoch of the plain PyTorch loop, no Lightning: shuffle by ``order``, cut consecutive
    mini-batches, and for each: forward, cost, zero_grad, backward, step. Returns the per-step losses.

    With the same ``order`` and initial weights it walks the same path as Classifier's
    training_step (tests check it) and is what benchmarks time Lightning against.
    """
    cost = loss_function(loss, getattr(net, "backend", "hand"))
    if order is not None:
        x, y = x[order], y[order]
    targets = targets_for(loss, y, num_outputs(net), x.dtype)
    losses = []
    for start in range(0, len(y), batch_size):
        output = net(x[start:start + batch_size])
        step_loss = cost(output, targets[start:start + batch_size])
        optimizer.zero_grad()
        step_loss.backward()
        optimizer.step()
        losses.append(step_loss.detach())
    return torch.stack(losses)
