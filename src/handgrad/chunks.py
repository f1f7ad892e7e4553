"""Chunks: what a Lightning batch is here, and the sampler and loader that cut an epoch into them.

A chunk is many consecutive mini-batches of one epoch's order (at most ``chunk_size`` examples,
a whole number of mini-batches); the LightningModule loops over its mini-batches itself, so
Lightning's per-batch bookkeeping is paid once per chunk. The training loader can start an
epoch at any optimiser step of it (``ChunkSampler.resume_at``), so that a run stopped anywhere
(a signal between two chunks, max_steps or max_time inside one) resumes exactly where it stopped;
``ChunkSampler.locate`` turns "k steps into the epoch" into "chunk c, j steps into it".

handgrad.data serves its splits through these; a second DataModule (another kind of data held as
tensors) can reuse them as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, cast

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class Chunk(NamedTuple):
    """Consecutive mini-batches of one epoch's order: x (M, *), y (M,), cut every ``batch_size`` rows."""

    x: torch.Tensor
    y: torch.Tensor
    batch_size: int

    def minibatches(self):
        """(x, y) views of at most ``batch_size`` rows each; the last may be shorter."""
        return zip(self.x.split(self.batch_size), self.y.split(self.batch_size), strict=True)


class ChunkedTensors(Dataset):
    """x (N, *) and y (N,) indexed by a whole chunk at once: ``dataset[indices]`` -> Chunk."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int):
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: torch.Tensor | slice) -> Chunk:
        return Chunk(self.x[index], self.y[index], self.batch_size)


class ChunkSampler(DistributedSampler):
    """Yields one index per chunk: a slice of a fresh permutation each epoch, or a plain slice.

    The n examples make ceil(n / batch_size) mini-batches (the last may be short); they are
    dealt into as few chunks of at most ``chunk_size`` examples as possible, each a whole
    number of mini-batches and the chunks equal to within one mini-batch (so no chunk's logged
    loss rests on a handful of examples). ``set_epoch``, which Lightning calls at every epoch
    start as for DistributedSampler, picks the permutation: a run resumed at epoch k sees the
    same order as one that never stopped. ``resume_at`` skips what a run trained of an epoch
    before it stopped: whole chunks, then steps of the next one (ChunkLoader.load_state_dict).

    Several processes (Lightning's DDP: ``num_replicas`` ranks, this one ``rank``):
    ``shard=False`` (training) gives every rank every whole chunk, and Classifier trains each
    rank on its own slice of each mini-batch, so a step still averages over ``batch_size``
    examples in all; ``shard=True`` (evaluation) gives each rank its own slice of each chunk.
    It is a DistributedSampler only so that Lightning keeps it: "if a distributed sampler was
    already added, Lightning will not replace the existing one" (Trainer, use_distributed_sampler).
    """

    def __init__(self, n: int, batch_size: int, chunk_size: int, shuffle: bool, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, shard: bool = False):
        # only len() of the dataset argument is read: a range stands for the n examples
        super().__init__(cast(Dataset, range(n)), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        steps = math.ceil(n / batch_size)
        chunks = math.ceil(steps / max(1, chunk_size // batch_size))
        bounds = [min(n, (i * steps // chunks) * batch_size) for i in range(chunks + 1)] if n else [0]
        self.slices = list(zip(bounds[:-1], bounds[1:], strict=True))  # [start, end) of each chunk
        if shard and num_replicas > 1:  # this rank's part of each chunk; ranks differ by at most one row
            cut = [(start + rank * (end - start) // num_replicas, start + (rank + 1) * (end - start) // num_replicas)
                   for start, end in self.slices]
            self.slices = [(start, end) for start, end in cut if end > start]
        self.n, self.batch_size = n, batch_size
        self.resume: tuple[int, int, int] | None = None  # (epoch, chunks of it trained, steps into the next one)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, chunks_done: int, skip_steps: int = 0) -> None:
        """Start epoch ``epoch`` at its chunk ``chunks_done``, ``skip_steps`` mini-batches into it (the same
        permutation; what comes before is skipped)."""
        self.resume = (epoch, chunks_done, skip_steps)

    def steps(self, chunks: int | float | None = None) -> int:
        """Optimiser steps in the first ``chunks`` chunks of an epoch (all of them if None)."""
        taken = self.slices[:None if chunks is None or chunks >= len(self.slices) else int(chunks)]
        return math.ceil(taken[-1][1] / self.batch_size) if taken else 0

    def locate(self, steps: int) -> tuple[int, int]:
        """(chunk, steps into it) of the mini-batch that follows ``steps`` steps of an epoch: (0, 0) at its start."""
        for chunk, (start, end) in enumerate(self.slices):
            if steps < math.ceil(end / self.batch_size):
                return chunk, steps - start // self.batch_size
        return len(self.slices), 0

    def permutation(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=generator)

    def __len__(self) -> int:
        return len(self.slices)

    def __iter__(self):
        chunks, steps = 0, 0
        if self.resume is not None and self.resume[0] == self.epoch:
            (_, chunks, steps), self.resume = self.resume, None
        order = self.permutation() if self.shuffle else None
        for i, (start, end) in enumerate(self.slices[chunks:]):
            if i == 0:
                start += steps * self.batch_size  # the rest of a chunk that a stop inside it cut short
            yield order[start:end] if order is not None else slice(start, end)


class ChunkLoader(DataLoader):
    """The training DataLoader of chunks, resumable anywhere in an epoch.

    Lightning saves a training loader's ``state_dict()`` in every checkpoint and, when a fit
    resumes from one taken mid-epoch, hands it back to ``load_state_dict`` (its stateful-loader
    interface). The state is the epoch, how many of its chunks were trained (``chunks_done()``,
    read from the trainer's progress: the loader itself runs one chunk ahead, as Lightning
    prefetches one) and how many steps of the next one (``skip_steps``). handgrad.resume writes
    the exact place into every checkpoint, from the optimiser step count.
    """

    def __init__(self, dataset: ChunkedTensors, sampler: ChunkSampler, chunks_done: Callable[[], int]):
        super().__init__(dataset, sampler=sampler, batch_size=None, generator=torch.Generator())  # see DataModule
        self.chunk_sampler, self.chunks_done = sampler, chunks_done

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.chunk_sampler.epoch, "chunks_done": self.chunks_done(), "skip_steps": 0}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.chunk_sampler.resume_at(state["epoch"], state["chunks_done"], state.get("skip_steps", 0))
