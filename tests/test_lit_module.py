"""handgrad.lit_module: the chunked training loop walks the plain loop's path and counts its steps."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from handgrad.data import ConfigError, DataModule
from handgrad.lit_module import Classifier, bare_epoch
from handgrad.models import MLP
from handgrad.optim import SGD

pytestmark = pytest.mark.usefixtures("one_thread")


def trainer(**kwargs) -> L.Trainer:
    defaults = dict(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    return L.Trainer(**{**defaults, **kwargs})


def spirals(**kwargs) -> DataModule:
    return DataModule(**{"dataset": "spirals", "val_size": 2897, **kwargs})  # 103 training examples


def net(seed: int = 0, **kwargs) -> MLP:
    torch.manual_seed(seed)
    return MLP(**{"sizes": [2, 16, 3], **kwargs})


# --------------------------------------------------------------------------- the loop


@pytest.mark.parametrize("loss, net_kwargs", [("cross_entropy", {}), ("mse", dict(output_activation="sigmoid"))])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_an_epoch_walks_the_same_path_as_the_bare_loop(loss, net_kwargs, momentum):
    data = spirals(batch_size=8, chunk_size=40, seed=5)  # 3 chunks of 5 steps
    model = Classifier(net(**net_kwargs), loss=loss, lr=0.3, momentum=momentum)
    trainer(limit_val_batches=0).fit(model, data)

    reference = net(**net_kwargs)
    x, y = data.splits["train"]
    order = data.train_dataloader().sampler.permutation()  # epoch 0's order, as Lightning drew it
    bare_epoch(reference, SGD(reference.parameters(), lr=0.3, momentum=momentum), x, y, 8, loss, order)
    for (name, p), q in zip(model.net.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("batch_size, steps", [(1, 103), (10, 11), ("full", 1)],
                         ids=["sgd", "mini-batch", "full-batch"])
def test_global_step_counts_optimiser_steps_in_each_regime(batch_size, steps):
    data = spirals(batch_size=batch_size, chunk_size=25)
    fit = trainer(max_epochs=2, limit_val_batches=0)
    fit.fit(Classifier(net(), lr=0.1), data)
    assert steps == data.steps_per_epoch == math.ceil(103 / data.batch_size)
    assert fit.global_step == 2 * steps
    assert fit.num_training_batches == math.ceil(103 / (data.batch_size * max(1, 25 // data.batch_size)))


def test_max_steps_stops_inside_a_chunk():
    fit = trainer(max_epochs=5, max_steps=7, limit_val_batches=0)
    fit.fit(Classifier(net(), lr=0.1), spirals(batch_size=2, chunk_size=50))
    assert fit.global_step == 7


def test_learns_spirals_and_reports_test_accuracy():
    data = DataModule("spirals", batch_size=32, val_size=500)
    model = Classifier(net(sizes=[2, 64, 3]), lr=0.3, momentum=0.9)
    fit = trainer(max_epochs=8)
    fit.fit(model, data)
    assert fit.callback_metrics["val/acc"] > 0.7  # chance is 1/3
    (results,) = fit.test(model, data, verbose=False)
    assert results["test/acc"] > 0.7


def test_histograms_only_when_a_multiple_of_n_steps_is_crossed(monkeypatch):
    logged_at = []
    monkeypatch.setattr(Classifier, "_log_histograms", lambda self: logged_at.append(self.global_step))
    fit = trainer(max_epochs=3, limit_val_batches=0)
    fit.fit(Classifier(net(), lr=0.1, histogram_every_n_steps=20), spirals(batch_size=2, chunk_size=30))
    # 52 steps an epoch in 4 chunks of 13 steps (at most 15): chunks end at steps 13, 26, 39, 52,
    # 65, 78, 91, 104, 117, 130, 143, 156; those that passed a multiple of 20 log histograms.
    assert logged_at == [26, 52, 65, 91, 104, 130, 143]


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("kwargs, message", [
    (dict(loss="hinge"), r"model\.loss='hinge' is unknown; choose one of 'cross_entropy', 'mse'"),
    (dict(lr=0.0), r"model\.lr=0\.0 must be > 0"),
    (dict(lr=-0.1), r"model\.lr=-0\.1 must be > 0"),
    (dict(momentum=1.0), r"model\.momentum=1\.0 must be in \[0, 1\)"),
    (dict(weight_decay=-1.0), r"model\.weight_decay=-1\.0 must be >= 0"),
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
