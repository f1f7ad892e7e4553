"""Second-order information during training, computed with the hand-written derivatives.

    SecondOrder   every N optimiser steps, on a fixed set of training examples:
                  second_order/sharpness            the largest eigenvalue of the loss's Hessian
                  second_order/stability_threshold  2 (1 + momentum) / lr, where gradient descent on a
                                                    quadratic with that curvature stops converging
                  second_order/per_sample_grad_norm a histogram of ||grad of one example's loss||
                  second_order/per_sample_grad_norm_median, second_order/seconds (the call's wall time)

Sharpness is found by power iteration on Hessian-vector products, Hv = d/dw (grad L(w) . v): the
gradient comes from the hand-written backward with ``create_graph=True``, and its derivative in the
direction v from differentiating that backward once more, so every op's second derivative is used.
Per-sample gradients come from ``torch.func.vmap(torch.func.grad(...))`` over the same Functions,
which torch.func runs through their transform-ready twins.

What it shows: Cohen et al. (2021) found that full-batch gradient descent raises the sharpness
("progressive sharpening") until it reaches 2 / lr, then hovers there, at the edge of stability,
while the loss keeps falling, non-monotonically. configs/edge_of_stability.yaml trains an MNIST MLP
that way with this callback on (docs/second_order.md).

Reference: Cohen, Kaur, Li, Kolter & Talwalkar, "Gradient Descent on Neural Networks Typically
Occurs at the Edge of Stability", ICLR 2021 (the threshold with heavy-ball momentum beta:
(2 + 2 beta) / lr, their appendix); Pearlmutter, "Fast Exact Multiplication by the Hessian", 1994.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from handgrad.callbacks import HISTOGRAM_BINS, EveryNSteps, log_scalars, tensorboard
from handgrad.steps import targets_for

Params = Sequence[torch.Tensor]


def hessian_vector_product(loss_of: Callable[[], torch.Tensor], params: Params, v: Params) -> list[torch.Tensor]:
    """Hv for the Hessian H of ``loss_of()`` with respect to ``params``: the gradient g(w) with its graph
    (create_graph=True), then d/dw (g . v) = H v, v held constant (Pearlmutter 1994)."""
    grads = torch.autograd.grad(loss_of(), params, create_graph=True)
    g_dot_v = sum((g * u).sum() for g, u in zip(grads, v, strict=True))
    return list(torch.autograd.grad(g_dot_v, params))


def dot(a: Params, b: Params) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def largest_eigenvalue(loss_of: Callable[[], torch.Tensor], params: Params, iterations: int = 20,
                       tolerance: float = 1e-3, start: Params | None = None,
                       generator: torch.Generator | None = None) -> tuple[float, list[torch.Tensor], int]:
    """(lambda, v, HVPs used): the eigenvalue of largest magnitude of the Hessian of ``loss_of()`` and its
    unit eigenvector, by power iteration:

        v_0 = start (or random), normalised;   u = H v_k,   lambda_k = v_k . u,   v_{k+1} = u / ||u||

    stopping when lambda changes by less than ``tolerance`` (relative) or after ``iterations`` HVPs.
    Early in training and at the edge of stability the largest eigenvalue is positive: the sharpness.
    ``start``: the previous call's v, which makes a call a few iterations long once training is under way.
    """
    if start is None:
        start = [torch.randn(p.shape, dtype=p.dtype, generator=generator).to(p.device) for p in params]
    norm = dot(start, start).sqrt()
    v = [u / norm for u in start]
    eigenvalue = torch.zeros(())
    for k in range(1, iterations + 1):
        hv = hessian_vector_product(loss_of, params, v)
        previous, eigenvalue = eigenvalue, dot(v, hv)
        norm = dot(hv, hv).sqrt()
        if norm == 0:  # H v = 0: v lies in the Hessian's null space (e.g. a dead network)
            return 0.0, v, k
        v = [u / norm for u in hv]
        if k > 1 and abs(eigenvalue - previous) <= tolerance * abs(eigenvalue):
            return float(eigenvalue), v, k
    return float(eigenvalue), v, iterations


def per_sample_gradient_norms(net: torch.nn.Module, cost: Callable, x: torch.Tensor, target: torch.Tensor,
                              chunk_size: int = 32) -> torch.Tensor:
    """||grad_w cost(net(x_i), t_i)|| for each example i (N,), by torch.func: vmap over the examples of
    grad of one example's loss, ``chunk_size`` examples at a time (each holds a copy of every gradient)."""
    params = {name: p.detach() for name, p in net.named_parameters()}
    buffers = dict(net.named_buffers())

    def loss_of_one(weights: dict, x_i: torch.Tensor, t_i: torch.Tensor) -> torch.Tensor:
        output = torch.func.functional_call(net, (weights, buffers), (x_i.unsqueeze(0),))
        return cost(output, t_i.unsqueeze(0))

    def norm_of_gradient(x_i: torch.Tensor, t_i: torch.Tensor) -> torch.Tensor:
        grads = torch.func.grad(loss_of_one)(params, x_i, t_i)
        return torch.sqrt(sum((g * g).sum() for g in grads.values()))

    return torch.func.vmap(norm_of_gradient, chunk_size=chunk_size)(x, target)


