"""handgrad.optimizer_choice: Classifier trains with the optimiser the config names (--model.optimizer), steps
as a plain loop with torch.optim's optimiser does, resumes with its state bit for bit, and refuses a bad
name or hyperparameter with the fix."""

from __future__ import annotations

import pytest
import torch
from runs import fit, last_checkpoint
from test_cli import SPIRALS
from test_cli_help import help_text
from test_lit_module import RecordingLogger, spirals, trainer
from test_steps import net

import handgrad.functional as F
from handgrad.errors import ConfigError
from handgrad.lit_module import Classifier
from handgrad.optim import SGD, Adam, AdamW, RMSprop
from handgrad.optimizer_choice import OPTIMIZERS, optimizer_settings
from handgrad.preflight import check_optimizer
from handgrad.resume import ResumableModule

pytestmark = pytest.mark.usefixtures("one_thread")

TORCH_TWINS = {"adam": (torch.optim.Adam, dict(lr=0.01), {}),
               "adamw": (torch.optim.AdamW, dict(lr=0.01, weight_decay=0.05), dict(betas=[0.8, 0.99], amsgrad=True)),
               "rmsprop": (torch.optim.RMSprop, dict(lr=0.01, momentum=0.9), dict(centered=True)),
               "sgd": (torch.optim.SGD, dict(lr=0.3, momentum=0.9), dict(nesterov=True))}


def plain_loop_losses(optimizer: torch.optim.Optimizer, model: torch.nn.Module, x, y, batch_size: int) -> list[float]:
    losses = []
    for x_b, y_b in zip(x.split(batch_size), y.split(batch_size), strict=True):
        loss = F.cross_entropy(model(x_b), y_b)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", list(TORCH_TWINS))
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "autograd"])
def test_an_epoch_steps_as_a_plain_loop_with_torch_optim(name, fused):
    torch_class, settings, args = TORCH_TWINS[name]
    data = spirals(batch_size=8, chunk_size=8, seed=5)  # a chunk per step: train/loss is each step's loss
    model = Classifier(net(), optimizer=name, **settings, optimizer_args=args, fused=fused)
    logger = RecordingLogger()
    trainer(limit_val_batches=0, logger=logger, log_every_n_steps=1).fit(model, data)
    assert model.fused_step is fused and type(model.trainer.optimizers[0]) is OPTIMIZERS[name]
    logged = [metrics["train/loss"] for _, metrics in logger.logged if "train/loss" in metrics]

    reference = net()  # the same seed: the same initial weights
    x, y = data.splits["train"]
    order = data.train_dataloader().sampler.permutation()  # epoch 0's order, as Lightning drew it
    expected = plain_loop_losses(torch_class(reference.parameters(), **settings, **args), reference,
                                 x[order], y[order], 8)
    assert len(logged) == len(expected) == 13
    # the autograd path runs the plain loop's very ops; the fused step computes the same gradients in
    # another order of float32 operations (tests/test_lit_module.py compares the two paths)
    assert logged == (pytest.approx(expected, rel=1e-6, abs=1e-7) if fused else expected)
    for (p_name, p), q in zip(model.net.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=lambda m, p_name=p_name: f"{p_name}: {m}")


def test_the_default_stays_sgd_with_the_configs_settings():
    model = Classifier(net(), lr=0.3, momentum=0.9, weight_decay=1e-3)
    optimizer = model.configure_optimizers()
    assert type(optimizer) is SGD and model.hparams["optimizer"] == "sgd"
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.3, 0.9, 1e-3, False)


def test_optimizer_args_reach_the_optimizer_as_torch_stores_them():
    model = Classifier(net(), optimizer="AdamW", lr=1e-3, optimizer_args={"betas": [0.9, 0.95], "eps": 1e-6})
    optimizer = model.configure_optimizers()
    assert type(optimizer) is AdamW
    group = optimizer.param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.9, 0.95), 1e-6, 0.0)  # Classifier's default


ADAM_RUN = ("--model.optimizer", "adam", "--model.momentum", "0", "--model.lr", "0.01",
            "--model.optimizer_args.amsgrad", "true")


def test_a_run_with_adam_stopped_and_resumed_ends_as_the_uninterrupted_run(tmp_path, monkeypatch):
    assert fit(tmp_path / "once", monkeypatch, *ADAM_RUN, "--trainer.max_epochs", "2") == 0
    assert fit(tmp_path / "twice", monkeypatch, *ADAM_RUN, "--trainer.max_epochs", "2",
               "--trainer.max_steps", "99") == 0  # 20 steps into epoch 2, in the middle of its second chunk
    stopped = last_checkpoint(tmp_path / "twice")
    assert stopped["global_step"] == 99 and stopped["hyper_parameters"]["optimizer"] == "adam"
    assert fit(tmp_path / "twice", monkeypatch, *ADAM_RUN, "--trainer.max_epochs", "2", "--ckpt_path", "last") == 0
    once, twice = last_checkpoint(tmp_path / "once"), last_checkpoint(tmp_path / "twice")
    assert twice["global_step"] == once["global_step"] == 158
    for name, value in once["state_dict"].items():
        assert torch.equal(twice["state_dict"][name], value), name
    ours, theirs = twice["optimizer_states"][0], once["optimizer_states"][0]
    assert ours["param_groups"] == theirs["param_groups"]
    assert len(theirs["state"]) == 4
    for index, state in theirs["state"].items():
        assert set(state) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
        for key, value in state.items():
            assert torch.equal(ours["state"][index][key], value), (index, key)
    assert torch.equal(twice["torch_rng_state"], once["torch_rng_state"])


