"""Reproducibility and resuming, through handgrad.cli: the same seed gives the same run, and a run stopped
anywhere (after an epoch, by max_steps inside a chunk, by max_time, from a checkpoint written before
handgrad kept its place in the epoch) and resumed with --ckpt_path last ends with the weights,
optimiser state, random state and logged metrics of a run that never stopped. Data settings that
would move the resumed run's place are refused unless --restart_epoch asks for the epoch afresh.
Stops by signals: test_stopping.py."""

from __future__ import annotations

import shutil

import lightning as L
import pytest
import torch
from conftest import REPO
from lightning.pytorch.callbacks import timer
from runs import LAST, STEPS_PER_EPOCH, assert_same_state, fit, last_checkpoint, logged

from handgrad.lit_module import Classifier

pytestmark = pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
OLD_CHECKPOINT = REPO / "tests" / "fixtures" / "spirals_step99_written_before_positions.ckpt"  # max_steps 99


def test_the_same_seed_and_config_give_the_same_run(tmp_path, monkeypatch, uninterrupted, one_thread):
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3") == 0
    checkpoint, metrics = uninterrupted
    assert logged(tmp_path) == metrics  # every logged value, exactly
    assert_same_state(last_checkpoint(tmp_path), checkpoint)


def test_resuming_after_an_epoch_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch, uninterrupted,
                                                                               one_thread):
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "1") == 0
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3", "--ckpt_path", "last") == 0
    checkpoint, metrics = uninterrupted
    assert_same_state(last_checkpoint(tmp_path), checkpoint)
    assert logged(tmp_path)["train/loss"] == metrics["train/loss"]  # epoch 1 from the first run, 2-3 from the second
    assert logged(tmp_path)["val/acc"] == metrics["val/acc"]


@pytest.mark.parametrize("max_steps, resumed_with", [
    (85, []),  # 6 steps into the first chunk of epoch 2
    (98, ["--trainer.max_steps", "237"]),  # at a chunk boundary
    (99, []),  # 1 step into a chunk
    (150, ["--trainer.max_steps", "237"]),  # inside the last chunk of epoch 2
    (158, ["--trainer.max_steps", "237"]),  # at the epoch's end (Lightning alone would replay it: one epoch less)
])
def test_a_max_steps_stop_resumes_where_it_stopped(max_steps, resumed_with, tmp_path, monkeypatch, uninterrupted,
                                                  capsys, one_thread):
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3", "--trainer.max_steps", str(max_steps)) == 0
    stopped = last_checkpoint(tmp_path)
    assert stopped["global_step"] == max_steps
    assert stopped["handgrad_position"] == {"epoch": max_steps // STEPS_PER_EPOCH, "steps": max_steps % STEPS_PER_EPOCH,
                                            "steps_per_epoch": STEPS_PER_EPOCH}
    if max_steps % STEPS_PER_EPOCH:  # the epoch line says the epoch was cut short
        assert f"stopped at step {max_steps}, {max_steps % STEPS_PER_EPOCH} of 79 steps into epoch 2" in \
            capsys.readouterr().out
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3", "--ckpt_path", "last", *resumed_with) == 0
    checkpoint, metrics = uninterrupted
    assert_same_state(last_checkpoint(tmp_path), checkpoint)
    # Every chunk logs its mean loss once; the chunk max_steps cut logged its two parts, at its cut and its end.
    losses, expected = dict(logged(tmp_path)["train/loss"]), dict(metrics["train/loss"])
    chunk_end = next(step for step in sorted(expected) if step >= max_steps)
    assert set(losses) == set(expected) | {max_steps}
    assert {step: losses[step] for step in expected if step != chunk_end} == \
        {step: value for step, value in expected.items() if step != chunk_end}


def test_a_chain_of_stops_inside_chunks_ends_as_the_uninterrupted_run(tmp_path, monkeypatch, uninterrupted, one_thread):
    for max_steps in ("99", "120"):
        assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3", "--trainer.max_steps", max_steps,
                   *(["--ckpt_path", "last"] if max_steps == "120" else [])) == 0
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3", "--ckpt_path", "last") == 0
    assert_same_state(last_checkpoint(tmp_path), uninterrupted[0])


