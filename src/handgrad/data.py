"""The data: MNIST, Fashion-MNIST or 2-D spirals, held as tensors and served in chunks.

The whole dataset is turned into tensors once (images: float32 in [0, 1], shape
(N, 1, 28, 28); labels: int64 (N,)); no per-sample decode or collate ever runs.

One Lightning "batch" is a *chunk*: many consecutive mini-batches (at most ``chunk_size``
examples, a whole number of mini-batches). The LightningModule loops over
the chunk's mini-batches itself, so Lightning's per-batch bookkeeping (about 1 ms on a CPU)
is paid once per chunk instead of once per optimiser step. Each epoch the training split
is shuffled with a permutation drawn from (seed, epoch) and cut into consecutive slices,
the last one partial (like drop_last=False), so an epoch takes exactly
ceil(n_train / batch_size) optimiser steps:

    batch_size=1       stochastic gradient descent: one example per step
    batch_size=10      mini-batch gradient descent
    batch_size="full"  full-batch gradient descent: one step per epoch over the whole split

On several processes (Lightning's DDP) every rank gets every training chunk and trains on its
slice of each mini-batch (see handgrad.chunks), so batch_size stays the global batch. The training
loader resumes at any optimiser step of an epoch (ChunkLoader), and the IDX files are checked before torchvision
reads them (handgrad.datafiles): a damaged file is named with what is wrong and how to fix it.

Reference: Nielsen, "Neural Networks and Deep Learning", ch. 1 (the 50k/10k split of
MNIST's training set); CS231n, "Putting it together" (the spiral dataset).
"""

from __future__ import annotations

import math
import os
from typing import Any, cast

import lightning as L
import torch
from torch.utils.data import DataLoader

from handgrad.chunks import Chunk, ChunkedTensors, ChunkLoader, ChunkSampler
from handgrad.datafiles import DATASETS, check_idx_file, download, expected_files, torchvision_class
from handgrad.errors import ConfigError

__all__ = ["DATASETS", "Chunk", "ChunkLoader", "ChunkSampler", "ChunkedTensors", "ConfigError", "DataModule",
           "expected_files", "spirals"]