class SecondOrder(EveryNSteps):
    """Logs the sharpness (the largest Hessian eigenvalue of the loss) against the edge of stability
    2 (1 + momentum) / lr, and the distribution of per-sample gradient norms (module docstring).

    The examples are the first ``examples`` of the training split in a fixed order drawn with ``seed``
    at the fit's start; the loss is ``pl_module.cost`` (the Classifier's) over them, the mean that a
    full-batch step on them would descend. The network is evaluated in eval mode (dropout off, batch
    norm with its running statistics: one example at a time needs that for per-sample gradients);
    training's parameters, gradients and random stream are untouched.

    Args:
        every_n_steps: when the optimiser step count crosses a multiple of this (and on the first chunk).
        examples: training examples the Hessian's loss is averaged over.
        iterations: at most this many Hessian-vector products per call (the power iteration); each costs
            about two backward passes over ``examples``.
        tolerance: stop the power iteration when the eigenvalue moves by less than this, relatively.
        per_sample_examples: examples whose individual gradient norms are histogrammed (0: off).
        seed: which training examples are used.
    """

    def __init__(self, every_n_steps: int = 100, examples: int = 1000, iterations: int = 20,
                 tolerance: float = 1e-3, per_sample_examples: int = 256, seed: int = 0):
        super().__init__(every_n_steps)
        for name, value, low in (("examples", examples, 1), ("iterations", iterations, 1),
                                 ("per_sample_examples", per_sample_examples, 0)):
            if value < low:
                raise ValueError(f"SecondOrder: {name}={value} must be >= {low}")
        if not 0 < tolerance < 1:
            raise ValueError(f"SecondOrder: tolerance={tolerance} must be in (0, 1), e.g. 1e-3")
        self.examples, self.iterations, self.tolerance = examples, iterations, tolerance
        self.per_sample_examples, self.seed = per_sample_examples, seed
        self.last: dict[str, float] = {}  # the latest call's scalars, for tests and scripts
        self._data: tuple[torch.Tensor, torch.Tensor] | None = None
        self._v: list[torch.Tensor] | None = None  # the previous eigenvector: the next call's start

    def on_fit_start(self, trainer, pl_module) -> None:
        super().on_fit_start(trainer, pl_module)
        x, y = trainer.datamodule.splits["train"]
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed))[:self.examples]
        self._data = x[order.to(x.device)], y[order.to(y.device)]
        self._v = None

    def check(self, trainer, pl_module, batch, steps: int) -> None:
        start = time.perf_counter()
        assert self._data is not None  # set in on_fit_start
        net, cost = pl_module.net, pl_module.cost
        x, y = self._data
        dtype = next(net.parameters()).dtype
        x = x.to(dtype)
        target = targets_for(pl_module.loss, y, pl_module.num_classes, dtype)
        params = [p for p in net.parameters() if p.requires_grad]
        was_training = net.training
        net.eval()
        try:
            with torch.enable_grad():
                sharpness, self._v, hvps = largest_eigenvalue(
                    lambda: cost(net(x), target), params, self.iterations, self.tolerance, self._v,
                    torch.Generator().manual_seed(self.seed))
            norms = None
            if self.per_sample_examples:
                n = self.per_sample_examples
                norms = per_sample_gradient_norms(net, cost, x[:n], target[:n]).detach()
        finally:
            net.train(was_training)

        group = trainer.optimizers[0].param_groups[0]
        threshold = 2 * (1 + group.get("momentum", 0.0)) / group["lr"]
        self.last = {"second_order/sharpness": sharpness, "second_order/stability_threshold": threshold,
                     "second_order/hessian_vector_products": float(hvps)}
        if norms is not None:
            self.last["second_order/per_sample_grad_norm_median"] = float(norms.median())
            writer = tensorboard(trainer)
            if writer is not None:
                writer.add_histogram("second_order/per_sample_grad_norm", norms, trainer.global_step,
                                     bins=HISTOGRAM_BINS)
        self.last["second_order/seconds"] = time.perf_counter() - start
        log_scalars(trainer, self.last)