class TimeRunsOut(L.Callback):
    """Makes Lightning's Timer (--trainer.max_time) find its time used up when chunk ``chunk`` of epoch ``epoch``
    starts: it stops after that chunk, deterministically."""

    def __init__(self, monkeypatch, epoch: int, chunk: int):
        self.epoch, self.chunk, self.elapsed = epoch, chunk, 0.0
        monkeypatch.setattr(timer.Timer, "time_elapsed", lambda timer_self, stage=None: self.elapsed)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.chunk):
            self.elapsed = 1e9


def test_a_max_time_stop_resumes_where_it_stopped(tmp_path, monkeypatch, uninterrupted, one_thread):
    with monkeypatch.context() as patched:
        assert fit(tmp_path, patched, "--trainer.max_epochs", "3", "--trainer.max_time", "00:01:00:00",
                   callbacks=(TimeRunsOut(patched, epoch=1, chunk=1),)) == 0
    assert last_checkpoint(tmp_path)["global_step"] == STEPS_PER_EPOCH + 39  # after the chunk of 20 steps
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3", "--ckpt_path", "last") == 0
    checkpoint, metrics = uninterrupted
    assert_same_state(last_checkpoint(tmp_path), checkpoint)
    assert logged(tmp_path)["train/loss"] == metrics["train/loss"]


def test_a_checkpoint_written_before_positions_were_kept_resumes_where_it_stopped(tmp_path, monkeypatch,
                                                                                  uninterrupted, one_thread):
    """Lightning counted that max_steps 99 stop as a finished epoch 2; its step count says where it was.

    The file's first 99 steps ran an older build of the ops, whose cross-entropy rounded some values in the
    last bit differently, so the weights are compared within float32 noise (they differ by at most 1.7e-7);
    the place, the step count and the random state exactly."""
    tmp_path.joinpath(*LAST[:-1]).mkdir(parents=True)
    shutil.copy(OLD_CHECKPOINT, tmp_path.joinpath(*LAST))
    assert "handgrad_position" not in last_checkpoint(tmp_path)
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3", "--ckpt_path", "last") == 0
    assert_same_state(last_checkpoint(tmp_path), uninterrupted[0], rtol=1e-5, atol=1e-6)


def test_resuming_in_float64_keeps_every_bit(tmp_path, monkeypatch, one_thread):
    """Lightning restores a checkpoint before it converts the module to "64-true": Classifier.setup
    converts it first, or the float64 weights would be rounded to float32 on the way in."""
    run = ["--trainer.precision", "64-true", "--data.val_size", "2943"]  # 57 training examples
    assert fit(tmp_path / "once", monkeypatch, *run, "--trainer.max_epochs", "3") == 0
    assert fit(tmp_path / "twice", monkeypatch, *run, "--trainer.max_epochs", "1") == 0
    assert fit(tmp_path / "twice", monkeypatch, *run, "--trainer.max_epochs", "3", "--ckpt_path", "last") == 0
    once, twice = last_checkpoint(tmp_path / "once"), last_checkpoint(tmp_path / "twice")
    assert once["state_dict"]["net.layers.0.weight"].dtype == torch.float64
    assert_same_state(twice, once)


# --------------------------------------------------------------------------- data settings on resuming


@pytest.fixture(scope="module")
def stopped_mid_epoch(tmp_path_factory):
    """A run stopped 20 steps into epoch 2 (max_steps 99): its folder, and its config.yaml's bytes."""
    workdir = tmp_path_factory.mktemp("mid_epoch")
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert fit(workdir, monkeypatch, "--trainer.max_epochs", "3", "--trainer.max_steps", "99") == 0
    return workdir, (workdir / "logs" / "spirals" / "version_0" / "config.yaml").read_bytes()


