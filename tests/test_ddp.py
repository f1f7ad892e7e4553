"""Lightning's DDP on 2 CPU processes (gloo) takes the steps one process takes on the same global batch.

Each rank trains on its slice of every mini-batch and the ranks add up their gradients, weighted
by their share of its rows, before each step (handgrad.steps.sharded_steps). So after a fit
both ranks hold the same weights, and those are the weights of one process that trained on whole
mini-batches. Batch 7 over 2 ranks splits 3 + 4, and each 57-example epoch ends in a mini-batch of
one row, of which rank 0 gets none: unequal and empty shards are part of the test.

The run is the real script with --trainer.strategy ddp: Lightning starts a second
`python scripts/train.py ...` for rank 1 (its subprocess launcher, as on a GPU machine), and the
two processes join a gloo process group. About 20 s on the 2-core dev machine, most of it start-up.
"""

from __future__ import annotations

import os
import subprocess
import sys

import lightning as L
import pytest
import torch
from test_cli import REPO, SPIRALS

from handgrad import cli

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


class SaveWeights(L.Callback):
    """Writes each rank's weights, step count and metrics to <prefix>_rank<r>.pt when fitting ends."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def on_train_end(self, trainer, pl_module) -> None:
        state = {name: p.detach().clone() for name, p in pl_module.net.state_dict().items()}
        state["global_step"] = trainer.global_step
        state.update({key: trainer.callback_metrics[key].item() for key in ("train/loss", "train/acc", "val/acc")})
        torch.save(state, f"{self.prefix}_rank{trainer.global_rank}.pt")


# 57 training examples (2943 of the 3000 spirals validate): 9 steps of batch 7 an epoch, the last of one
# example; chunks of 4 steps; momentum 0.9 (the config) and weight decay.
ARGS = ["--config", SPIRALS, "--trainer.max_epochs", "3", "--data.val_size", "2943", "--data.batch_size", "7",
        "--data.chunk_size", "28", "--model.weight_decay", "1e-3", "--checkpoint.monitor", "null",
        "--trainer.callbacks+=test_ddp.SaveWeights", "--trainer.callbacks.prefix"]


@pytest.mark.filterwarnings("ignore:.*when logging on epoch level in distributed setting")
def test_two_processes_take_the_steps_of_one_on_the_same_global_batch(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    assert cli.main([*ARGS, str(tmp_path / "one")]) == 0  # one process, in this one
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *ARGS, str(tmp_path / "ddp"),
                           "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("epoch 3/3") == 1  # one line an epoch, from rank 0

    one = torch.load(tmp_path / "one_rank0.pt")
    rank0, rank1 = torch.load(tmp_path / "ddp_rank0.pt"), torch.load(tmp_path / "ddp_rank1.pt")
    assert one["global_step"] == rank0["global_step"] == rank1["global_step"] == 3 * 9
    for name in ("layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"):
        assert torch.equal(rank0[name], rank1[name]), name  # one all-reduced gradient: the ranks never drift
        torch.testing.assert_close(rank0[name], one[name], msg=lambda m, name=name: f"{name}: {m}")  # float32
    # The metrics are those of the whole batch too: the loss and the right predictions of each step
    # travel in its all-reduce, and torchmetrics gathers the validation metrics of the two halves.
    assert rank0["train/loss"] == pytest.approx(one["train/loss"], rel=1e-5)
    assert rank0["train/acc"] == pytest.approx(one["train/acc"], abs=1e-6)
    assert rank0["val/acc"] == pytest.approx(one["val/acc"], abs=1e-6)
