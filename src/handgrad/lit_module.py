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

A step takes one of two paths (``Classifier(fused=...)``; the first chunk of a fit logs which):

    fused      a plain handgrad.models.MLP (hand backend, no batch norm, no dropout) outside
               autocast: F.mlp_loss_and_grads computes loss and gradients with the very code of
               the whole-network Function's forward and backward, called directly (no graph, no
               autograd engine, no .grad accumulation), and SGD's update runs as a few foreach
               ops. For nielsen_ch1 at batch 10 a step then takes about a third of the time of
               its torch.nn twin's autograd step (README, Performance).
    autograd   every other network: its per-layer Functions, loss.backward() and optimizer.step().
    sharded    on several processes (Lightning's DDP): the autograd path on this rank's slice of
               each mini-batch, the ranks' gradients all-reduced before each step (sharded_steps).

Both compute the same hand-written derivatives (tests compare the weights after an epoch);
GradientCheck checks the gradients of the path that ran.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as torch_F
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

import handgrad.functional as F
from handgrad.data import Chunk, ConfigError
from handgrad.functional.fused import ACTIVATIONS as FUSED_ACTIVATIONS
from handgrad.models import MLP
from handgrad.optim import SGD, sgd_step_

LOSSES = ("cross_entropy", "mse")
PLAIN_MLP_SPEC = ("sizes", "activation", "output_activation", "init")  # MLP options the fused step computes


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


def newest_checkpoint(trainer: L.Trainer) -> str:
    """The checkpoint file the trainer's checkpoint callbacks wrote last ("" if none yet)."""
    paths = {path for callback in trainer.checkpoint_callbacks
             for path in (getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", ""))}
    return max((path for path in paths if path and os.path.isfile(path)), key=os.path.getmtime, default="")


class DivergenceError(RuntimeError):
    """The loss or the weights became inf or nan; the message names the step and suggests a smaller lr."""


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
        lr: float = 0.1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        histogram_every_n_steps: int = 1000,
        fused: bool | Literal["auto"] = "auto",
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
        optimizer = self.optimizers().optimizer  # the raw handgrad SGD: no per-step Lightning hooks
        x, y = chunk.x, chunk.y
        if self.trainer.max_steps >= 0:  # stop exactly at max_steps, even inside a chunk
            keep = (self.trainer.max_steps - self.global_step) * chunk.batch_size
            x, y = x[:keep], y[:keep]
        targets = targets_for(self.loss, y, self.num_classes, x.dtype)

        if self._take_fused_step(x.device.type):
            losses, outputs = fused_steps(self.net, self.loss, optimizer, x, targets, chunk.batch_size)
        elif self.trainer.world_size > 1:  # Lightning's DDP: this rank's slice of each mini-batch, see sharded_steps
            losses, right = sharded_steps(self.net, self.cost, optimizer, x, targets, y, chunk.batch_size,
                                          self.trainer.global_rank, self.trainer.world_size)
        else:
            losses, outputs = autograd_steps(self.net, self.cost, optimizer, x, targets, chunk.batch_size)
        losses = torch.stack(losses)
        self._check_divergence(losses)  # one sync a chunk
        if self.trainer.world_size == 1:
            right = (torch.cat(outputs).argmax(1) == y).sum()  # right predictions in the chunk

        steps = len(losses)
        self._count_optimizer_steps(steps)
        self._log_chunk(losses, right, len(y), chunk.batch_size, optimizer)
        if self.hparams.histogram_every_n_steps:
            n = self.hparams.histogram_every_n_steps
            if self.global_step // n != (self.global_step - steps) // n:
                self._log_histograms()

    def _take_fused_step(self, device_type: str) -> bool:
        """Whether this chunk's steps take the fused path; logs the path when it changes (the first chunk)."""
        why_not = self.fused_blocker
        if why_not is None and torch.is_autocast_enabled(device_type):
            why_not = f"precision={self.trainer.precision!r} runs under autocast"  # the fused step is fp32 / fp64 only
        if why_not is None and self.trainer.world_size > 1:
            why_not = f"it trains on {self.trainer.world_size} processes"  # its gradients are never all-reduced
        if why_not is not None and self.hparams.fused is True:
            raise ConfigError(f"model.fused=true, but {why_not}; use model.fused 'auto' (or false)")
        fused = why_not is None
        if fused != self.fused_step:
            rank_zero_info("Training step: fused (handgrad.functional.mlp_loss_and_grads, no autograd engine) and a "
                           "foreach SGD update" if fused else
                           f"Training step: per-layer Functions, autograd engine, optimizer.step() ({why_not})")
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
        strategy.model.require_backward_grad_sync = False

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep torch's random state (dropout's masks) in the checkpoint: Lightning does not save it,
        and a resumed fit must draw what the uninterrupted one would have."""
        checkpoint["torch_rng_state"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["cuda_rng_states"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the random state; and let this run's lr, momentum and weight decay win over those
        saved with the optimiser's state, so that a run resumed with e.g. a smaller --model.lr
        (after a divergence) takes it."""
        for state in checkpoint.get("optimizer_states", []):
            for group in state["param_groups"]:
                group.update(lr=self.hparams.lr, momentum=self.hparams.momentum,
                             weight_decay=self.hparams.weight_decay)
        if "torch_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng_state"])
        if "cuda_rng_states" in checkpoint and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng_states"])

    def configure_optimizers(self) -> SGD:
        return SGD(self.net.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum,
                   weight_decay=self.hparams.weight_decay)


