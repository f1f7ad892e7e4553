"""handgrad.data: splits, chunking and shuffling, torchvision's IDX reading, and refusals of bad settings."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from conftest import REAL_MNIST_ROOT

from handgrad.data import ChunkSampler, ConfigError, DataModule, expected_files


def ready(**kwargs) -> DataModule:
    data = DataModule(**{"dataset": "spirals", **kwargs})
    data.setup("fit")
    return data


def sorted_rows(x: torch.Tensor) -> torch.Tensor:
    return x[x[:, 0].argsort()]


def epoch_chunks(data: DataModule, epoch: int = 0):
    loader = data.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return list(loader)


# --------------------------------------------------------------------------- chunks and mini-batches


@pytest.mark.parametrize("batch_size, chunk_size", [(1, 100), (7, 50), (64, 5000), (10, 3), ("full", 100)])
def test_an_epoch_is_ceil_n_over_b_minibatches_covering_every_example_once(batch_size, chunk_size):
    data = ready(batch_size=batch_size, chunk_size=chunk_size, val_size=2497)  # 503 training examples
    chunks = epoch_chunks(data)
    minibatches = [xy for chunk in chunks for xy in chunk.minibatches()]
    b = data.batch_size
    assert len(minibatches) == data.steps_per_epoch == math.ceil(503 / b)
    assert all(len(y) == b for _, y in minibatches[:-1]) and 1 <= len(minibatches[-1][1]) <= b
    assert all(len(chunk.y) % b == 0 for chunk in chunks[:-1])  # chunks hold whole mini-batches
    steps = [math.ceil(len(chunk.y) / b) for chunk in chunks]
    assert max(steps) - min(steps) <= 1 and max(len(c.y) for c in chunks) <= max(chunk_size, b)
    assert len(chunks) == math.ceil(len(minibatches) / max(1, chunk_size // b))  # as few as possible
    seen = torch.cat([x for x, _ in minibatches])
    assert torch.equal(sorted_rows(seen), sorted_rows(data.splits["train"][0]))  # each example once


def test_full_batch_is_one_chunk_one_step_over_the_whole_split():
    data = ready(batch_size="full", val_size=500)
    (chunk,) = epoch_chunks(data)
    assert data.batch_size == len(chunk.y) == 2500 and data.steps_per_epoch == 1


def test_each_epoch_has_its_own_seeded_order():
    first, again = ready(batch_size=10, seed=3), ready(batch_size=10, seed=3)
    order = [torch.cat([c.y for c in epoch_chunks(first, e)]) for e in (0, 1)]
    assert torch.equal(order[0], torch.cat([c.y for c in epoch_chunks(again, 0)]))  # same seed, same epoch
    assert not torch.equal(order[0], order[1])


def test_sampler_set_epoch_is_what_lightning_calls():
    from lightning.fabric.utilities.data import _set_sampler_epoch

    loader = ready(batch_size=10).train_dataloader()
    _set_sampler_epoch(loader, 5)
    assert isinstance(loader.sampler, ChunkSampler) and loader.sampler.epoch == 5


def test_validation_split_is_a_seeded_partition():
    data = ready(val_size=600, seed=1)
    (x_train, _), (x_val, _) = data.splits["train"], data.splits["val"]
    assert len(x_train) == 2400 and len(x_val) == 600
    x_all, _ = data.load(train=True)
    assert torch.equal(sorted_rows(torch.cat([x_train, x_val])), sorted_rows(x_all))  # a partition of the split
    assert torch.equal(ready(val_size=600, seed=1).splits["val"][0], x_val)
    assert not torch.equal(ready(val_size=600, seed=2).splits["val"][0], x_val)


def test_evaluation_uses_big_batches_in_order():
    data = ready(val_size=600, eval_batch_size=250)
    chunks = list(data.val_dataloader())
    assert [len(c.y) for c in chunks] == [250, 250, 100]
    assert torch.equal(torch.cat([c.x for c in chunks]), data.splits["val"][0])


# --------------------------------------------------------------------------- torchvision reading


def test_reads_idx_files_through_torchvision(mnist_root):
    data = DataModule("mnist", root=mnist_root, download=False, val_size=50)
    data.setup("fit")
    x, y = data.splits["train"]
    assert x.shape == (150, 1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() == 1
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    assert data.splits["test"][0].shape == (100, 1, 28, 28) and data.splits["val"][0].shape == (50, 1, 28, 28)


@pytest.mark.skipif(not (REAL_MNIST_ROOT / "MNIST" / "raw").is_dir(), reason="no MNIST copy at ../shared/data")
def test_real_mnist_gives_nielsens_50k_10k_split():
    data = DataModule("mnist", root=str(REAL_MNIST_ROOT), download=False, val_size=10000)
    data.setup("fit")
    assert [len(data.splits[s][1]) for s in ("train", "val", "test")] == [50000, 10000, 10000]


# --------------------------------------------------------------------------- refusals: one line, value and fix


@pytest.mark.parametrize("batch_size", [0, -5, "fulll", "abc", 2.5, True])
def test_bad_batch_size(batch_size):
    with pytest.raises(ConfigError, match=r"data\.batch_size=.* is not a positive integer or 'full'; use e\.g\."):
        DataModule("spirals", batch_size=batch_size)


def test_unknown_dataset():
    with pytest.raises(ConfigError, match=r"data\.dataset='cifar10' is unknown; choose one of 'mnist'"):
        DataModule("cifar10")


def test_missing_files_without_download_name_the_path_and_layout(tmp_path):
    with pytest.raises(ConfigError) as error:
        DataModule("mnist", root=str(tmp_path), download=False)
    message = str(error.value)
    assert "\n" not in message and "data.download is false" in message
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in message
    assert str(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte") in message


def test_fashion_mnist_expects_its_own_folder(tmp_path):
    assert expected_files("fashion_mnist", "data")[0].endswith("FashionMNIST/raw/train-images-idx3-ubyte")


def test_prepare_data_downloads_what_is_missing(tmp_path, monkeypatch):
    def no_network(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: <urlopen error [Errno -3] no network>")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    data = DataModule("mnist", root=str(tmp_path), download=True)  # nothing checked yet: download may fill it
    with pytest.raises(ConfigError, match=r"^could not download mnist \(Error downloading .* no network>\)"):
        data.prepare_data()
    DataModule("spirals", root=str(tmp_path / "unused"), download=True).prepare_data()  # generated: no files
    assert not (tmp_path / "unused").exists()


def test_train_size_keeps_a_seeded_subset_of_the_training_split_and_validation_as_it_was():
    full, part = ready(val_size=600, seed=1), ready(val_size=600, train_size=300, seed=1)
    assert torch.equal(part.splits["val"][0], full.splits["val"][0])  # the same validation split
    assert part.n_train == 300 and torch.equal(part.splits["train"][0], full.splits["train"][0][:300])
    assert not torch.equal(sorted_rows(part.splits["train"][0]), sorted_rows(full.splits["train"][0][-300:]))
    assert ready(val_size=600, train_size=300, batch_size="full").batch_size == 300  # full batch: the subset
    assert ready(val_size=600, train_size=2400).n_train == 2400


@pytest.mark.parametrize("train_size, message", [
    (0, r"^data\.train_size=0 must be a positive integer, or null for the whole training split; use e\.g\. "),
    (True, r"^data\.train_size=True must be a positive integer"),
])
def test_train_size_must_be_positive(train_size, message):
    with pytest.raises(ConfigError, match=message):
        DataModule("spirals", train_size=train_size)


def test_train_size_must_fit_the_training_split():
    with pytest.raises(ConfigError, match=r"^data\.train_size=2401 is more than the 2400 training examples the "
                                          r"spirals training split keeps with data\.val_size=600; use at most 2400"):
        ready(val_size=600, train_size=2401)


def test_val_size_must_leave_training_data():
    with pytest.raises(ConfigError, match=r"data\.val_size=3000 leaves no training data"):
        ready(val_size=3000)
