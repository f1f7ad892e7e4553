"""Second-order information during training, computed with the hand-written derivatives.

    SecondOrder   every N optimiser steps, on a fixed set of training examples:
                  second_order/sharpness              the largest eigenvalue of the loss's Hessian
                  second_order/stability_threshold    the sharpness at which SGD's step stops converging
                                                      on a quadratic: 2 / lr for plain gradient descent,
                                                      2 (1 + momentum) / lr with heavy-ball momentum
                  second_order/per_sample_grad_norm   a histogram of ||grad of one example's loss||
                  second_order/per_sample_grad_norm_median
                  second_order/hessian_vector_products, second_order/sharpness_seconds,
                  second_order/per_sample_seconds     what the call cost (wall time)

Sharpness is found by power iteration on Hessian-vector products (Pearlmutter 1994):

    g = grad_w L(w)                      the hand-written backward, run with create_graph=True
    H v = grad_w (g . v)                 the backward of that backward, v held constant

so every op's second derivative (its backward differentiated once more) is used; the graph of g is
built once per call and each power iteration costs one more backward through it. Per-sample gradients
come from ``torch.func.vmap(torch.func.grad(...))`` of a ``functional_call`` of the network, which runs
the same ops through their transform-ready twins (handgrad.functional.function).

What it shows: Cohen et al. (2021) found that full-batch gradient descent raises the sharpness
("progressive sharpening") until it reaches 2 / lr, then hovers there, at the edge of stability,
while the loss keeps falling, non-monotonically. configs/edge_of_stability.yaml trains an MNIST MLP
that way with this callback on (docs/second_order.md).

Reference: Cohen, Kaur, Li, Kolter & Talwalkar, "Gradient Descent on Neural Networks Typically
Occurs at the Edge of Stability", ICLR 2021 (the momentum thresholds: their appendix); Cohen et al.,
"Adaptive Gradient Methods at the Edge of Stability", 2022; Pearlmutter, "Fast Exact Multiplication by
the Hessian", Neural Computation 6(1), 1994.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence

import torch

from handgrad.callbacks import HISTOGRAM_BINS, EveryNSteps, log_scalars, tensorboard
from handgrad.errors import ConfigError
from handgrad.optim import SGD
from handgrad.steps import targets_for

Vectors = Sequence[torch.Tensor]  # one tensor per parameter: a point of the parameter space


def dot(a: Vectors, b: Vectors) -> torch.Tensor:
    """sum_i <a_i, b_i>: the inner product of two parameter-space vectors, ()."""
    return torch.stack([(x * y).sum() for x, y in zip(a, b, strict=True)]).sum()


def hessian_vector_product(loss: torch.Tensor, params: Vectors) -> Callable[[Vectors], list[torch.Tensor]]:
    """v -> H v for the Hessian H of ``loss`` with respect to ``params``.

    The gradient g is computed once, with its graph (create_graph=True); each call then differentiates
    it once more: grad_w (g . v) = H v, one backward through the backward (v is constant).
    """
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True, materialize_grads=True)
    linked = [i for i, g in enumerate(grads) if g.requires_grad]  # a gradient constant in w adds nothing to H v

    def hvp(v: Vectors) -> list[torch.Tensor]:
        # allow_unused / materialize_grads: a block of H that is zero (w_j absent from every gradient) is zeros
        return list(torch.autograd.grad([grads[i] for i in linked], params, grad_outputs=[v[i] for i in linked],
                                        retain_graph=True, allow_unused=True, materialize_grads=True))
    return hvp


def largest_eigenvalue(hvp: Callable[[Vectors], list[torch.Tensor]], start: Vectors, iterations: int = 20,
                       tolerance: float = 1e-3) -> tuple[float, list[torch.Tensor], int]:
    """(lambda, v, HVPs used) by power iteration on ``hvp``:

        v_0 = start / ||start||;   u = H v_k,   lambda_k = v_k . u,   v_{k+1} = u / ||u||

    stopping when lambda moves by at most ``tolerance`` (relatively) or after ``iterations`` products.
    lambda is the eigenvalue of largest magnitude and v (unit norm) its eigenvector; for a network's
    loss past its first steps that is the largest eigenvalue, the sharpness. Passing the previous
    call's v as ``start`` (warm start) makes a call a few products long once training is under way.
    """
    v = [u / dot(start, start).sqrt() for u in start]
    eigenvalue = previous = torch.zeros(())
    for k in range(1, iterations + 1):
        hv = hvp(v)
        previous, eigenvalue = eigenvalue, dot(v, hv)
        norm = dot(hv, hv).sqrt()
        if norm == 0:  # H v = 0: v lies in the Hessian's null space (e.g. a dead network)
            return 0.0, v, k
        v = [u / norm for u in hv]
        if k > 1 and abs(eigenvalue - previous) <= tolerance * abs(eigenvalue):
            return float(eigenvalue), v, k
    return float(eigenvalue), v, iterations


def per_sample_gradient_norms(net: torch.nn.Module, cost: Callable, x: torch.Tensor, target: torch.Tensor,
                              chunk_size: int = 64) -> torch.Tensor:
    """||grad_w cost(net(x_i), t_i)|| for each example i, (N,): torch.func.vmap over the examples of
    torch.func.grad of one example's loss, ``chunk_size`` examples at a time (each holds a gradient)."""
    params = {name: p.detach() for name, p in net.named_parameters()}
    buffers = {name: b.detach() for name, b in net.named_buffers()}

    def loss_of_one(weights: dict[str, torch.Tensor], x_i: torch.Tensor, t_i: torch.Tensor) -> torch.Tensor:
        output = torch.func.functional_call(net, (weights, buffers), (x_i.unsqueeze(0),))  # (1, C)
        return cost(output, t_i.unsqueeze(0))  # ()

    def norm_of_gradient(x_i: torch.Tensor, t_i: torch.Tensor) -> torch.Tensor:
        grads = torch.func.grad(loss_of_one)(params, x_i, t_i)
        return torch.stack([(g * g).sum() for g in grads.values()]).sum().sqrt()  # ()

    return torch.func.vmap(norm_of_gradient, chunk_size=chunk_size)(x, target)