# --------------------------------------------------------------------------- the steps of a chunk: two paths


def autograd_steps(net: torch.nn.Module, cost, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                   targets: torch.Tensor, batch_size: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The general path, for any network: per mini-batch of ``batch_size`` rows, forward (the
    network's per-layer Functions), cost, zero_grad, backward (autograd's engine), step.
    Returns each step's loss and output (detached), for the chunk's metrics."""
    losses, outputs = [], []
    for x_b, t_b in zip(x.split(batch_size), targets.split(batch_size)):
        output = net(x_b)  # (b, C)
        loss = cost(output, t_b)  # ()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        outputs.append(output.detach())
    return losses, outputs


@torch.no_grad()
def fused_steps(net: MLP, loss: str, optimizer: torch.optim.Optimizer, x: torch.Tensor, targets: torch.Tensor,
                batch_size: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The fused path, for a plain MLP (see ``fused_step_blocker``): per mini-batch, loss and gradients
    by ``fused_step`` (no graph, no engine) and the optimiser's update with those gradients
    (``sgd_update``). Afterwards each p.grad holds the last mini-batch's gradient, as after
    ``autograd_steps``. Returns each step's loss and output, for the chunk's metrics."""
    step, params = fused_step(net, loss), [p for layer in net.layers for p in (layer.weight, layer.bias)]
    update = sgd_update(optimizer, params)
    losses, outputs, grads = [], [], []
    for x_b, t_b in zip(x.flatten(1).split(batch_size), targets.split(batch_size)):
        value, output, grads = step(x_b, t_b)  # (), (b, C), [grad_W_1, grad_b_1, ...]
        update(grads)
        losses.append(value)
        outputs.append(output)
    for p, grad in zip(params, grads):
        p.grad = grad
    return losses, outputs


def fused_step_blocker(net: torch.nn.Module) -> str | None:
    """Why ``net`` cannot take the fused step (None: it can). It can if it is a handgrad.models.MLP on
    the hand backend made of its linear layers (with biases) and activations only: no batch norm,
    dropout or other option the fused code does not compute."""
    if not isinstance(net, MLP) or type(net).forward is not MLP.forward:
        return f"{type(net).__name__} is not a handgrad.models.MLP"
    if net.backend != "hand":
        return f"its backend is {net.backend!r}"
    options = [f"{key}={value!r}" for key, value in net.spec.items() if key not in PLAIN_MLP_SPEC and value]
    if options:
        return f"it uses {', '.join(options)}"
    if any(layer.bias is None for layer in net.layers):
        return "a layer has no bias"
    layer_params = [p for layer in net.layers for p in (layer.weight, layer.bias)]
    if [id(p) for p in net.parameters()] != [id(p) for p in layer_params] or next(net.buffers(), None) is not None:
        return "it holds parameters or buffers besides its linear layers"
    for key in ("activation", "output_activation"):
        if net.spec[key] not in FUSED_ACTIVATIONS:
            return f"{key}={net.spec[key]!r} has no fused form"
    return None


def fused_step(net: MLP, loss: str) -> Callable:
    """(x (N, D_0), target) -> (loss, output, [grad_W_1, grad_b_1, .., grad_W_L, grad_b_L]) for ``net``'s
    current weights: ``F.mlp_loss_and_grads``, the hand-written forward and backward of the whole
    network and its cost called without autograd. One mini-batch of the fused path, and what
    handgrad.callbacks.GradientCheck checks against autograd when training takes that path."""
    weights, biases = [layer.weight for layer in net.layers], [layer.bias for layer in net.layers]
    activation, output_activation = net.spec["activation"], net.spec["output_activation"]
    negative_slope = getattr(net.activation, "negative_slope", 0.01)  # of "leaky_relu"

    def step(x: torch.Tensor, target: torch.Tensor):
        return F.mlp_loss_and_grads(x, target, weights, biases, activation, output_activation, loss,
                                    negative_slope=negative_slope)
    return step


def fused_gradients(net: MLP, loss: str, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """{parameter name: gradient} of one fused step on (x (N, *), target), as training computes it."""
    _, _, grads = fused_step(net, loss)(x.flatten(1), target)
    return {name: grad for (name, _), grad in zip(net.named_parameters(), grads, strict=True)}


def sgd_update(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> Callable[[list[torch.Tensor]], None]:
    """update(grads): one optimiser step with ``grads`` (aligned with ``params``) as the gradients.

    For handgrad.optim.SGD, its update of each param group in foreach ops (``optim.sgd_step_``):
    one C++ call per line of the formula instead of a Python loop over the parameters, 5-10 us a
    step on the 2-core dev CPU where setting .grad and calling SGD.step takes 20-40 us. Any other
    optimiser: set each p.grad and call its step().
    """
    index = {id(p): i for i, p in enumerate(params)}
    if type(optimizer) is SGD and all(id(p) in index for group in optimizer.param_groups for p in group["params"]):
        groups = [(group, [index[id(p)] for p in group["params"]]) for group in optimizer.param_groups]
        if len(groups) == 1 and groups[0][1] == list(range(len(params))):  # Classifier's optimiser: one group, in order
            group = groups[0][0]
            return lambda grads: sgd_step_(group, optimizer.state, group["params"], grads)

        def update(grads: list[torch.Tensor]) -> None:
            for group, indices in groups:
                sgd_step_(group, optimizer.state, group["params"], [grads[i] for i in indices])
        return update

    def update_by_step(grads: list[torch.Tensor]) -> None:
        for p, grad in zip(params, grads):
            p.grad = grad
        optimizer.step()
    return update_by_step


# --------------------------------------------------------------------------- the steps on several processes


def sharded_steps(net: torch.nn.Module, cost, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                  targets: torch.Tensor, y: torch.Tensor, batch_size: int, rank: int,
                  ranks: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The autograd path on ``ranks`` processes (Lightning's DDP), as process ``rank`` runs it.

    Every rank holds the whole chunk. Of each mini-batch of n rows, rank r of R = ``ranks`` trains on
    rows [r n / R, (r + 1) n / R) (rounded down; n_r of them, equal to within one row) and, before the
    step, the ranks add up their gradients weighted by their share of the rows:

        grad = sum_r (n_r / n) grad_r      grad_r: gradient of rank r's mean cost over its n_r rows

    which is the gradient of the mean cost over all n rows: the step one process takes on the
    whole mini-batch (up to rounding). A rank with no row of a short last mini-batch adds zeros.
    Each step is one all-reduce (a sum) of one flat buffer holding the weighted gradients, the
    weighted loss and the count of right predictions: one collective a step, not one per
    parameter (DDP's reducer likewise all-reduces flattened buckets), and not Lightning's
    ``strategy.reduce``, which runs a barrier before every all-reduce (a second collective).
    Every parameter is taken to get a gradient (DDP's default, find_unused_parameters=False);
    batch norm normalises with each rank's own rows (DDP without SyncBatchNorm).
    Returns each step's loss over the whole mini-batch, and the chunk's number of right predictions.
    """
    params = [p for p in net.parameters() if p.requires_grad]
    sizes = [p.numel() for p in params]
    losses, right = [], []
    for x_b, t_b, y_b in zip(x.split(batch_size), targets.split(batch_size), y.split(batch_size)):
        n = len(y_b)
        lo, hi = rank * n // ranks, (rank + 1) * n // ranks  # this rank's rows
        optimizer.zero_grad()
        if hi > lo:
            output = net(x_b[lo:hi])  # (n_r, C)
            loss = cost(output, t_b[lo:hi])  # ()
            loss.backward()
            loss, n_right = loss.detach(), (output.detach().argmax(1) == y_b[lo:hi]).sum()
        else:
            loss = n_right = torch.zeros((), device=x.device)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        flat = torch.cat([*(g.reshape(-1) for g in grads), loss.reshape(1).to(grads[0].dtype)])
        flat = torch.cat([flat.mul_((hi - lo) / n), n_right.reshape(1).to(flat.dtype)])  # (sum(sizes) + 2,)
        torch.distributed.all_reduce(flat)  # sum over the ranks, on the process group Lightning set up
        for p, grad in zip(params, flat[:-2].split(sizes)):
            p.grad = grad.view_as(p)
        optimizer.step()
        losses.append(flat[-2].clone())
        right.append(flat[-1].clone())
    return losses, torch.stack(right).sum()


# --------------------------------------------------------------------------- the loop without Lightning


def bare_epoch(net: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               batch_size: int, loss: str = "cross_entropy", order: torch.Tensor | None = None,
               fused: bool | Literal["auto"] = "auto") -> torch.Tensor:
    """One epoch of the plain PyTorch loop, no Lightning: shuffle by ``order``, cut consecutive
    mini-batches, and step on each, by ``fused_steps`` or ``autograd_steps`` as ``fused`` says
    (as for Classifier; "auto": fused where ``fused_step_blocker`` finds nothing against it).
    Returns the per-step losses.

    With the same ``order``, initial weights and ``fused`` it walks the same path as Classifier's
    training_step (tests check it) and is what benchmarks time Lightning against.
    """
    blocker = fused_step_blocker(net)
    if fused is True and blocker is not None:
        raise ValueError(f"bare_epoch: fused=True, but {blocker}")
    if order is not None:
        x, y = x[order], y[order]
    targets = targets_for(loss, y, num_outputs(net), x.dtype)
    if fused is not False and blocker is None:
        losses, _ = fused_steps(net, loss, optimizer, x, targets, batch_size)
    else:
        cost = loss_function(loss, getattr(net, "backend", "hand"))
        losses, _ = autograd_steps(net, cost, optimizer, x, targets, batch_size)
    return torch.stack(losses)
