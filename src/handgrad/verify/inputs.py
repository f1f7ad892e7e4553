"""Input generators shared by the families' rows (verify/cases/): each takes (dtype, generator) or
returns such a maker, and gives an op's keyword arguments, floating tensors as leaves requiring grad."""

from __future__ import annotations

from collections.abc import Callable

import torch


def randn(*shape: int, dtype: torch.dtype, generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, dtype=dtype, generator=generator) * scale).requires_grad_()


def away_from_zero(*shape: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """Random values with |x| >= 0.1, so finite differences never straddle a kink at 0."""
    x = torch.randn(shape, dtype=dtype, generator=generator)
    return (x + 0.1 * x.sign()).requires_grad_()


def class_indices(n: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(num_classes, (n,), generator=generator)


def distinct(*shape: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """Shuffled values 0.05 apart: no two inputs tie for a window's maximum, even after a finite-difference step."""
    n = torch.Size(shape).numel()
    values = (torch.randperm(n, generator=generator).to(dtype) - n / 2) * 0.05
    return values.reshape(shape).requires_grad_()


def linear_inputs(dtype, g):
    return dict(input=randn(7, 5, dtype=dtype, generator=g), weight=randn(3, 5, dtype=dtype, generator=g),
                bias=randn(3, dtype=dtype, generator=g))


def elementwise_inputs(dtype, g):
    return dict(input=randn(6, 9, dtype=dtype, generator=g, scale=2.0))


def kinked_inputs(dtype, g):
    return dict(input=away_from_zero(6, 9, dtype=dtype, generator=g))


def pool_inputs(n: int, c: int, height: int, width: int):
    def make(dtype, g):
        return dict(input=distinct(n, c, height, width, dtype=dtype, generator=g))
    return make


def seeded(dropout: Callable, seed: int = 0) -> Callable:
    """``dropout`` with the global generator reseeded on each call, so every call drops the same
    elements (gradcheck calls it many times); the caller's generator state is left as it was."""
    def fn(input, **kwargs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return dropout(input, **kwargs)
    return fn
