"""handgrad.lit_module: the chunked training loop walks the plain loop's path and counts its steps."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.precision import MixedPrecision
from test_steps import NOT_FUSABLE, net  # tests/ is on sys.path

from handgrad.data import ConfigError, DataModule
from handgrad.lit_module import Classifier
from handgrad.optim import SGD
from handgrad.steps import bare_epoch

pytestmark = pytest.mark.usefixtures("one_thread")


def trainer(**kwargs) -> L.Trainer:
    defaults = dict(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    return L.Trainer(**{**defaults, **kwargs})


def spirals(**kwargs) -> DataModule:
    return DataModule(**{"dataset": "spirals", "val_size": 2897, **kwargs})  # 103 training examples


# --------------------------------------------------------------------------- the loop


@pytest.mark.parametrize("loss, net_kwargs", [("cross_entropy", {}), ("mse", dict(output_activation="sigmoid"))])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "autograd"])
def test_an_epoch_walks_the_same_path_as_the_bare_loop(loss, net_kwargs, momentum, fused):
    data = spirals(batch_size=8, chunk_size=40, seed=5)  # 3 chunks of 5 steps
    model = Classifier(net(**net_kwargs), loss=loss, lr=0.3, momentum=momentum, fused=fused)
    trainer(limit_val_batches=0).fit(model, data)
    assert model.fused_step is fused

    reference = net(**net_kwargs)
    x, y = data.splits["train"]
    order = data.train_dataloader().sampler.permutation()  # epoch 0's order, as Lightning drew it
    bare_epoch(reference, SGD(reference.parameters(), lr=0.3, momentum=momentum), x, y, 8, loss, order, fused)
    for (name, p), q in zip(model.net.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("batch_size, steps", [(1, 103), (10, 11), ("full", 1)],
                         ids=["sgd", "mini-batch", "full-batch"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "autograd"])
def test_global_step_counts_optimiser_steps_in_each_regime(batch_size, steps, fused):
    data = spirals(batch_size=batch_size, chunk_size=25)
    fit = trainer(max_epochs=2, limit_val_batches=0)
    fit.fit(Classifier(net(), lr=0.1, fused=fused), data)
    assert steps == data.steps_per_epoch == math.ceil(103 / data.batch_size)
    assert fit.global_step == 2 * steps
    assert fit.num_training_batches == math.ceil(103 / (data.batch_size * max(1, 25 // data.batch_size)))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "autograd"])
def test_max_steps_stops_inside_a_chunk(fused):
    fit = trainer(max_epochs=5, max_steps=7, limit_val_batches=0)
    fit.fit(Classifier(net(), lr=0.1, fused=fused), spirals(batch_size=2, chunk_size=50))
    assert fit.global_step == 7


def test_learns_spirals_and_reports_test_accuracy():
    data = DataModule("spirals", batch_size=32, val_size=500)
    model = Classifier(net(sizes=[2, 64, 3]), lr=0.3, momentum=0.9)
    fit = trainer(max_epochs=8)
    fit.fit(model, data)
    assert fit.callback_metrics["val/acc"] > 0.7  # chance is 1/3
    (results,) = fit.test(model, data, verbose=False)
    assert results["test/acc"] > 0.7


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "autograd"])
def test_histograms_only_when_a_multiple_of_n_steps_is_crossed(monkeypatch, fused):
    logged_at = []
    monkeypatch.setattr(Classifier, "_log_histograms", lambda self: logged_at.append(self.global_step))
    fit = trainer(max_epochs=3, limit_val_batches=0)
    fit.fit(Classifier(net(), lr=0.1, histogram_every_n_steps=20, fused=fused), spirals(batch_size=2, chunk_size=30))
    # 52 steps an epoch in 4 chunks of 13 steps (at most 15): chunks end at steps 13, 26, 39, 52,
    # 65, 78, 91, 104, 117, 130, 143, 156; those that passed a multiple of 20 log histograms.
    assert logged_at == [26, 52, 65, 91, 104, 130, 143]


# --------------------------------------------------------------------------- the two paths: fused and autograd


class RecordingLogger(Logger):
    """Keeps every log_metrics call as (step, {tag: value}) and every histogram as (tag, step, values)."""

    name, version = "recording", 0

    def __init__(self):
        super().__init__()
        self.logged: list[tuple[int, dict[str, float]]] = []
        self.histograms: list[tuple[str, int, torch.Tensor]] = []

    @property
    def experiment(self):
        return self  # the Classifier writes histograms to logger.experiment.add_histogram

    def add_histogram(self, tag, values, step, bins="tensorflow") -> None:
        self.histograms.append((tag, step, values.detach().clone()))

    def log_metrics(self, metrics, step=None) -> None:
        self.logged.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def fit_both_ways(loss: str, net_kwargs: dict, momentum: float, weight_decay: float, epochs: int = 2,
                  **data_kwargs) -> dict[str, tuple[Classifier, RecordingLogger]]:
    """The same network and data trained by the fused path, the autograd path and the torch.nn twin."""
    runs = {}
    for name, backend, fused in (("fused", "hand", True), ("autograd", "hand", False), ("twin", "autograd", "auto")):
        model = Classifier(net(backend=backend, **net_kwargs), loss=loss, lr=0.3, momentum=momentum,
                           weight_decay=weight_decay, histogram_every_n_steps=10, fused=fused)
        logger = RecordingLogger()
        trainer(max_epochs=epochs, limit_val_batches=0, logger=logger, log_every_n_steps=1).fit(
            model, spirals(**{"batch_size": 8, "chunk_size": 40, "seed": 5, **data_kwargs}))
        runs[name] = model, logger
    return runs


@pytest.mark.parametrize("loss, net_kwargs", [
    ("cross_entropy", {}),
    ("cross_entropy", dict(sizes=[2, 16, 16, 3], activation="tanh")),
    ("mse", dict(activation="sigmoid", output_activation="sigmoid")),  # nielsen_ch1's kind of network
])
@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 1e-3)])
def test_the_fused_path_trains_like_the_autograd_path_and_the_torch_twin(loss, net_kwargs, momentum, weight_decay):
    runs = fit_both_ways(loss, net_kwargs, momentum, weight_decay)  # 2 epochs of 13 steps
    (fused, _), (layered, _), (twin, _) = runs.values()
    assert (fused.fused_step, layered.fused_step, twin.fused_step) == (True, False, False)
    assert fused.trainer.global_step == layered.trainer.global_step == twin.trainer.global_step == 26
    for (name, p), q, r in zip(fused.net.named_parameters(), layered.net.parameters(), twin.net.parameters(),
                               strict=True):
        torch.testing.assert_close(p, q, msg=lambda m, name=name: f"{name}, fused vs autograd path: {m}")
        torch.testing.assert_close(p, r, msg=lambda m, name=name: f"{name}, fused vs torch.nn twin: {m}")
        # p.grad: the last mini-batch's gradient on both paths (histograms and GradientFlow read it)
        torch.testing.assert_close(p.grad, q.grad, msg=lambda m, name=name: f"{name}.grad: {m}")


def test_the_fused_path_logs_what_the_autograd_path_logs():
    runs = fit_both_ways("mse", dict(output_activation="sigmoid"), 0.0, 0.0)
    (_, fused), (_, layered), _ = runs.values()
    assert [(step, sorted(m)) for step, m in fused.logged] == [(step, sorted(m)) for step, m in layered.logged]
    for (step, ours), (_, theirs) in zip(fused.logged, layered.logged, strict=True):
        for tag, value in ours.items():
            assert value == pytest.approx(theirs[tag], rel=1e-5, abs=1e-6), f"{tag} at step {step}"
    assert [(tag, step) for tag, step, _ in fused.histograms] == [(tag, step) for tag, step, _ in layered.histograms]
    assert {tag for tag, _, _ in fused.histograms} == {f"{kind}/layers.{i}.{p}" for kind in ("weights", "grad")
                                                       for i in (0, 1) for p in ("weight", "bias")}
    for (tag, step, ours), (_, _, theirs) in zip(fused.histograms, layered.histograms, strict=True):
        torch.testing.assert_close(ours, theirs, msg=lambda m, tag=tag, step=step: f"{tag} at {step}: {m}")


def test_the_path_is_logged_once_per_fit(caplog):
    with caplog.at_level("INFO"):
        trainer(max_epochs=2, limit_val_batches=0).fit(Classifier(net(), lr=0.1), spirals(batch_size=8))
        trainer(max_epochs=1, limit_val_batches=0).fit(Classifier(net(backend="autograd"), lr=0.1),
                                                       spirals(batch_size=8))
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Training step:")]
    assert said == ["Training step: fused (handgrad.functional.mlp_loss_and_grads, no autograd engine) and a "
                    "foreach SGD update",
                    "Training step: per-layer Functions, autograd engine, optimizer.step() (its backend is "
                    "'autograd')"]


@pytest.mark.parametrize("network, reason", NOT_FUSABLE)
def test_a_network_the_fused_step_cannot_compute_takes_the_autograd_path(network, reason):
    assert Classifier(network()).fused_blocker == reason  # "auto": the autograd path (tests/test_steps.py)
    with pytest.raises(ConfigError, match="model.fused=true, but " + reason):
        Classifier(network(), fused=True)


def test_16_mixed_steps_through_lightnings_loss_scaler():
    """"16-mixed" (float16 autocast; CUDA in practice): every optimiser step goes through the loss scaler
    of Lightning's precision plugin. Here on the CPU, with the plugin given explicitly (Lightning's own
    precision="16-mixed" would run the CPU as "bf16-mixed", which needs no scaler)."""
    class CountingScaler(torch.amp.GradScaler):
        updates = 0

        def update(self, new_scale=None):
            self.updates += 1
            super().update(new_scale)

    scaler = CountingScaler("cpu")
    model = Classifier(net(), lr=0.1)
    fit = trainer(limit_val_batches=0, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    fit.fit(model, spirals(batch_size=8))
    assert model.fused_step is False  # under autocast
    assert scaler.updates == fit.global_step == 13  # 103 examples in mini-batches of 8


def test_under_autocast_auto_takes_the_autograd_path_and_true_refuses():
    data = spirals(batch_size=8)
    model = Classifier(net(), lr=0.1)
    trainer(limit_val_batches=0, precision="bf16-mixed").fit(model, data)
    assert model.fused_step is False
    with pytest.raises(ConfigError, match=r"model\.fused=true, but precision='bf16-mixed' runs under autocast"):
        trainer(limit_val_batches=0, precision="bf16-mixed").fit(Classifier(net(), lr=0.1, fused=True), data)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("kwargs, message", [
    (dict(loss="hinge"), r"model\.loss='hinge' is unknown; choose one of 'cross_entropy', 'mse'"),
    (dict(lr=0.0), r"model\.lr=0\.0 must be > 0"),
    (dict(lr=-0.1), r"model\.lr=-0\.1 must be > 0"),
    (dict(momentum=1.0), r"model\.momentum=1\.0 must be in \[0, 1\)"),
    (dict(weight_decay=-1.0), r"model\.weight_decay=-1\.0 must be >= 0"),
    (dict(fused="yes"), r"model\.fused='yes' must be true, false or 'auto'"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Classifier(net(), **kwargs)


def test_cross_entropy_wants_logits():
    with pytest.raises(ConfigError, match="set it to null"):
        Classifier(net(output_activation="softmax"), loss="cross_entropy")


def test_network_must_fit_the_data():
    with pytest.raises(ConfigError, match=r"sizes=\[784, 30, 10\] do not fit data\.dataset='spirals'"):
        trainer().fit(Classifier(net(sizes=[784, 30, 10])), spirals())