def test_a_resume_keeps_the_optimizer_state_and_takes_this_runs_lr(monkeypatch):
    model = Classifier(net(), optimizer="adam", lr=0.01)
    checkpoint = {"optimizer_states": [model.configure_optimizers().state_dict()]}
    monkeypatch.setattr(ResumableModule, "on_load_checkpoint", lambda self, checkpoint: None)  # no trainer here
    Classifier(net(), optimizer="adam", lr=0.001).on_load_checkpoint(checkpoint)
    group = checkpoint["optimizer_states"][0]["param_groups"][0]
    assert group["lr"] == 0.001 and "momentum" not in group and group["betas"] == (0.9, 0.999)


def test_a_checkpoint_of_another_optimizer_is_refused():
    model = Classifier(net(), optimizer="adam", lr=1e-3)
    with pytest.raises(ConfigError, match=r"^--ckpt_path run.ckpt was trained with model.optimizer='sgd'; this run "
                                          r"has model.optimizer='adam', whose state differs; pass --model.optimizer "
                                          r"sgd, or start afresh without --ckpt_path$"):
        check_optimizer("run.ckpt", {"hyper_parameters": {"lr": 0.1}}, model)  # saved before the setting: SGD
    check_optimizer("run.ckpt", {"hyper_parameters": {"optimizer": "Adam"}}, model)


@pytest.mark.parametrize("kwargs, message", [
    (dict(optimizer="adamm"),
     "model.optimizer='adamm' is unknown; choose one of sgd, adam, adamw, rmsprop, adadelta, adagrad "
     "(did you mean --model.optimizer adam?)"),
    (dict(optimizer="lbfgs"),
     "model.optimizer='lbfgs' is unknown; choose one of sgd, adam, adamw, rmsprop, adadelta, adagrad "
     "(e.g. --model.optimizer adam)"),
    (dict(optimizer="adam", optimizer_args={"beta": [0.9, 0.99]}),
     "model.optimizer_args.beta=[0.9, 0.99]: Adam has no argument 'beta' (did you mean betas?); its arguments are "
     "betas, eps, amsgrad, foreach, maximize, capturable, differentiable, fused, decoupled_weight_decay"),
    (dict(optimizer="adam", optimizer_args={"lr": 0.01}),
     "model.optimizer_args.lr=0.01: lr is Classifier's own option, given to every optimiser; pass --model.lr 0.01 "
     "and leave it out of optimizer_args"),
    (dict(optimizer="adam", momentum=0.9),
     "model.momentum=0.9 is a setting of sgd, rmsprop only; Adam has no momentum (beta1 of its betas plays that "
     "part): pass --model.momentum 0 with --model.optimizer adam"),
    (dict(optimizer="adam", optimizer_args={"eps": -1e-8}),
     "model.optimizer adam: Adam: eps=-1e-08 is negative; it keeps the denominator away from 0: use a small "
     "positive value, e.g. eps=1e-8 (set by --model.optimizer_args.eps)"),
    (dict(optimizer="adam", optimizer_args={"betas": [0.9, 1.5]}),
     "model.optimizer adam: Adam: betas[1]=1.5 is outside [0, 1); it is the decay rate of a running average: use "
     "e.g. betas=(0.9, 0.999) (set by --model.optimizer_args.betas)"),
    (dict(optimizer="sgd", optimizer_args={"nesterov": True}),
     "model.optimizer sgd: SGD: nesterov=True needs momentum > 0 and dampening = 0 (got momentum=0.0, "
     "dampening=0.0); set momentum, e.g. 0.9, or nesterov=False (set by --model.optimizer_args.nesterov and "
     "--model.momentum)"),
    (dict(optimizer="adam", optimizer_args={"fused": True}),
     "model.optimizer adam: Adam: fused=True asks for torch's fused kernel, not an update written out in foreach "
     "ops; use fused=False (handgrad's update is the same rule in foreach ops) or torch.optim.Adam(fused=True) "
     "(set by --model.optimizer_args.fused)"),
])
def test_a_bad_optimizer_setting_is_refused_before_any_step(kwargs, message):
    with pytest.raises(ConfigError) as refused:
        Classifier(net(), **{"lr": 1e-3, **kwargs})
    assert str(refused.value) == message


def test_the_settings_check_each_optimizer_it_names():
    for name, cls in OPTIMIZERS.items():
        settings = optimizer_settings(name, 0.01, 0.0, 0.0, None)
        assert settings["lr"] == 0.01 and ("momentum" in settings) == (cls in (SGD, RMSprop))
    assert optimizer_settings("adam", 0.01, 0.0, 0.0, {"betas": [0.5, 0.6]})["betas"] == (0.5, 0.6)
    assert Adam in OPTIMIZERS.values()


def test_help_shows_the_optimizer_and_its_arguments(capsys):
    text = help_text(capsys, "--config", SPIRALS, "--model.optimizer", "adam", "--model.optimizer_args.eps", "1e-6",
                     "--help")
    assert "--model.optimizer adam" in text and "sgd, adam, adamw, rmsprop, adadelta or adagrad" in text
    assert "--model.optimizer_args {'eps': 1e-06}" in text
