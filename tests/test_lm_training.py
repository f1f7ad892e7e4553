"""Training language models from the command line: the logged metrics and samples, the hand backend
beside its autograd twin, exact resume, the addition task, and generation from the checkpoints."""

from __future__ import annotations

import math
import random
import signal
from types import SimpleNamespace

import pytest
import torch
from signals import SendSignal
from test_cli import events, scalars

from handgrad import cli, sampling
from handgrad.errors import ConfigError
from handgrad.lm_module import LanguageModel, clip_grad_norm, lr_at
from handgrad.models import GPT

WORDS = "the quick brown fox jumps over a lazy dog and then sleeps in the warm sun".split()
TINY = ["--model.net.n_layer", "1", "--model.net.n_head", "2", "--model.net.n_embd", "16",
        "--model.net.dropout", "0.1", "--data.block_size", "16", "--data.batch_size", "8", "--data.chunk_size", "40",
        "--model.warmup_steps", "5", "--model.sample_length", "20", "--model.sample_prompt", "the ",
        "--trainer.enable_model_summary", "false"]
STEPS_PER_EPOCH = 15  # 130 windows of 17: 118 train, 6 val, 6 test; ceil(118 / 8)
RUN = ("logs", "gpt_chars", "version_0")


@pytest.fixture
def text_file(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "words.txt"
    path.write_text(" ".join(rng.choice(WORDS) for _ in range(460)) + "\n", encoding="utf-8")
    return path


def fit(workdir, monkeypatch, text_file, *args: str) -> int:
    monkeypatch.chdir(workdir)
    return cli.main(["--config", "gpt_chars", "--data.path", str(text_file), "--model.decay_steps", "30", *TINY, *args])


def last(workdir) -> dict:
    return torch.load(workdir.joinpath(*RUN, "checkpoints", "last.ckpt"), weights_only=False)


def test_a_run_logs_loss_perplexity_and_samples(tmp_path, monkeypatch, text_file, one_thread, capsys):
    assert fit(tmp_path, monkeypatch, text_file, "--trainer.max_epochs", "2") == 0
    assert "test loss" in capsys.readouterr().out
    log = events(tmp_path.joinpath(*RUN))
    train, val, perplexity = (scalars(log, tag) for tag in ("train/loss", "val/loss", "val/perplexity"))
    assert [step for step, _ in val] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]  # against optimiser steps
    vocab_size = len(set(text_file.read_text()))
    assert train[-1][1] < train[0][1] and val[1][1] < val[0][1] < math.log(vocab_size)  # better than uniform
    assert perplexity[-1][1] == pytest.approx(math.exp(val[-1][1]), rel=1e-5)
    samples = log.Tags()["tensors"]
    assert "samples/text_summary" in samples
    checkpoint = last(tmp_path)
    assert checkpoint["hyper_parameters"]["vocab"] == "".join(sorted(set(text_file.read_text())))


def test_the_autograd_twin_reaches_the_same_validation_loss(tmp_path, monkeypatch, text_file, one_thread):
    """Same seed, same weights: hand and autograd backends log the same losses to float32 rounding."""
    losses = {}
    for backend in ("hand", "autograd"):
        workdir = tmp_path / backend
        workdir.mkdir()
        assert fit(workdir, monkeypatch, text_file, "--trainer.max_epochs", "1", "--model.net.dropout", "0",
                   "--model.net.backend", backend) == 0
        losses[backend] = [v for _, v in scalars(events(workdir.joinpath(*RUN)), "val/loss")]
    assert losses["hand"] == pytest.approx(losses["autograd"], rel=1e-4)