@pytest.mark.parametrize("setting, value, was", [
    ("batch_size", "64", "32"), ("chunk_size", "320", "640"), ("seed", "1", "0"), ("val_size", "400", "500"),
    ("dataset", "mnist", "'spirals'")])
def test_a_data_setting_that_moves_the_place_in_the_epoch_is_refused(setting, value, was, stopped_mid_epoch,
                                                                     monkeypatch, capsys, mnist_root):
    workdir, config = stopped_mid_epoch
    data = ["--data.root", mnist_root, "--data.download", "false"] if setting == "dataset" else []
    assert fit(workdir, monkeypatch, "--trainer.max_epochs", "3", "--ckpt_path", "last", f"--data.{setting}", value,
               *data) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --ckpt_path logs/spirals/version_0/checkpoints/last.ckpt stopped 20 of 79 steps "
                          f"into epoch 2 with data.{setting}={was}; this run has data.{setting}=")
    assert err.count("\n") == 1
    assert err.rstrip().endswith(f"pass --data.{setting} {was.strip(chr(39))}, or --restart_epoch true to train "
                                 "epoch 2 afresh from its first chunk"), err
    assert (workdir / "logs" / "spirals" / "version_0" / "config.yaml").read_bytes() == config  # nothing written


def test_restart_epoch_trains_the_epoch_afresh_with_other_data_settings(tmp_path, monkeypatch, one_thread):
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3", "--trainer.max_steps", "99") == 0
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3", "--ckpt_path", "last", "--data.chunk_size", "320",
               "--restart_epoch", "true") == 0
    resumed = last_checkpoint(tmp_path)  # epoch 2 again from its start (its 20 steps stay in the weights), then 3
    assert resumed["global_step"] == 99 + 2 * STEPS_PER_EPOCH
    assert resumed["handgrad_position"] == {"epoch": 3, "steps": 0, "steps_per_epoch": STEPS_PER_EPOCH}


def test_at_an_epoch_end_the_batch_size_may_change(tmp_path, monkeypatch, one_thread):
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "1") == 0
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "3", "--ckpt_path", "last", "--data.batch_size",
               "64") == 0
    resumed = last_checkpoint(tmp_path)  # 79 steps of 32, then two epochs of 40 steps of 64
    assert resumed["global_step"] == STEPS_PER_EPOCH + 2 * 40
    assert resumed["handgrad_position"] == {"epoch": 3, "steps": 0, "steps_per_epoch": 40}


def test_the_test_falls_back_to_last_ckpt_when_the_best_checkpoint_is_gone(tmp_path, monkeypatch, capsys, one_thread):
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "2") == 0
    best = tmp_path / "logs" / "spirals" / "version_0" / "checkpoints" / "epoch001-step158.ckpt"
    best.unlink()
    capsys.readouterr()
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "2", "--ckpt_path", "last") == 0
    out, err = capsys.readouterr()
    assert "the best checkpoint logs/spirals/version_0/checkpoints/epoch001-step158.ckpt is gone or damaged; testing " \
           "logs/spirals/version_0/checkpoints/last.ckpt\n" in err
    assert "(final weights: step 158)" in out.splitlines()[-1]


def test_a_checkpoint_loads_for_inference_without_a_trainer(tmp_path, monkeypatch, one_thread):
    """Classifier.load_from_checkpoint(path): the trained weights, ready to predict; the process's random state is
    left to the caller (a training resume restores the checkpoint's, loading weights does not)."""
    assert fit(tmp_path, monkeypatch, "--trainer.max_epochs", "1") == 0
    path = tmp_path.joinpath(*LAST)
    checkpoint = torch.load(path, weights_only=False)
    model = Classifier.load_from_checkpoint(path)
    saved_states = checkpoint.get("torch_rng_states_by_rank") or [checkpoint["torch_rng_state"]]
    assert not any(torch.equal(torch.get_rng_state(), state) for state in saved_states)
    saved = checkpoint["state_dict"]
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[name], value) for name, value in model.state_dict().items())
    assert model(torch.randn(5, 2)).shape == (5, 3)  # spirals: 2 inputs, 3 classes
