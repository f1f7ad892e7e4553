"""How the mini-batches of a chunk are trained, and the same loop without Lightning.

Classifier.training_step hands each chunk (many consecutive mini-batches) to one of three
paths; the first chunk of a fit logs which (``Classifier(fused=...)`` chooses):

    fused      a plain handgrad.models.MLP (hand backend, no batch norm, no dropout) outside
               autocast (``fused_steps``): F.mlp_loss_and_grads computes loss and gradients with
               the very code of the whole-network Function's forward and backward, called
               directly (no graph, no autograd engine, no .grad accumulation), and SGD's update
               runs as a few foreach ops (``sgd_update``; any other optimiser takes its own step()).
               For nielsen_ch1 at batch 10 a step then takes about 0.4x the time of its torch.nn
               twin's autograd step (README, Performance).
    autograd   every other network (``autograd_steps``): its per-layer Functions,
               loss.backward() and optimizer.step().
    sharded    on several processes (Lightning's DDP, ``sharded_steps``): the autograd path on this
               rank's slice of each mini-batch, the ranks' gradients all-reduced before each step.

All compute the same hand-written derivatives (tests compare the weights after an epoch);
handgrad.callbacks.GradientCheck checks the gradients of the path that ran. ``bare_epoch`` is
the loop without Lightning: the reference that tests compare Classifier with and benchmarks
time it against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, cast

import torch
import torch.nn.functional as torch_F

import handgrad.functional as F
from handgrad.data import ConfigError
from handgrad.functional.fused import ACTIVATIONS as FUSED_ACTIVATIONS
from handgrad.models import MLP
from handgrad.optim import SGD, sgd_step_

PLAIN_MLP_SPEC = ("sizes", "activation", "output_activation", "init")  # MLP options the fused step computes

# --------------------------------------------------------------------------- costs and targets


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


# --------------------------------------------------------------------------- the steps of a chunk: two paths


def autograd_steps(net: torch.nn.Module, cost, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                   targets: torch.Tensor, batch_size: int,
                   scaler: torch.amp.GradScaler | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The general path, for any network: per mini-batch of ``batch_size`` rows, forward (the
    network's per-layer Functions), cost, zero_grad, backward (autograd's engine), step; with a
    ``scaler`` (float16 autocast, Lightning's "16-mixed"), backward from the scaled loss and
    ``step_with_scaler``. Returns each step's loss and output (detached), for the chunk's metrics."""
    losses, outputs = [], []
    for x_b, t_b in zip(x.split(batch_size), targets.split(batch_size), strict=True):
        output = net(x_b)  # (b, C)
        loss = cost(output, t_b)  # ()
        optimizer.zero_grad()
        (loss if scaler is None else scaler.scale(loss)).backward()
        step_with_scaler(optimizer, scaler)
        losses.append(loss.detach())
        outputs.append(output.detach())
    return losses, outputs


@torch.no_grad()
def fused_steps(net: torch.nn.Module, loss: str, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                targets: torch.Tensor, batch_size: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The fused path, for a plain MLP (see ``fused_step_blocker``): per mini-batch, loss and gradients
    by ``fused_step`` (no graph, no engine) and the optimiser's update with those gradients
    (``sgd_update``). Afterwards each p.grad holds the last mini-batch's gradient, as after
    ``autograd_steps``. Returns each step's loss and output, for the chunk's metrics."""
    mlp = cast(MLP, net)  # a plain MLP: fused_step_blocker(net) is None
    step, params = fused_step(mlp, loss), [p for layer in mlp.linears for p in (layer.weight, layer.bias)]
    update = sgd_update(optimizer, params)
    losses, outputs, grads = [], [], []
    for x_b, t_b in zip(x.flatten(1).split(batch_size), targets.split(batch_size), strict=True):
        value, output, grads = step(x_b, t_b)  # (), (b, C), [grad_W_1, grad_b_1, ...]
        update(grads)
        losses.append(value)
        outputs.append(output)
    for p, grad in zip(params, grads, strict=True):
        p.grad = grad
    return losses, outputs


def step_with_scaler(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """optimizer.step(); or, with a loss scaler (Lightning's "16-mixed" holds one), the second half of a
    loss-scaled step. The backward ran from S * loss, so that gradients too small for float16
    (below 6e-8) did not flush to zero; the step divides the gradients by S again and is skipped
    (S halved) when any of them overflowed to inf or nan; S doubles after 2000 steps without an
    overflow (torch.amp.GradScaler)."""
    if scaler is None:
        optimizer.step()
        return
    scaler.step(optimizer)
    scaler.update()


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
    if any(layer.bias is None for layer in net.linears):
        return "a layer has no bias"
    layer_params = [p for layer in net.linears for p in (layer.weight, layer.bias)]
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
    weights, biases = [layer.weight for layer in net.linears], [layer.bias for layer in net.linears]
    activation, output_activation = net.spec["activation"], net.spec["output_activation"]
    negative_slope = getattr(net.activation, "negative_slope", 0.01)  # of "leaky_relu"

    def step(x: torch.Tensor, target: torch.Tensor):
        return F.mlp_loss_and_grads(x, target, weights, biases, activation, output_activation, loss,
                                    negative_slope=negative_slope)
    return step


def fused_gradients(net: torch.nn.Module, loss: str, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """{parameter name: gradient} of one fused step on (x (N, *), target), as training computes it
    (``net``: a plain MLP, see fused_step_blocker)."""
    _, _, grads = fused_step(cast(MLP, net), loss)(x.flatten(1), target)
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
        for p, grad in zip(params, grads, strict=True):
            p.grad = grad
        optimizer.step()
    return update_by_step


# --------------------------------------------------------------------------- the steps on several processes


def sharded_steps(net: torch.nn.Module, cost, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                  targets: torch.Tensor, y: torch.Tensor, batch_size: int, rank: int, ranks: int,
                  scaler: torch.amp.GradScaler | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
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
    batch norm normalises with each rank's own rows (DDP without SyncBatchNorm). With a loss
    ``scaler`` ("16-mixed"), the ranks add up gradients of S * loss, S alike on every rank, and all
    of them then see the same sums, so they skip the same overflowing steps.
    Returns each step's loss over the whole mini-batch, and the chunk's number of right predictions.
    """
    params = [p for p in net.parameters() if p.requires_grad]
    sizes = [p.numel() for p in params]
    losses, right = [], []
    for x_b, t_b, y_b in zip(x.split(batch_size), targets.split(batch_size), y.split(batch_size), strict=True):
        n = len(y_b)
        lo, hi = rank * n // ranks, (rank + 1) * n // ranks  # this rank's rows
        optimizer.zero_grad()
        if hi > lo:
            output = net(x_b[lo:hi])  # (n_r, C)
            loss = cost(output, t_b[lo:hi])  # ()
            (loss if scaler is None else scaler.scale(loss)).backward()
            loss, n_right = loss.detach(), (output.detach().argmax(1) == y_b[lo:hi]).sum()
        else:
            loss = n_right = torch.zeros((), device=x.device)
            if scaler is not None:
                scaler.scale(loss)  # S exists from the first step on every rank
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        flat = torch.cat([*(g.reshape(-1) for g in grads), loss.reshape(1).to(grads[0].dtype)])
        flat = torch.cat([flat.mul_((hi - lo) / n), n_right.reshape(1).to(flat.dtype)])  # (sum(sizes) + 2,)
        torch.distributed.all_reduce(flat)  # sum over the ranks, on the process group Lightning set up
        for p, grad in zip(params, flat[:-2].split(sizes), strict=True):
            p.grad = grad.view_as(p)
        step_with_scaler(optimizer, scaler)
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