def stability_threshold(lr: float, momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
                        weight_decay: float = 0.0) -> float:
    """The curvature lambda of the loss above which (handgrad's) SGD diverges on a quadratic loss:

        plain and heavy ball:  lr (1 - dampening) (lambda + weight_decay) < 2 (1 + momentum)
        Nesterov:              lr (lambda + weight_decay) < 2 (1 + momentum) / (1 + 2 momentum)

    (weight decay adds weight_decay to every curvature of the objective descended). Momentum 0: 2 / lr.
    """
    if nesterov:
        return 2 * (1 + momentum) / (lr * (1 + 2 * momentum)) - weight_decay
    return 2 * (1 + momentum) / (lr * (1 - dampening)) - weight_decay


class SecondOrder(EveryNSteps):
    """Logs the sharpness (the largest Hessian eigenvalue of the loss) beside the edge of stability,
    and the distribution of per-sample gradient norms (module docstring).

    The examples are drawn once, at the fit's start, from the training split in an order fixed by
    ``seed``: the first ``examples`` of it (all of them if None or if it has fewer) for the Hessian,
    whose loss is the Classifier's cost averaged over them (the loss a full-batch step on them
    descends), and the first ``per_sample_examples`` for the gradient norms. The network is
    evaluated in eval mode (dropout off, batch norm with its running statistics: per-sample
    gradients need that); training's parameters, gradients and random stream are untouched. The
    threshold is read from the optimiser's first param group at each call: it follows an lr schedule.
    It is logged for SGD only: for an adaptive optimiser (Adam, RMSprop, ...) the step is preconditioned
    and 2 / lr bounds the preconditioned Hessian's sharpness instead (Cohen et al. 2022), which this
    callback does not compute; it warns once and logs the sharpness alone.

    The Hessian is that of handgrad's hand-written backward, so the network must be built from
    handgrad's ops (``backend: hand``); a torch.nn twin is refused. Whichever path the training steps
    take (handgrad.steps: the fused step computes its gradients without autograd), the callback runs
    the network's own forward, its per-layer Functions, under autograd with create_graph=True.

    Args:
        every_n_steps: when the optimiser step count crosses a multiple of this (and on the first chunk).
        examples: training examples the Hessian's loss averages over; None: the whole training split.
        iterations: at most this many Hessian-vector products per call; each costs about what a
            training step on ``examples`` costs, after the gradient's graph, built once per call
            for about two and a half (docs/second_order.md).
        tolerance: stop the power iteration when the eigenvalue moves by at most this, relatively.
        per_sample_examples: examples whose gradient norms are histogrammed; 0 turns that off.
        per_sample_chunk: examples per vmap call (memory: one gradient per example in a chunk).
        seed: which training examples are used, and the power iteration's first start vector.
    """

    def __init__(self, every_n_steps: int = 100, examples: int | None = 1000, iterations: int = 20,
                 tolerance: float = 1e-3, per_sample_examples: int = 256, per_sample_chunk: int = 64,
                 seed: int = 0):
        super().__init__(every_n_steps)
        for name, value, low, fix in (("examples", examples, 1, "e.g. 1000, or null for the whole training split"),
                                      ("iterations", iterations, 1, "e.g. 20"),
                                      ("per_sample_examples", per_sample_examples, 0, "e.g. 256, or 0 (off)"),
                                      ("per_sample_chunk", per_sample_chunk, 1, "e.g. 64")):
            if value is not None and value < low:
                raise ValueError(f"SecondOrder: {name}={value} must be >= {low}; use {fix}")
        if not 0 < tolerance < 1:
            raise ValueError(f"SecondOrder: tolerance={tolerance} must be in (0, 1); use e.g. 1e-3")
        self.examples, self.iterations, self.tolerance = examples, iterations, tolerance
        self.per_sample_examples, self.per_sample_chunk, self.seed = per_sample_examples, per_sample_chunk, seed
        self.last: dict[str, float] = {}  # the latest call's scalars, for tests and scripts
        self._order: torch.Tensor | None = None  # indices into the training split, in the fixed order
        self._v: list[torch.Tensor] | None = None  # the previous call's eigenvector: the next call's start
        self._warned = False  # about an optimiser without a threshold

    def on_fit_start(self, trainer, pl_module) -> None:
        """Refuse what the callback cannot measure, before the first step; fix the examples."""
        super().on_fit_start(trainer, pl_module)
        splits = getattr(trainer.datamodule, "splits", None)
        if not isinstance(splits, dict) or "train" not in splits:
            raise ConfigError("SecondOrder reads its examples from a handgrad.data.DataModule's training split; "
                              f"trainer.datamodule is {type(trainer.datamodule).__name__}: train with one")
        missing = [name for name in ("net", "cost", "loss", "num_classes") if not hasattr(pl_module, name)]
        if missing:
            raise ConfigError(f"SecondOrder needs a handgrad.lit_module.Classifier; {type(pl_module).__name__} "
                              f"has no {', '.join(missing)}")
        backend = getattr(pl_module.net, "backend", "hand")
        if backend != "hand":
            raise ConfigError(f"SecondOrder differentiates handgrad's hand-written backward, but model.net has "
                              f"backend={backend!r} (torch's derivatives); use backend 'hand'")
        n = len(splits["train"][1])
        self._order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        self._v = None

    def check(self, trainer, pl_module, batch, steps: int) -> None:
        if trainer.global_rank != 0:  # every rank holds the same weights; rank 0 logs
            return
        assert self._order is not None  # drawn in on_fit_start
        x_all, y_all = trainer.datamodule.splits["train"]
        net, cost = pl_module.net, pl_module.cost
        dtype = next(net.parameters()).dtype
        chosen = self._order[:self.examples].to(y_all.device)
        x, y = x_all[chosen].to(dtype), y_all[chosen]
        target = targets_for(pl_module.loss, y, pl_module.num_classes, dtype)
        params = [p for p in net.parameters() if p.requires_grad]
        was_training = net.training
        net.eval()
        try:
            start = time.perf_counter()
            with torch.enable_grad():
                hvp = hessian_vector_product(cost(net(x), target), params)
                sharpness, self._v, products = largest_eigenvalue(
                    hvp, self._v or self.random_start(params), self.iterations, self.tolerance)
            del hvp  # the gradient's graph
            self.last = {"second_order/sharpness": sharpness,
                         **self.threshold(trainer),
                         "second_order/hessian_vector_products": float(products),
                         "second_order/sharpness_seconds": time.perf_counter() - start}
            if self.per_sample_examples:
                start = time.perf_counter()
                chosen = self._order[:self.per_sample_examples].to(y_all.device)
                x_s = x_all[chosen].to(dtype)
                t_s = targets_for(pl_module.loss, y_all[chosen], pl_module.num_classes, dtype)
                norms = per_sample_gradient_norms(net, cost, x_s, t_s, self.per_sample_chunk)  # (n,)
                writer = tensorboard(trainer)
                if writer is not None:
                    writer.add_histogram("second_order/per_sample_grad_norm", norms, trainer.global_step,
                                         bins=HISTOGRAM_BINS)
                self.last["second_order/per_sample_grad_norm_median"] = float(norms.median())
                self.last["second_order/per_sample_seconds"] = time.perf_counter() - start
        finally:
            net.train(was_training)
        log_scalars(trainer, self.last)

    def random_start(self, params: Vectors) -> list[torch.Tensor]:
        """The power iteration's first start vector: normal entries drawn from ``seed`` (not training's stream)."""
        generator = torch.Generator().manual_seed(self.seed)
        return [torch.randn(p.shape, dtype=p.dtype, generator=generator).to(p.device) for p in params]

    def threshold(self, trainer) -> dict[str, float]:
        """{"second_order/stability_threshold": ``stability_threshold`` of the optimiser's first param group
        (its lr now)} for SGD; {} for another optimiser (a warning, once)."""
        optimizer = trainer.optimizers[0]
        if not isinstance(optimizer, SGD | torch.optim.SGD):
            if not self._warned:
                self._warned = True
                warnings.warn(f"SecondOrder: no stability_threshold for {type(optimizer).__name__}: 2 (1 + momentum) "
                              "/ lr is SGD's; an adaptive optimiser's step is preconditioned. The sharpness is "
                              "logged alone", stacklevel=2)
            return {}
        group = optimizer.param_groups[0]
        return {"second_order/stability_threshold": stability_threshold(
            group["lr"], group["momentum"], group["dampening"], group["nesterov"], group["weight_decay"])}
