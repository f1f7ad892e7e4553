"""Shared fixtures: a tiny MNIST written in the real IDX format, so torchvision's own reader runs; the reference
run that stopped and resumed runs are compared with; signal handlers kept as they were."""

from __future__ import annotations

import signal
import struct
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
REAL_MNIST_ROOT = REPO.parent / "shared" / "data"  # a read-only copy of MNIST on the dev machines, if present


def pytest_configure(config):
    # Outside LightningCLI, Lightning suggests save_hyperparameters(ignore=["net"]); Classifier keeps
    # the net so that a CLI-made checkpoint can rebuild it (load_from_checkpoint).
    config.addinivalue_line("filterwarnings", "ignore:Attribute 'net' is an instance of `nn.Module`")
    config.addinivalue_line("filterwarnings", r"ignore:.*isinstance\(treespec, LeafSpec\)` is deprecated")
    # Lightning's own use of its dependencies; nothing handgrad can change (as handgrad.cli also filters).
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:lightning.pytorch.cli")
    config.addinivalue_line("filterwarnings", "ignore:LightningCLI's args parameter is intended")


def write_idx(path: Path, data: torch.Tensor) -> None:
    """An uncompressed IDX file: magic (0, 0, 0x08 = uint8, ndim), big-endian int32 sizes, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, data.dim()) + struct.pack(f">{data.dim()}i", *data.shape)
    path.write_bytes(header + data.to(torch.uint8).numpy().tobytes())


def fake_mnist(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n 28x28 uint8 images, each its class's random stroke pattern with 10% of the pixels flipped."""
    prototypes = torch.rand(10, 28, 28, generator=torch.Generator().manual_seed(1234)) > 0.75  # fixed per class
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=g)]
    flips = torch.rand(n, 28, 28, generator=g) < 0.1
    images = (prototypes[labels] ^ flips).to(torch.uint8) * 255
    return images, labels.to(torch.uint8)


def write_fake_mnist(root: Path, n_train: int = 200, n_test: int = 100) -> Path:
    """<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, the layout torchvision reads."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = fake_mnist(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(autouse=True)
def torch_backend_flags_settable():
    """Importing torch.testing._internal (for PyTorch's own OpInfo / ModuleInfo / OptimizerInfo samples)
    calls torch.backends.disable_global_flags(), after which setting e.g. torch.backends.cudnn.deterministic,
    as Trainer(deterministic=True) does, raises. Torch's own suite wants that; handgrad's tests set such
    flags, so they are made settable again before each test."""
    if torch.backends.flags_frozen():
        torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> str:
    """A data root holding a 200-train / 100-test MNIST in torchvision's layout."""
    return str(write_fake_mnist(tmp_path_factory.mktemp("data")))


@pytest.fixture
def one_thread():
    """Tiny networks run fastest on one intra-op thread (on a busy 2-core machine, a second one can
    make a step 10x slower); configs may set threads too. The thread count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory) -> tuple[dict, dict]:
    """tests/runs.py's reference run, three epochs without a stop: (last.ckpt, its TensorBoard scalars)."""
    from runs import fit, last_checkpoint, logged  # a test module's helpers: imported once tests run

    workdir = tmp_path_factory.mktemp("uninterrupted")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            assert fit(workdir, monkeypatch, "--trainer.max_epochs", "3") == 0
    finally:
        torch.set_num_threads(threads)
    return last_checkpoint(workdir), logged(workdir)


@pytest.fixture
def signal_handlers():
    """Signal handlers as they were: Lightning ignores SIGINT for good after a KeyboardInterrupt, and a SIGTERM
    that a test sends while no run has its handler would otherwise end pytest (here it raises instead)."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}

    def stray(signum, frame):
        raise AssertionError(f"{signal.Signals(signum).name} arrived while no run was there to handle it")

    signal.signal(signal.SIGTERM, stray)
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)
