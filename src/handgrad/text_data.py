"""Data for the language models: characters of a text, or addition problems, as token tensors in chunks.

    TextDataModule(path="input.txt", block_size=64)    # any UTF-8 file, one token per character
    TextDataModule()                                   # offline default: Python's own documentation
    AdditionDataModule(digits=2)                       # "12+34=" -> "640" (the sum's digits reversed)

Both hold their splits as tensors x (N, T) and y (N, T), y being x shifted by one token (the next token
at each position), and serve them through handgrad.data.DataModule's chunked, resumable loaders: a
Lightning batch is many mini-batches, and a run stopped anywhere resumes at the very step it stopped.
The vocabulary (``vocab``, a string whose i-th character is token i) goes to the LanguageModel, which
keeps it in every checkpoint.

Text: the characters are cut into windows of block_size + 1 at a stride of block_size (each window
trains all of its block_size positions), the windows split 90/5/5 into train/val/test in the text's
order (validation and test are text the model never trained on). The default text is the pydoc topic
help installed with every CPython (``pydoc_data.topics``, about 0.5 MB of English and Python): nothing
is downloaded.

Addition: every pair a, b of ``digits``-digit numbers, shuffled by ``seed`` and split into train, val and
test problems; only the answer's tokens are scored (the others have target ``IGNORE``), so the exact-match
accuracy of a problem is whether the argmax at each answer position is right, which is the same as greedy
generation getting the whole answer right.

Reference: Karpathy, char-rnn and nanoGPT (shakespeare_char), minGPT's adder project (reversed sums).
"""

from __future__ import annotations

import os

import torch

from handgrad.data import DataModule, parse_batch_size
from handgrad.errors import ConfigError

IGNORE = -100  # cross_entropy's ignore_index: positions that are not scored


def default_text() -> str:
    """The help topics of pydoc (``pydoc_data.topics``), ships with CPython: offline and about 0.5 MB."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip() for key in sorted(topics)) + "\n"


def read_text(path: str) -> str:
    """The file's text, or a ConfigError naming the file and the fix (missing, empty, not UTF-8)."""
    if not os.path.isfile(path):
        raise ConfigError(f"data.path={path!r}: no such file; pass a UTF-8 text file, or leave data.path out "
                          "for the offline default text")
    with open(path, "rb") as file:
        raw = file.read()
    if not raw:
        raise ConfigError(f"data.path={path!r} is empty (0 bytes); pass a UTF-8 text file with some text in it")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"data.path={path!r} is not UTF-8 text (byte {raw[err.start]:#04x} at offset {err.start}); "
                          f"convert it, e.g. iconv -f latin1 -t utf-8 {path} > {path}.utf8") from None


