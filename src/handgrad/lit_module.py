"""The LightningModule (the "system"): a network, a cost and a handgrad optimiser (SGD by default), trained
in chunks.

Lightning costs about 1 ms of bookkeeping per batch on a CPU, more than a whole optimiser
step of a small MLP. So a Lightning batch here is a *chunk* of many consecutive
mini-batches (handgrad.data.Chunk), and ``training_step`` runs the plain loop over them
with manual optimisation:

    for x, t in chunk:           # batch_size rows each, the last may be shorter
        loss = cost(net(x), t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()         # w <- w - lr * grad  (handgrad.optim.SGD; or Adam, ... by --model.optimizer)

Losses and outputs are kept as tensors and logged once per chunk (no .item() per step).
``trainer.global_step`` counts optimiser steps, as it does in Lightning's manual
optimisation: there each ``LightningOptimizer.step()`` adds one to the manual loop's
``optim_step_progress``; here the raw optimiser steps and the chunk adds its number of
steps to that same counter once. That skips Lightning's per-step hooks (on_before_backward,
on_after_backward, on_before_optimizer_step) and their cost: ``manual_backward`` plus
``LightningOptimizer.step`` took about 430 us more per step on the 2-core dev CPU, more
than half of a whole batch-1 step of Nielsen's 784-30-10 network.

Each chunk's mini-batches take one of the paths of handgrad.steps: the fused step for a plain
MLP (no autograd engine), the autograd path for every other network, the sharded path on
several processes; ``steps.bare_epoch`` is the same loop without Lightning.
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal, cast

import lightning as L
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from handgrad.callbacks import HISTOGRAM_BINS
from handgrad.data import Chunk
from handgrad.errors import ConfigError
from handgrad.optim import SGD
from handgrad.optim.base import HandOptimizer
from handgrad.optimizer_choice import optimizer_class, optimizer_settings
from handgrad.resume import ResumableModule
from handgrad.steps import (
    autograd_steps,
    fused_step_blocker,
    fused_steps,
    loss_function,
    num_outputs,
    sharded_steps,
    targets_for,
)

LOSSES = ("cross_entropy", "mse")


def newest_checkpoint(trainer: L.Trainer) -> str:
    """The checkpoint file the trainer's checkpoint callbacks wrote last ("" if none yet)."""
    paths = {path for callback in trainer.checkpoint_callbacks
             for path in (getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", ""))}
    return max((path for path in paths if path and os.path.isfile(path)), key=os.path.getmtime, default="")


class DivergenceError(RuntimeError):
    """The loss or the weights became inf or nan; the message names the step and suggests a smaller lr."""


class Classifier(ResumableModule):
    """Trains ``net`` on class labels with a handgrad optimiser (handgrad.optim.SGD unless ``optimizer`` says).

    Args:
        net: the network (e.g. handgrad.models.MLP); outputs (N, C).
        loss: "cross_entropy" (net outputs logits) or "mse" (squared error on one-hot targets).
        optimizer: sgd, adam, adamw, rmsprop, adadelta or adagrad (handgrad.optim's, equal to torch.optim's).
        lr: learning rate, > 0 (for every optimiser; Adam's usual one is 1e-3).
        momentum: momentum in [0, 1) of sgd and rmsprop; 0 for the other optimisers.
        weight_decay: weight decay coefficient, >= 0 (AdamW's is decoupled; torch's AdamW default is 0.01).
        optimizer_args: the optimiser's other arguments by torch's names, e.g. {betas: [0.9, 0.95], eps: 1e-8}
            for adam, {nesterov: true} for sgd (handgrad.optimizer_choice); null: torch's defaults.
        histogram_every_n_steps: log weight and gradient histograms when the optimiser step
            count crosses a multiple of this (checked once per chunk); 0 turns them off.
        fused: how a training step computes its gradients. "auto" (the default): by the fused
            engine-free step (``fused_steps``) wherever it applies, a plain hand-backend
            handgrad.models.MLP outside autocast on one process, else through autograd's
            engine (``autograd_steps``); True: always fused (a ConfigError where it cannot
            apply); False: always through the engine. The first chunk of a fit logs the path
            taken, and ``fused_step`` tells it (None before the first chunk).
    """

    def __init__(
        self,
        net: torch.nn.Module,
        loss: str = "cross_entropy",
        optimizer: str = "sgd",
        lr: float = 0.1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        optimizer_args: dict[str, Any] | None = None,
        histogram_every_n_steps: int = 1000,
        fused: bool | Literal["auto"] = "auto",
    ):
        super().__init__()
        if loss not in LOSSES:
            raise ConfigError(f"model.loss={loss!r} is unknown; choose one of {', '.join(map(repr, LOSSES))}")
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not math.isfinite(value):  # YAML's .inf and .nan reach here; the command line refuses them itself
                raise ConfigError(f"model.{name}={value} is not a finite number; use e.g. --model.{name} "
                                  f"{dict(lr=0.1, momentum=0.9, weight_decay=5e-4)[name]}")
        if not lr > 0:
            raise ConfigError(f"model.lr={lr} must be > 0; use e.g. --model.lr 0.1")
        if not 0 <= momentum < 1:
            raise ConfigError(f"model.momentum={momentum} must be in [0, 1); use 0 (plain SGD) or e.g. 0.9")
        if weight_decay < 0:
            raise ConfigError(f"model.weight_decay={weight_decay} must be >= 0; use 0 or e.g. 5e-4")
        self.optimizer_settings = optimizer_settings(optimizer, lr, momentum, weight_decay, optimizer_args)
        if histogram_every_n_steps < 0:
            raise ConfigError(f"model.histogram_every_n_steps={histogram_every_n_steps} must be >= 0 (0: off)")
        if fused not in (True, False, "auto"):
            raise ConfigError(f"model.fused={fused!r} must be true, false or 'auto'")
        blocker = fused_step_blocker(net)
        if fused is True and blocker is not None:
            raise ConfigError(f"model.fused=true, but {blocker}; use model.fused 'auto' (or false)")
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
        self.optimizer_class = optimizer_class(optimizer)
        self.num_classes = num_outputs(net)
        self.cost = loss_function(loss, getattr(net, "backend", "hand"))
        self.fused_blocker = "model.fused=false" if fused is False else blocker  # None: the fused step applies
        self.fused_step: bool | None = None  # the path the latest chunk took
        self.val_loss, self.val_acc = MeanMetric(), MulticlassAccuracy(self.num_classes, average="micro")
        self.test_loss, self.test_acc = MeanMetric(), MulticlassAccuracy(self.num_classes, average="micro")

    def setup(self, stage: str) -> None:
        """Refuse a network whose input or output width does not fit the data, before any step."""
        if self.trainer.precision == "64-true":  # Lightning converts the module only after it restored a
            self.double()  # checkpoint into it: float64 weights would be rounded to float32 on the way
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
        optimizer = cast(LightningOptimizer, self.optimizers()).optimizer  # the raw optimiser: no Lightning hooks
        x, y = chunk.x, chunk.y
        if self.trainer.max_steps >= 0:  # stop exactly at max_steps, even inside a chunk
            keep = (self.trainer.max_steps - self.global_step) * chunk.batch_size
            x, y = x[:keep], y[:keep]
        targets = targets_for(self.loss, y, self.num_classes, x.dtype)

        scaler = getattr(self.trainer.precision_plugin, "scaler", None)  # "16-mixed": loss scaling
        if self._take_fused_step(x.device.type):
            losses, outputs = fused_steps(self.net, self.loss, optimizer, x, targets, chunk.batch_size)
        elif self.trainer.world_size > 1:  # Lightning's DDP: this rank's slice of each mini-batch, see sharded_steps
            losses, right = sharded_steps(self.net, self.cost, optimizer, x, targets, y, chunk.batch_size,
                                          self.trainer.global_rank, self.trainer.world_size, scaler)
        else:
            losses, outputs = autograd_steps(self.net, self.cost, optimizer, x, targets, chunk.batch_size, scaler)
        step_losses = torch.stack(losses)
        self._check_divergence(step_losses)  # one sync a chunk
        if self.trainer.world_size == 1:
            right = (torch.cat(outputs).argmax(1) == y).sum()  # right predictions in the chunk

        steps = len(losses)
        self._count_optimizer_steps(steps)
        self._log_chunk(step_losses, right, len(y), chunk.batch_size, optimizer)
        if self.hparams["histogram_every_n_steps"]:
            n = self.hparams["histogram_every_n_steps"]
            if self.global_step // n != (self.global_step - steps) // n:
                self._log_histograms()

    def _take_fused_step(self, device_type: str) -> bool:
        """Whether this chunk's steps take the fused path; logs the path when it changes (the first chunk)."""
        why_not = self.fused_blocker
        if why_not is None and torch.is_autocast_enabled(device_type):
            why_not = f"precision={self.trainer.precision!r} runs under autocast"  # the fused step is fp32 / fp64 only
        if why_not is None and self.trainer.world_size > 1:
            why_not = f"it trains on {self.trainer.world_size} processes"  # its gradients are never all-reduced
        if why_not is not None and self.hparams["fused"] is True:
            raise ConfigError(f"model.fused=true, but {why_not}; use model.fused 'auto' (or false)")
        fused = why_not is None
        if fused != self.fused_step:
            update = "foreach SGD update" if self.optimizer_class is SGD else f"{self.optimizer_class.__name__}.step()"
            rank_zero_info("Training step: fused (handgrad.functional.mlp_loss_and_grads, no autograd engine) and a "
                           f"{update}" if fused else
                           f"Training step: per-layer Functions, autograd engine, optimizer.step()"
                           f"{' with loss scaling' if getattr(self.trainer.precision_plugin, 'scaler', None) else ''}"
                           f" ({why_not})")
        self.fused_step = fused
        return fused

    def _check_divergence(self, losses: torch.Tensor) -> None:
        """Raise DivergenceError if a loss of this chunk (losses: (steps,)) or a weight after its last
        step is not finite. One host sync a chunk, on a single sum; the per-step losses then name the
        first step that went wrong. Checking the weights too means that no checkpoint (saved between
        chunks) ever holds inf or nan: the last one written is the last good one."""
        total = losses.sum() + torch.stack([p.detach().sum() for p in self.net.parameters()]).sum()
        if torch.isfinite(total):
            return
        bad = (~torch.isfinite(losses)).nonzero()
        first = int(bad[0]) if len(bad) else len(losses) - 1
        what = f"the loss became {float(losses[first])}" if len(bad) else "the weights became inf or nan"
        path = newest_checkpoint(self.trainer)
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        raise DivergenceError(
            f"training diverged: {what} at optimiser step {self.global_step + first + 1} "
            f"(epoch {self.current_epoch + 1}); "
            + (f"the last good checkpoint is {path}" if path else "no checkpoint was saved before it")
            + f"; try a smaller learning rate, e.g. --model.lr {lr / 10:g} (now {lr:g})"
        )

    def _count_optimizer_steps(self, steps: int) -> None:
        """Add ``steps`` to trainer.global_step (what ``steps`` calls of LightningOptimizer.step would add)."""
        self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress.increment_by(steps)

    def _log_chunk(self, losses, right, n: int, batch_size: int, optimizer) -> None:
        """Mean loss and accuracy over the chunk's steps (n examples, ``right`` of them predicted right),
        with the optimiser step count as TensorBoard's x-axis."""
        weights = torch.full_like(losses, batch_size)
        weights[-1] = n - batch_size * (len(losses) - 1)  # the last mini-batch may be shorter
        self.log_dict({
            "train/loss": (losses * weights).sum() / n,
            "train/acc": right.float() / n,
            "train/lr": float(optimizer.param_groups[0]["lr"]),
            "train/epoch": float(self.current_epoch + 1),  # 1 = the first, as the progress bar counts
            "step": float(self.global_step),  # Lightning's loggers use a logged "step" as the x value
        }, prog_bar=False)

    def _log_histograms(self) -> None:
        writer = getattr(self.logger, "experiment", None)
        if writer is None or not hasattr(writer, "add_histogram"):  # TensorBoard only
            return
        for name, p in self.net.named_parameters():
            writer.add_histogram(f"weights/{name}", p.detach(), self.global_step, bins=HISTOGRAM_BINS)
            if p.grad is not None:  # the last mini-batch's gradient (zero_grad runs before backward)
                writer.add_histogram(f"grad/{name}", p.grad, self.global_step, bins=HISTOGRAM_BINS)

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
        self.log_dict({"val/loss": self.val_loss.compute(), "val/acc": acc,
                       "step": float(self.global_step)}, prog_bar=False)
        self.val_loss.reset()
        self.val_acc.reset()

    def test_step(self, chunk: Chunk, chunk_idx: int) -> None:
        loss, output = self.model_step(chunk)
        self.test_loss.update(loss, weight=len(chunk.y))
        self.test_acc.update(output, chunk.y)

    def on_test_epoch_end(self) -> None:
        # At the optimiser step of the weights tested: the checkpoint's when trainer.test loaded one (it
        # restores the weights, not the trainer's step count). With a "step" key Lightning uses it as the
        # x value, rather than its count of logged chunks, and adds no "epoch" scalar.
        self.log_dict({"test/loss": self.test_loss.compute(), "test/acc": self.test_acc.compute(),
                       "step": float(self.tested_step)}, prog_bar=False)
        self.test_loss.reset()
        self.test_acc.reset()

    # ----------------------------------------------------------------------- several processes, resuming

    def on_train_start(self) -> None:
        """Under Lightning's DDP, switch off the DDP wrapper's own gradient sync: it all-reduces during
        the one backward that follows each forward through the wrapper, but here one such forward
        (a chunk) runs a backward per mini-batch, and ``sharded_steps`` all-reduces each of them itself.
        ``require_backward_grad_sync = False`` is what DDP.no_sync() sets for its context."""
        if self.trainer.world_size == 1:
            return
        strategy = self.trainer.strategy
        if not isinstance(strategy, DDPStrategy):
            raise ConfigError(f"trainer.strategy={type(strategy).__name__} is not supported on several devices: "
                              "handgrad all-reduces its gradients under DDP only; use --trainer.strategy ddp")
        # an attribute of DDP's wrapper, which a Module's type does not declare
        setattr(strategy.model, "require_backward_grad_sync", False)  # noqa: B010

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the place in the epoch and the random state (handgrad.resume.ResumableModule); and let
        this run's optimiser settings (lr, momentum, weight decay, optimizer_args) win over those saved with
        the optimiser's state, so that a run resumed with e.g. a smaller --model.lr (after a divergence)
        takes it. The optimiser's running state (momentum buffers, Adam's averages and step counts) is the
        checkpoint's, so an unchanged run resumes bit for bit (handgrad.preflight refuses a checkpoint
        of another optimiser)."""
        super().on_load_checkpoint(checkpoint)
        for state in checkpoint.get("optimizer_states", []):
            for group in state["param_groups"]:
                group.update(self.optimizer_settings)

    def configure_optimizers(self) -> HandOptimizer:
        return self.optimizer_class(self.net.parameters(), **self.optimizer_settings)
