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

Reference: Nielsen, "Neural Networks and Deep Learning", ch. 1 (the 50k/10k split of
MNIST's training set); CS231n, "Putting it together" (the spiral dataset).
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import lightning as L
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset, Sampler

# Dataset name -> torchvision class (None: generated here, no files needed).
DATASETS: dict[str, type[torchvision.datasets.MNIST] | None] = {
    "mnist": torchvision.datasets.MNIST,
    "fashion_mnist": torchvision.datasets.FashionMNIST,
    "spirals": None,
}


class ConfigError(ValueError):
    """A setting that cannot work; the message is one line naming the value and the fix."""


class Chunk(NamedTuple):
    """Consecutive mini-batches of one epoch's order: x (M, *), y (M,), cut every ``batch_size`` rows."""

    x: torch.Tensor
    y: torch.Tensor
    batch_size: int

    def minibatches(self):
        """(x, y) views of at most ``batch_size`` rows each; the last may be shorter."""
        return zip(self.x.split(self.batch_size), self.y.split(self.batch_size))


class ChunkedTensors(Dataset):
    """x (N, *) and y (N,) indexed by a whole chunk at once: ``dataset[indices]`` -> Chunk."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int):
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: torch.Tensor | slice) -> Chunk:
        return Chunk(self.x[index], self.y[index], self.batch_size)


class ChunkSampler(Sampler):
    """Yields one index per chunk: a slice of a fresh permutation each epoch, or a plain slice.

    The n examples make ceil(n / batch_size) mini-batches (the last may be short); they are
    dealt into as few chunks of at most ``chunk_size`` examples as possible, each a whole
    number of mini-batches and the chunks equal to within one mini-batch (so no chunk's logged
    loss rests on a handful of examples). ``set_epoch``, which Lightning calls at every epoch
    start as for DistributedSampler, picks the permutation: a run resumed at epoch k sees the
    same order as one that never stopped.
    """

    def __init__(self, n: int, batch_size: int, chunk_size: int, shuffle: bool, seed: int = 0):
        steps = math.ceil(n / batch_size)
        chunks = math.ceil(steps / max(1, chunk_size // batch_size))
        self.bounds = [min(n, (i * steps // chunks) * batch_size) for i in range(chunks + 1)] if n else [0]
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=generator)

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __iter__(self):
        order = self.permutation() if self.shuffle else None
        for start, end in zip(self.bounds[:-1], self.bounds[1:]):
            yield order[start:end] if self.shuffle else slice(start, end)


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


def expected_files(dataset: str, root: str) -> list[str]:
    """Where torchvision looks for ``dataset``: <root>/<ClassName>/raw/<file> for each IDX file."""
    cls = DATASETS[dataset]
    raw = os.path.join(root, cls.__name__, "raw")
    return [os.path.join(raw, os.path.splitext(filename)[0]) for filename, _ in cls.resources]


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
        if DATASETS[dataset] is not None and not download:
            missing = [f for f in expected_files(dataset, root) if not os.path.isfile(f)]
            if missing:
                raise ConfigError(
                    f"data.root={root!r} has no {dataset} files and data.download is false: {missing[0]} is missing; "
                    f"torchvision expects {', '.join(expected_files(dataset, root))} (uncompressed IDX files); "
                    "place them there, point --data.root at the folder that holds "
                    f"{DATASETS[dataset].__name__}/raw/, or pass --data.download true"
                )
        self.save_hyperparameters()  # TensorBoard's HPARAMS tab shows them beside the model's
        self.dataset, self.root, self.download = dataset, root, download
        self.val_size, self.seed, self.chunk_size = val_size, seed, chunk_size
        self.eval_batch_size, self.data_on_device = eval_batch_size, data_on_device
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ----------------------------------------------------------------------- loading

    def prepare_data(self) -> None:
        """Download once (Lightning calls this on one process only)."""
        cls = DATASETS[self.dataset]
        if cls is None or not self.download:
            return
        for train in (True, False):
            try:
                cls(self.root, train=train, download=True)
            except Exception as err:  # no network, a proxy, a bad mirror: all end the same way
                reason = " ".join(str(err).split())[:200]
                raise ConfigError(
                    f"could not download {self.dataset} into {os.path.join(self.root, cls.__name__, 'raw')} ({reason}); "
                    f"offline, copy {', '.join(os.path.basename(f) for f in expected_files(self.dataset, self.root))} "
                    f"(uncompressed) into that folder by hand, or point --data.root at a folder that holds "
                    f"{cls.__name__}/raw/ and pass --data.download false"
                ) from err

    def load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The training or test split as tensors: images (N, 1, 28, 28) in [0, 1], labels (N,)."""
        cls = DATASETS[self.dataset]
        if cls is None:
            return spirals(1000 if train else 500, seed=self.seed if train else self.seed + 1)
        data = cls(self.root, train=train, download=False)
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
        return self.n_train if self.batch_size_arg == "full" else min(self.batch_size_arg, self.n_train)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_train / self.batch_size)

    def train_dataloader(self) -> DataLoader:
        shuffle = self.batch_size < self.n_train  # full-batch steps see every example either way
        return self._loader("train", self.batch_size, self.chunk_size, shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, self.eval_batch_size, shuffle=False)

    def _loader(self, split: str, batch_size: int, chunk_size: int, shuffle: bool) -> DataLoader:
        x, y = self.splits[split]
        sampler = ChunkSampler(len(y), batch_size, chunk_size, shuffle, self.seed)
        # batch_size=None: each sampler item (a whole chunk's indices) goes to dataset[...] as is.
        return DataLoader(ChunkedTensors(x, y, batch_size), sampler=sampler, batch_size=None)