class TokenDataModule(DataModule):
    """handgrad.data.DataModule's loaders over token splits: subclasses fill ``self.splits`` with
    x (N, T) and y (N, T) int64 tensors and set ``vocab`` and ``block_size``."""

    vocab: str
    block_size: int
    exact_match = False  # whether a sequence is scored by the exact match of its answer tokens

    def __init__(self, batch_size: int = 32, seed: int = 0, chunk_size: int = 3200, eval_batch_size: int = 512):
        super(DataModule, self).__init__()  # DataModule's own __init__ is about image datasets
        self.batch_size_arg = parse_batch_size(batch_size)
        for name, value in (("chunk_size", chunk_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ConfigError(f"data.{name}={value} must be >= 1")
        self.seed, self.chunk_size, self.eval_batch_size = seed, chunk_size, eval_batch_size
        self.data_on_device, self.allow_zero_length_dataloader_with_multiple_devices = True, True
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def prepare_data(self) -> None:
        pass  # nothing to download

    def setup(self, stage: str | None = None) -> None:
        trainer = self.trainer
        if trainer is not None and trainer.strategy.root_device.type == "cuda":
            device = trainer.strategy.root_device
            self.splits = {name: (x.to(device), y.to(device)) for name, (x, y) in self.splits.items()}

    def encode(self, text: str) -> torch.Tensor:
        """Token ids (len(text),) of a string whose characters are all in the vocabulary."""
        index = {char: i for i, char in enumerate(self.vocab)}
        return torch.tensor([index[char] for char in text], dtype=torch.long)


class TextDataModule(TokenDataModule):
    """Character-level language modelling on one UTF-8 text.

    Args:
        path: the text file; None (the default): Python's pydoc topics, installed with the interpreter.
        block_size: the context length T of a training window.
        batch_size: windows per optimiser step.
        seed: each epoch's shuffle of the training windows.
        chunk_size: windows per Lightning batch (many optimiser steps).
        eval_batch_size: windows per forward pass in validation and test.
    """

    def __init__(self, path: str | None = None, block_size: int = 64, batch_size: int = 32, seed: int = 0,
                 chunk_size: int = 3200, eval_batch_size: int = 512):
        super().__init__(batch_size, seed, chunk_size, eval_batch_size)
        if block_size < 1:
            raise ConfigError(f"data.block_size={block_size} must be >= 1; use e.g. --data.block_size 64")
        text = default_text() if path is None else read_text(path)
        if len(text) < 20 * (block_size + 1):  # train, val and test each need whole windows
            raise ConfigError(f"data.block_size={block_size} is too long for data.path={path!r}: its "
                              f"{len(text):,} characters make fewer than 20 windows of {block_size + 1}; use "
                              f"--data.block_size {max(1, len(text) // 20 - 1)} or less, or a longer text")
        self.save_hyperparameters()
        self.path, self.block_size = path, block_size
        self.vocab = "".join(sorted(set(text)))
        ids = self.encode(text)
        windows = ids[:(len(ids) - 1) // block_size * block_size + 1].unfold(0, block_size + 1, block_size)
        n = len(windows)  # (n, T + 1)
        cut = [0, n - 2 * (n // 20), n - n // 20, n]  # 90 / 5 / 5
        self.splits = {name: (windows[a:b, :-1].contiguous(), windows[a:b, 1:].contiguous())
                       for name, a, b in zip(("train", "val", "test"), cut[:-1], cut[1:], strict=True)}


def addition_problem(a: int, b: int, digits: int) -> str:
    """'a+b=' with a and b zero-padded to ``digits``, then the sum's digits + 1 reversed: 12+34= -> '12+34=640'."""
    return f"{a:0{digits}d}+{b:0{digits}d}=" + f"{a + b:0{digits + 1}d}"[::-1]


class AdditionDataModule(TokenDataModule):
    """minGPT's addition task: "a+b=" followed by the digits of a + b, least significant first.

    Args:
        digits: n, the digits of each operand (2: 10,000 problems; 3: 1,000,000).
        val_size: problems held out for validation (never trained on).
        test_size: problems held out for the test (never trained on).
        batch_size: problems per optimiser step.
        seed: draws the split and each epoch's shuffle.
        chunk_size: problems per Lightning batch (many optimiser steps).
        eval_batch_size: problems per forward pass in validation and test.
    """

    def __init__(self, digits: int = 2, val_size: int = 500, test_size: int = 1000, batch_size: int = 64,
                 seed: int = 0, chunk_size: int = 6400, eval_batch_size: int = 2000):
        super().__init__(batch_size, seed, chunk_size, eval_batch_size)
        if not 1 <= digits <= 4:
            raise ConfigError(f"data.digits={digits} must be in 1..4 (4: 10^8 problems); use e.g. --data.digits 2")
        self.exact_match = True
        total = 10 ** (2 * digits)
        if val_size < 1 or test_size < 1 or val_size + test_size >= total:
            raise ConfigError(f"data.val_size={val_size} and data.test_size={test_size} must be >= 1 and leave "
                              f"training problems of the {total:,} there are with {digits} digits")
        self.save_hyperparameters()
        self.digits, self.vocab = digits, "+0123456789="
        self.block_size = 3 * digits + 2  # the problem without its last token
        order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
        if total > 200_000:  # 3 and 4 digits: a sample of the problems is plenty for an epoch
            order = order[:200_000]
        problems = torch.stack([self.encode(addition_problem(int(i) // 10 ** digits, int(i) % 10 ** digits, digits))
                                for i in order])  # (N, 3n + 3)
        x, y = problems[:, :-1], problems[:, 1:].clone()
        y[:, :2 * digits + 1] = IGNORE  # score only the answer: the targets after "="
        cut = [0, len(x) - val_size - test_size, len(x) - test_size, len(x)]
        self.splits = {name: (x[a:b], y[a:b]) for name, a, b in zip(("train", "val", "test"), cut[:-1], cut[1:],
                                                                     strict=True)}

    def problems(self, split: str = "test") -> list[str]:
        """The problems of a split as text, e.g. '12+34=' (the prompt) and the answer '640': one string each."""
        x, y = self.splits[split]
        return ["".join(self.vocab[int(i)] for i in row) + self.vocab[int(t[-1])] for row, t in zip(x, y, strict=True)]
