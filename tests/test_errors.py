"""The catalogue of bad input (README, "When things go wrong"): each mistake stops the run with one
line that names the value and the fix, exit status 2 and no traceback.

Config values: typos in keys and values, Trainer settings the machine cannot honour. Data: missing,
truncated, corrupt or mismatched IDX files. Training: a loss that becomes nan (with the last good
checkpoint kept). Refusals of single values (batch size, learning rate, ...) are in test_cli.py,
test_data.py and test_lit_module.py; op misuse (shapes, class indices, dtypes) in test_functional*.py.
"""

from __future__ import annotations

import math
import struct
from types import SimpleNamespace

import lightning as L
import lightning.fabric.accelerators.cuda
import lightning.pytorch.accelerators.cuda
import pytest
import torch
from conftest import write_fake_mnist
from test_cli import NIELSEN, SPIRALS

from handgrad import cli
from handgrad.data import ConfigError, DataModule
from handgrad.lit_module import Classifier, DivergenceError
from handgrad.models import MLP


@pytest.fixture
def workdir(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def one_line_error(args: list[str], capsys) -> str:
    """Run handgrad.cli.main; check it stopped with status 2 and one line on stderr; return the line."""
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


# --------------------------------------------------------------------------- config values


@pytest.mark.parametrize("args, expected", [
    (["--model.lrr", "0.1"], "error: unrecognized arguments: --model.lrr 0.1; did you mean model.lr? (see --help)"),
    (["--data.batchsize", "8"], "error: unrecognized arguments: --data.batchsize 8; did you mean data.batch_size?"),
    (["--trainer.precision", "16-mix"],
     "error: trainer.precision='16-mix' is not allowed; choose one of 64, 32, 16, transformer-engine, "
     "transformer-engine-float16, 16-true, 16-mixed, bf16-true, bf16-mixed, 32-true, 64-true, bf16 (see --help)"),
    (["--trainer.strategy", "dpp"], "error: You selected an invalid strategy name: `strategy='dpp'`."),
    (["--trainer.devices", "0"], "error: `Trainer(devices='0')` value is not a valid input using cpu accelerator."),
    (["--ckpt_path", "runs/nope.ckpt"], "error: --ckpt_path runs/nope.ckpt: no such file; pass a .ckpt file, e.g. "
                                        "logs/<config>/version_N/checkpoints/last.ckpt, or 'last'"),
    (["--threads", "0"], "error: threads=0 must be >= 1 (or null for one per core)"),
    (["--model.momentum", "1"], "error: model.momentum=1.0 must be in [0, 1); use 0 (plain SGD) or e.g. 0.9"),
    (["--data.chunk_size", "0"], "error: data.chunk_size=0 must be >= 1"),
    (["--data.val_size", "3000"], "error: data.val_size=3000 leaves no training data: the spirals training split "
                                  "has 3000 examples; use a value in [0, 2999], e.g. 500"),  # found inside fit
    (["--model.net.init_args.sizes", "[2, 10]"], "error: model.net sizes=[2, 10] do not fit data.dataset='spirals'"),
])
def test_bad_config_values_stop_with_one_line(args, expected, workdir, capsys):
    assert one_line_error(["--config", SPIRALS, *args], capsys).startswith(expected)
    assert not list(workdir.glob("logs/*/*/checkpoints/*"))  # stopped before any training


def test_a_typo_in_a_config_file_names_the_key(workdir, capsys):
    (workdir / "typo.yaml").write_text("trainer:\n  max_epoch: 3\n")
    assert one_line_error(["--config", SPIRALS, "--config", "typo.yaml"], capsys) == (
        "error: Group 'trainer' does not accept option 'max_epoch'; did you mean trainer.max_epochs? (see --help)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_on_a_machine_without_one(workdir, capsys):
    assert one_line_error(["--config", SPIRALS, "--trainer.accelerator", "cuda"], capsys).startswith(
        "error: `CUDAAccelerator` can not run on your system since the accelerator is not available. The following "
        "accelerator(s) is available")


def test_more_gpus_than_the_machine_has(workdir, capsys, monkeypatch):
    for module in (lightning.fabric.accelerators.cuda, lightning.pytorch.accelerators.cuda):
        monkeypatch.setattr(module, "num_cuda_devices", lambda: 1)  # a machine with one GPU
    assert one_line_error(["--config", SPIRALS, "--trainer.accelerator", "cuda", "--trainer.devices", "4"],
                          capsys) == "error: You requested gpu: [0, 1, 2, 3] But your machine only has: [0]"


def test_several_devices_need_the_ddp_strategy():
    model = Classifier(MLP(sizes=[2, 8, 3]))
    model._trainer = SimpleNamespace(world_size=2, strategy=L.pytorch.strategies.SingleDeviceStrategy())
    with pytest.raises(ConfigError, match=r"trainer\.strategy=SingleDeviceStrategy is not supported on several "
                                          r"devices: .* use --trainer\.strategy ddp"):
        model.on_train_start()


# --------------------------------------------------------------------------- data files


def idx_header(ndim: int, *sizes: int) -> bytes:
    return bytes([0, 0, 0x08, ndim]) + struct.pack(f">{ndim}I", *sizes)


GOOD_IMAGES = idx_header(3, 200, 28, 28) + bytes(200 * 28 * 28)
CORRUPT_IMAGES = {  # the train images file as a test writes it -> what the message says is wrong
    "truncated": (GOOD_IMAGES[:5000], "is truncated: its header announces 200 x 28 x 28 bytes of images, 156,816 "
                                      "bytes in all, but the file has 5,000"),
    "cut in its header": (GOOD_IMAGES[:10], "is truncated: it ends inside its 16-byte header (10 bytes)"),
    "garbage": (b"<html>Not Found</html>" * 50, "is not an IDX file of images: its first bytes are 3c 68 74 6d, "
                                                "expected 00 00 08 03"),
    "empty": (b"", "is not an IDX file of images: its first bytes are missing (empty file), expected 00 00 08 03"),
    "labels in place of images": (idx_header(1, 200) + bytes(200), "is not an IDX file of images: its first bytes "
                                                                   "are 00 00 08 01, expected 00 00 08 03"),
    "gzip-compressed": (b"\x1f\x8b\x08\x00" + bytes(100), "is gzip-compressed, and torchvision reads it "
                                                          "uncompressed; gunzip it, or delete it"),
    "not 28 x 28": (idx_header(3, 200, 32, 32) + bytes(200 * 32 * 32), "holds 200 x 32 x 32 images, not 28 x 28"),
    "too long": (GOOD_IMAGES + b"\0\0", "is longer than its header says"),
}


@pytest.mark.parametrize("case", CORRUPT_IMAGES, ids=str)
def test_corrupt_idx_files_name_the_file_the_problem_and_the_fix(case, tmp_path):
    root = write_fake_mnist(tmp_path)
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    content, problem = CORRUPT_IMAGES[case]
    images.write_bytes(content)
    data = DataModule("mnist", root=str(root), download=False)
    with pytest.raises(ConfigError) as error:
        data.setup("fit")
    message = str(error.value)
    assert message.startswith(f"{images} {problem}") and "\n" not in message
    assert message.endswith("delete it and run again with --data.download true (a fresh copy), or put the original "
                            "uncompressed file there")


def test_images_and_labels_from_different_sets(tmp_path):
    root = write_fake_mnist(tmp_path)
    labels = root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    labels.write_bytes(idx_header(1, 150) + bytes(150))
    with pytest.raises(ConfigError, match=r"train-images-idx3-ubyte holds 200 images but .*train-labels-idx1-ubyte "
                                          r"holds 150 labels: they come from different sets; delete both"):
        DataModule("mnist", root=str(root), download=False).setup("fit")


def test_labels_outside_the_classes(tmp_path):
    root = write_fake_mnist(tmp_path)
    labels = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(idx_header(1, 100) + bytes([3] * 99 + [17]))
    with pytest.raises(ConfigError, match=r"t10k-labels-idx1-ubyte holds labels outside 0\.\.9 \(3\.\.17\)"):
        DataModule("mnist", root=str(root), download=False).setup("fit")


def test_a_truncated_file_stops_the_script_with_one_line(workdir, capsys):
    root = write_fake_mnist(workdir / "data")
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    line = one_line_error(["--config", NIELSEN, "--data.root", str(root), "--data.download", "false"], capsys)
    assert line.startswith(f"error: {images} is truncated: its header announces 200 x 28 x 28 bytes of images")


# --------------------------------------------------------------------------- divergence


def test_a_nan_loss_names_the_step_and_suggests_a_smaller_learning_rate(workdir, capsys):
    line = one_line_error(["--config", SPIRALS, "--model.lr", "1e30"], capsys)
    assert line == ("error: training diverged: the loss became nan at optimiser step 2 (epoch 1); no checkpoint was "
                    "saved before it; try a smaller learning rate, e.g. --model.lr 1e+29 (now 1e+30)")


def test_a_learning_rate_that_kills_every_unit_does_not_crash_the_diagnostics(workdir, capsys):
    """At lr 1000 spirals' ReLU units all die: zero gradients, whose update ratio has no log10.
    GradientFlow (on in spirals.yaml) must not hand TensorBoard an empty histogram, which it refuses."""
    assert cli.main(["--config", SPIRALS, "--trainer.max_epochs", "1", "--model.lr", "1000"]) == 0
    assert "Traceback" not in capsys.readouterr().err


class LearningRateJump(L.Callback):
    """Sets the learning rate to ``lr`` when epoch ``epoch`` starts: a run that trained well, then diverges."""

    def __init__(self, epoch: int, lr: float):
        self.epoch, self.lr = epoch, lr

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = self.lr


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_divergence_keeps_the_last_good_checkpoint_to_resume_with_a_smaller_lr(workdir, capsys, monkeypatch):
    build = cli.build

    def build_with_jump(args, stop=None):
        run = build(args, stop)
        run.trainer.callbacks.append(LearningRateJump(epoch=1, lr=1e30))
        return run

    with monkeypatch.context() as patched:
        patched.setattr(cli, "build", build_with_jump)
        line = one_line_error(["--config", SPIRALS, "--trainer.max_epochs", "3"], capsys)
    last = "logs/spirals/version_0/checkpoints/last.ckpt"
    assert line == ("error: training diverged: the loss became nan at optimiser step 81 (epoch 2); the last good "
                    f"checkpoint is {last}; try a smaller learning rate, e.g. --model.lr 1e+29 (now 1e+30)")
    checkpoint = torch.load(workdir / last, weights_only=False)
    assert checkpoint["global_step"] == 79  # the end of epoch 1, not overwritten since
    assert all(value.isfinite().all() for value in checkpoint["state_dict"].values())

    # Resumed with another learning rate, the run takes it (not the one saved with the optimiser's state).
    resumed = ["--config", SPIRALS, "--trainer.max_epochs", "3", "--ckpt_path", "last", "--model.lr", "0.05"]
    assert cli.main(resumed) == 0
    checkpoint = torch.load(workdir / last, weights_only=False)
    assert checkpoint["global_step"] == 3 * 79 and checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == 0.05


def test_weights_that_overflow_are_caught_even_when_every_loss_was_finite():
    model = Classifier(MLP(sizes=[2, 8, 3]), lr=0.5)
    model._trainer = SimpleNamespace(global_step=40, current_epoch=0, checkpoint_callbacks=[],
                                     optimizers=[torch.optim.SGD(model.parameters(), lr=0.5)])
    with torch.no_grad():
        model.net.layers[0].weight[0, 0] = math.inf  # by the update of the chunk's last step
    with pytest.raises(DivergenceError) as error:
        model._check_divergence(torch.tensor([0.5, 0.4]))  # the losses of the chunk's two steps
    assert str(error.value) == ("training diverged: the weights became inf or nan at optimiser step 42 (epoch 1); no "
                                "checkpoint was saved before it; try a smaller learning rate, e.g. --model.lr 0.05 "
                                "(now 0.5)")