@pytest.mark.parametrize("max_steps", [7, 10])  # inside a chunk, at a chunk's end (chunks of 5 steps)
def test_an_interrupted_run_resumes_exactly(max_steps, tmp_path, monkeypatch, text_file, one_thread):
    """Stopped at max_steps and resumed with --ckpt_path last: the weights, AdamW's moments, the random
    state and the logged validation losses are those of a run that never stopped, bit for bit. decay_steps is
    given: by default the cosine ends at the run's max_steps, which the stopped run sets to stop."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    for folder in (whole, parts):
        folder.mkdir()
    assert fit(whole, monkeypatch, text_file, "--trainer.max_epochs", "2") == 0
    assert fit(parts, monkeypatch, text_file, "--trainer.max_epochs", "2", "--trainer.max_steps", str(max_steps)) == 0
    assert fit(parts, monkeypatch, text_file, "--trainer.max_epochs", "2", "--ckpt_path", "last") == 0
    resumed, reference = last(parts), last(whole)
    assert resumed["global_step"] == reference["global_step"] == 2 * STEPS_PER_EPOCH
    for name, value in reference["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], value), name
    for theirs, ours in zip(reference["optimizer_states"][0]["state"].values(),
                            resumed["optimizer_states"][0]["state"].values(), strict=True):
        assert all(torch.equal(ours[key], theirs[key]) for key in ("exp_avg", "exp_avg_sq", "step"))
    assert torch.equal(resumed["torch_rng_state"], reference["torch_rng_state"])
    assert scalars(events(parts.joinpath(*RUN)), "val/loss") == scalars(events(whole.joinpath(*RUN)), "val/loss")


@pytest.mark.usefixtures("signal_handlers")
def test_a_sigterm_mid_chunk_saves_and_the_resumed_run_ends_as_if_never_stopped(tmp_path, monkeypatch, text_file,
                                                                               one_thread, capsys):
    """SIGTERM while the second chunk of epoch 2 trains: the chunk finishes (20 steps), last.ckpt is saved,
    the exit status is 143; --ckpt_path last then ends bit for bit as the run that never stopped."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    for folder in (whole, parts):
        folder.mkdir()
    assert fit(whole, monkeypatch, text_file, "--trainer.max_epochs", "2") == 0
    build = cli.build

    def build_with_signal(arguments, stop=None):
        run = build(arguments, stop)
        run.trainer.callbacks[:0] = [SendSignal("SIGTERM", "mid_chunk", epoch=1, chunk=1)]
        return run

    with monkeypatch.context() as patched:
        patched.setattr(cli, "build", build_with_signal)
        assert fit(parts, monkeypatch, text_file, "--trainer.max_epochs", "2") == 128 + signal.SIGTERM
    assert "stopped by SIGTERM after optimiser step 25 (epoch 2, 10 of 15 steps into it)" in capsys.readouterr().err
    assert fit(parts, monkeypatch, text_file, "--trainer.max_epochs", "2", "--ckpt_path", "last") == 0
    resumed, reference = last(parts), last(whole)
    for name, value in reference["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], value), name
    assert torch.equal(resumed["torch_rng_state"], reference["torch_rng_state"])
    assert scalars(events(parts.joinpath(*RUN)), "val/loss") == scalars(events(whole.joinpath(*RUN)), "val/loss")


def test_addition_trains_and_generate_scores_its_test_problems(tmp_path, monkeypatch, one_thread, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--config", "gpt_addition", "--data.digits", "1", "--data.val_size", "10",
                     "--data.test_size", "20", "--trainer.max_epochs", "1", "--trainer.max_steps", "3",
                     "--trainer.enable_model_summary", "false"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    log = events(tmp_path / "logs" / "gpt_addition" / "version_0")
    assert "val/acc" in log.Tags()["scalars"] and "test/acc" in log.Tags()["scalars"]
    checkpoint = tmp_path / "logs" / "gpt_addition" / "version_0" / "checkpoints" / "last.ckpt"
    assert sampling.main([str(checkpoint), "--accuracy"]) == 0
    assert "exact match on the 20 test problems" in capsys.readouterr().out


def test_generate_samples_from_a_text_checkpoint(tmp_path, monkeypatch, text_file, one_thread, capsys):
    assert fit(tmp_path, monkeypatch, text_file, "--trainer.max_steps", "3") == 0
    checkpoint = str(tmp_path.joinpath(*RUN, "checkpoints", "last.ckpt"))
    capsys.readouterr()
    assert sampling.main([checkpoint, "--prompt", "the ", "--length", "30", "--top_k", "5"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("the ") and len(first.splitlines()[0]) >= 4
    assert sampling.main([checkpoint, "--prompt", "the ", "--length", "30", "--top_k", "5"]) == 0
    assert capsys.readouterr().out == first  # --seed 0 both times


def test_several_processes_and_float16_are_refused_before_any_step():
    model = LanguageModel(GPT(5, 4, 1, 1, 4), vocab="abcde", sample_prompt="a")
    model._trainer = SimpleNamespace(world_size=2, precision="32-true")  # what a DDP run's trainer says
    with pytest.raises(ConfigError, match="trains on one process, and this run has 2 .*; use --trainer.devices 1"):
        model.setup("fit")
    model._trainer = SimpleNamespace(world_size=1, precision="16-mixed")
    with pytest.raises(ConfigError, match="needs loss scaling.*; use --trainer.precision bf16-mixed"):
        model.setup("fit")


# --------------------------------------------------------------------------- the schedule and clipping


def test_lr_warms_up_linearly_then_decays_along_a_cosine():
    assert [lr_at(s, 1.0, 4, 12, 0.1) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(8, 1.0, 4, 12, 0.1) == pytest.approx(0.55)  # halfway: (1 + 0.1) / 2
    assert lr_at(12, 1.0, 4, 12, 0.1) == lr_at(50, 1.0, 4, 12, 0.1) == 0.1


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clipping_matches_torch(max_norm):
    torch.manual_seed(0)
    ours, theirs = [torch.randn(3, 4, requires_grad=True) for _ in range(2)], None
    for p in ours:
        p.grad = torch.randn_like(p)
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    for p, q in zip(ours, theirs, strict=True):
        q.grad = p.grad.clone()
    norm = clip_grad_norm(ours, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    torch.testing.assert_close(norm, expected)
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p.grad, q.grad)