def spirals(n_per_class: int, classes: int = 3, noise: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """CS231n's interleaved spirals: x (classes * n_per_class, 2), y (classes * n_per_class,).

    Arm k has radius r in [0, 1] and angle 4 (k + r) + noise; not linearly separable.
    """
    g = torch.Generator().manual_seed(seed)
    r = torch.linspace(0.0, 1.0, n_per_class).repeat(classes)  # (C * n,)
    y = torch.arange(classes).repeat_interleave(n_per_class)  # (C * n,)
    angle = 4.0 * (y + r) + noise * torch.randn(len(y), generator=g)
    x = torch.stack([r * torch.sin(angle), r * torch.cos(angle)], 1)  # (C * n, 2)
    return x, y


def parse_batch_size(batch_size: int | str) -> int | str:
    """A positive int or "full"; anything else is a ConfigError."""
    if batch_size == "full" or (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0):
        return batch_size
    raise ConfigError(
        f"data.batch_size={batch_size!r} is not a positive integer or 'full'; use e.g. --data.batch_size 64 "
        "(1 is stochastic gradient descent, 'full' is full-batch gradient descent)"
    )


class DataModule(L.LightningDataModule):
    """Train / validation / test splits of one dataset as in-memory tensors, served in chunks.

    Args:
        dataset: "mnist", "fashion_mnist" (read by torchvision from ``root``) or "spirals"
            (3-class 2-D spirals generated from ``seed``; no files, for quick demos).
        root: folder holding <root>/MNIST/raw/train-images-idx3-ubyte etc. (torchvision's layout).
        download: fetch the files into ``root`` if they are missing.
        batch_size: examples per optimiser step: an int (1 = SGD) or "full" (the whole training split).
        val_size: examples moved from the training split to validation (MNIST: 10000 gives
            Nielsen's 50k/10k split); 0 validates on nothing.
        train_size: train on this many of the examples left after validation's are moved (a
            subset fixed by ``seed``, e.g. for full-batch gradient descent on a few thousand
            images); None trains on all of them.
        seed: draws the validation split and each epoch's shuffle.
        chunk_size: at most this many examples per Lightning batch (but at least one
            mini-batch); an epoch's chunks hold whole mini-batches, equal to within one.
            Larger chunks amortise Lightning's per-batch cost further; train metrics are
            logged once per chunk, so they are means over about this many examples.
        eval_batch_size: examples per forward pass in validation and test.
        data_on_device: on CUDA, keep the whole dataset on the GPU (one copy at setup) so a
            chunk is cut there; if false each chunk is copied over when it is used.
    """

    def __init__(
        self,
        dataset: str = "mnist",
        root: str = "data",
        download: bool = True,
        batch_size: int | str = 64,
        val_size: int = 0,
        train_size: int | None = None,
        seed: int = 0,
        chunk_size: int = 5000,
        eval_batch_size: int = 10000,
        data_on_device: bool = True,
    ):
        super().__init__()
        if dataset not in DATASETS:
            raise ConfigError(f"data.dataset={dataset!r} is unknown; choose one of {', '.join(map(repr, DATASETS))}")
        self.batch_size_arg = parse_batch_size(batch_size)
        for name, value, low in (("val_size", val_size, 0), ("chunk_size", chunk_size, 1),
                                 ("eval_batch_size", eval_batch_size, 1)):
            if value < low:
                raise ConfigError(f"data.{name}={value} must be >= {low}")
        if train_size is not None and (isinstance(train_size, bool) or train_size < 1):
            raise ConfigError(f"data.train_size={train_size!r} must be a positive integer, or null for the whole "
                              "training split; use e.g. --data.train_size 5000")
        if DATASETS[dataset] is not None and not download:
            missing = [f for f in expected_files(dataset, root) if not os.path.isfile(f)]
            if missing:
                raise ConfigError(
                    f"data.root={root!r} has no {dataset} files and data.download is false: {missing[0]} is missing; "
                    f"torchvision expects {', '.join(expected_files(dataset, root))} (uncompressed IDX files); "
                    "place them there, point --data.root at the folder that holds "
                    f"{torchvision_class(dataset).__name__}/raw/, or pass --data.download true"
                )
        self.save_hyperparameters()  # kept in checkpoints beside the model's
        self.dataset, self.root, self.download = dataset, root, download
        self.val_size, self.train_size, self.seed, self.chunk_size = val_size, train_size, seed, chunk_size
        self.eval_batch_size, self.data_on_device = eval_batch_size, data_on_device
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # With several processes each evaluates its slice of each chunk; a rank may get none of a tiny split.
        self.allow_zero_length_dataloader_with_multiple_devices = True

    # ----------------------------------------------------------------------- loading

    def prepare_data(self) -> None:
        """Download the files if they are missing (handgrad.datafiles.download: all four or nothing).

        Lightning calls this on one process per machine; handgrad.cli calls it before it builds the
        Trainer too, so that a failed download is a run's first and only output."""
        if self.download and DATASETS[self.dataset] is not None:
            download(self.dataset, self.root)

    def load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The training or test split as tensors: images (N, 1, 28, 28) in [0, 1], labels (N,)."""
        cls = DATASETS[self.dataset]
        if cls is None:
            return spirals(1000 if train else 500, seed=self.seed if train else self.seed + 1)
        files = expected_files(self.dataset, self.root)  # train images, train labels, test images, test labels
        images, labels = files[:2] if train else files[2:]
        fix = ("delete it and run again with --data.download true (a fresh copy), or put the original uncompressed "
               "file there")
        n_images, n_labels = check_idx_file(images, "images", fix), check_idx_file(labels, "labels", fix)
        if n_images != n_labels:
            raise ConfigError(f"{images} holds {n_images} images but {labels} holds {n_labels} labels: they come from "
                              "different sets; delete both and run again with --data.download true, or put the "
                              "original uncompressed files there")
        data = cls(self.root, train=train, download=False)
        if n_labels and not 0 <= int(data.targets.min()) <= int(data.targets.max()) < self.num_classes:
            raise ConfigError(f"{labels} holds labels outside 0..{self.num_classes - 1} "
                              f"({int(data.targets.min())}..{int(data.targets.max())}); {fix}")
        return data.data.unsqueeze(1).float().div_(255), data.targets.long()

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        x, y = self.load(train=True)
        if not 0 <= self.val_size < len(y):
            raise ConfigError(
                f"data.val_size={self.val_size} leaves no training data: the {self.dataset} training split "
                f"has {len(y)} examples; use a value in [0, {len(y) - 1}], e.g. {len(y) // 6}"
            )
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed))
        train, val = order[:len(y) - self.val_size], order[len(y) - self.val_size:]
        if self.train_size is not None:
            if self.train_size > len(train):
                raise ConfigError(
                    f"data.train_size={self.train_size} is more than the {len(train)} training examples the "
                    f"{self.dataset} training split keeps with data.val_size={self.val_size}; use at most "
                    f"{len(train)}, or null for all of them")
            train = train[:self.train_size]  # the order is random (seed): a random subset
        self.splits = {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": self.load(train=False)}
        trainer = self.trainer
        if self.data_on_device and trainer is not None and trainer.strategy.root_device.type == "cuda":
            device = trainer.strategy.root_device
            self.splits = {name: (x.to(device), y.to(device)) for name, (x, y) in self.splits.items()}

    # ----------------------------------------------------------------------- what the model sees

    @property
    def num_features(self) -> int:
        return 2 if self.dataset == "spirals" else 28 * 28

    @property
    def num_classes(self) -> int:
        return 3 if self.dataset == "spirals" else 10

    @property
    def n_train(self) -> int:
        return len(self.splits["train"][1])

    @property
    def batch_size(self) -> int:
        """Examples per optimiser step ("full" resolved to the training split's size)."""
        return self.n_train if isinstance(self.batch_size_arg, str) else min(self.batch_size_arg, self.n_train)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_train / self.batch_size)

    def train_layout(self, batch_size: int | str | None = None, chunk_size: int | None = None) -> ChunkSampler:
        """Where each training chunk of an epoch starts and ends, in steps (handgrad.resume reads it): with
        this module's batch and chunk sizes, or with those given (a checkpoint's)."""
        batch = self.batch_size if batch_size is None else parse_batch_size(batch_size)
        batch = self.n_train if isinstance(batch, str) else min(batch, self.n_train)
        return ChunkSampler(self.n_train, batch, self.chunk_size if chunk_size is None else chunk_size, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        shuffle = self.batch_size < self.n_train  # full-batch steps see every example either way
        return self._loader("train", self.batch_size, self.chunk_size, shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, self.eval_batch_size, shuffle=False)

    def _loader(self, split: str, batch_size: int, chunk_size: int, shuffle: bool) -> DataLoader:
        x, y = self.splits[split]
        trainer = self.trainer
        ranks, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = ChunkSampler(len(y), batch_size, chunk_size, shuffle, self.seed, num_replicas=ranks, rank=rank,
                               shard=split != "train")
        dataset = ChunkedTensors(x, y, batch_size)
        if split == "train":
            return ChunkLoader(dataset, sampler, self._chunks_trained)
        # batch_size=None: each sampler item (a whole chunk's indices) goes to dataset[...] as is. A generator
        # of its own: a DataLoader draws a seed for its workers from torch's global random stream each time
        # it starts an iteration, and a resumed run starts more (Lightning's sanity check) than the run it
        # continues, which would shift dropout's masks.
        return DataLoader(dataset, sampler=sampler, batch_size=None, generator=torch.Generator())

    def _chunks_trained(self) -> int:
        """How many chunks of the current epoch the trainer has finished (the training loader's state)."""
        progress: Any = cast(L.Trainer, self.trainer).fit_loop.epoch_loop.batch_progress.current
        return progress.processed
