"""Helpers for the tests that stop and resume runs (test_resume, test_stopping, test_checks): the reference
run, running handgrad.cli in-process with extra callbacks, and comparing two runs' states bit for bit.

The reference run: 2500 spirals at batch 32, 79 steps an epoch in 4 chunks of 19, 20, 20 and 20 steps
(chunk_size 640). Dropout and momentum make the random state and the optimiser state part of what a
resume must restore.
"""

from __future__ import annotations

import lightning as L
import torch
from test_cli import SPIRALS, events, scalars

from handgrad import cli

RUN = ["--config", SPIRALS, "--data.chunk_size", "640", "--model.momentum", "0.9",
       "--model.net.init_args.dropout", "0.1", "--trainer.enable_model_summary", "false"]
STEPS_PER_EPOCH = 79
CHUNK_ENDS = (19, 39, 59, 79)  # steps into an epoch at which each chunk ends
LAST = ("logs", "spirals", "version_0", "checkpoints", "last.ckpt")
TAGS = ("train/loss", "val/acc", "test/acc")


def fit(workdir, monkeypatch, *args: str, callbacks: tuple[L.Callback, ...] = ()) -> int:
    """handgrad.cli.main in ``workdir`` on RUN + ``args``, with ``callbacks`` first in the trainer's list."""
    workdir.mkdir(exist_ok=True)
    monkeypatch.chdir(workdir)
    if not callbacks:
        return cli.main([*RUN, *args])
    build = cli.build

    def build_with_callbacks(arguments, stop=None):
        run = build(arguments, stop)
        run.trainer.callbacks[:0] = callbacks
        return run

    with monkeypatch.context() as patched:
        patched.setattr(cli, "build", build_with_callbacks)
        return cli.main([*RUN, *args])


def last_checkpoint(workdir) -> dict:
    return torch.load(workdir.joinpath(*LAST), weights_only=False)


def logged(workdir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of the run's TensorBoard scalars."""
    log = events(workdir / "logs" / "spirals" / "version_0")
    return {tag: scalars(log, tag) for tag in TAGS if tag in log.Tags()["scalars"]}


def assert_same_state(resumed: dict, uninterrupted: dict, **tolerance: float) -> None:
    """Bit for bit (or within ``tolerance``, torch.testing.assert_close's rtol and atol): the weights and SGD's
    momentum buffers; exactly: the step count, the place and every random state."""
    def same(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
        if tolerance:
            torch.testing.assert_close(actual, expected, **tolerance, msg=lambda m: f"{name}: {m}")
        else:
            assert torch.equal(actual, expected), name
    assert resumed["global_step"] == uninterrupted["global_step"] and resumed["epoch"] == uninterrupted["epoch"]
    assert resumed["handgrad_position"] == uninterrupted["handgrad_position"]
    for name, value in uninterrupted["state_dict"].items():
        same(resumed["state_dict"][name], value, name)
    momentum = [s["momentum_buffer"] for s in uninterrupted["optimizer_states"][0]["state"].values()]
    resumed_momentum = [s["momentum_buffer"] for s in resumed["optimizer_states"][0]["state"].values()]
    assert len(momentum) == len(resumed_momentum) == 4
    for i, (actual, expected) in enumerate(zip(resumed_momentum, momentum, strict=True)):
        same(actual, expected, f"momentum buffer {i}")
    assert torch.equal(resumed["torch_rng_state"], uninterrupted["torch_rng_state"])
    by_rank = uninterrupted.get("torch_rng_states_by_rank")
    assert (by_rank is None) == (resumed.get("torch_rng_states_by_rank") is None)
    if by_rank is not None:
        assert all(map(torch.equal, resumed["torch_rng_states_by_rank"], by_rank))
