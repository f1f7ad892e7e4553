"""handgrad.callbacks: the gradient check, gradient flow and misclassified examples, on short real fits."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from handgrad.callbacks import GradientCheck, GradientFlow, GradientMismatchWarning, MisclassifiedExamples, as_images
from handgrad.data import DataModule
from handgrad.functional import backprop as fused_ops
from handgrad.functional.activations import Sigmoid
from handgrad.lit_module import Classifier
from handgrad.models import MLP

pytestmark = pytest.mark.usefixtures("one_thread")


class RecordingLogger(Logger):
    """Keeps every log_metrics call as (step, {tag: value}); writes nothing."""

    name, version = "recording", 0

    def __init__(self):
        super().__init__()
        self.logged: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics, step=None) -> None:
        self.logged.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def values(self, tag: str) -> list[tuple[int, float]]:
        return [(step, metrics[tag]) for step, metrics in self.logged if tag in metrics]


def fit(callbacks, net: MLP, data: DataModule, logger=None, max_epochs: int = 1, **model_kwargs) -> L.Trainer:
    trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=logger or RecordingLogger(),
                        callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1)
    trainer.fit(Classifier(net, **{"lr": 0.3, **model_kwargs}), data)
    return trainer


def spirals(**kwargs) -> DataModule:
    """100 training examples (3000 spirals points less 2900 for validation), 13 steps of 8 an epoch."""
    return DataModule(**{"dataset": "spirals", "val_size": 2900, "batch_size": 8, "chunk_size": 40, **kwargs})


def net(sizes=(2, 16, 3), activation: str = "sigmoid", seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(list(sizes), activation=activation)


# --------------------------------------------------------------------------- all three on a short run


def test_a_short_run_logs_every_tag_to_tensorboard(tmp_path, mnist_root):
    data = DataModule("mnist", root=mnist_root, download=False, batch_size=10, val_size=50)
    logger = TensorBoardLogger(str(tmp_path), name="run")
    flow = GradientFlow(every_n_steps=10)
    flow.HISTOGRAM_SAMPLE = 1000  # layers.0 has 784 * 16 + 16 entries: histogram a random 1000 of them
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientMismatchWarning)
        fit([GradientCheck(every_n_steps=10), flow, MisclassifiedExamples(n=16)],
            net(sizes=(784, 16, 10)), data, logger=logger, max_epochs=2)

    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "histograms": 0, "images": 0}).Reload()
    tags = events.Tags()
    for layer in ("layers.0", "layers.1"):
        gradcheck = [e.value for e in events.Scalars(f"gradcheck/{layer}")]
        assert len(gradcheck) >= 2 and max(gradcheck) < 1e-12  # float64: agreement to rounding
        assert {f"grad/{layer}/norm", f"update_ratio/{layer}"} <= set(tags["scalars"])
        assert {f"grad/{layer}/values", f"update_ratio/{layer}/log10"} <= set(tags["histograms"])
    assert [e.step for e in events.Images("val/misclassified")] == [15, 30]  # once per epoch of 15 steps
    assert [e.histogram_value.num for e in events.Histograms("grad/layers.0/values")] == [1000, 1000]
    assert [e.histogram_value.num for e in events.Histograms("grad/layers.1/values")] == [16 * 10 + 10] * 2


def test_misclassified_examples_every_n_epochs(tmp_path, mnist_root):
    data = DataModule("mnist", root=mnist_root, download=False, batch_size=10, val_size=50)
    logger = TensorBoardLogger(str(tmp_path), name="run")
    fit([MisclassifiedExamples(n=4, every_n_epochs=2)], net(sizes=(784, 16, 10)), data, logger=logger, max_epochs=3)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Images("val/misclassified")] == [30]  # after epoch 2 of 3


def test_checks_on_the_first_chunk_then_each_time_a_multiple_of_n_steps_is_crossed():
    logger = RecordingLogger()
    trainer = fit([GradientCheck(every_n_steps=12), GradientFlow(every_n_steps=12)], net(), spirals(), logger, 2)
    # 13 steps an epoch in chunks of 4, 4, 5: the chunks end at steps 4 8 13 17 21 26.
    assert trainer.global_step == 26
    for tag in ("gradcheck/layers.0", "grad/layers.1/norm", "update_ratio/layers.0"):
        assert [step for step, _ in logger.values(tag)] == [4, 13, 26]  # the first chunk; then 12 and 24 crossed


def test_training_state_is_untouched():
    plain = fit([], net(), spirals(), max_epochs=2).lightning_module.net
    after_plain = torch.rand(3)
    checked = fit([GradientCheck(every_n_steps=1), GradientFlow(every_n_steps=1)], net(), spirals(), max_epochs=2)
    after_checked = torch.rand(3)
    for (name, p), q in zip(plain.named_parameters(), checked.lightning_module.net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=f"{name} differs when checked")
    torch.testing.assert_close(after_plain, after_checked, rtol=0, atol=0)  # the global random stream too


# --------------------------------------------------------------------------- a wrong backward is caught


@pytest.mark.parametrize("fused", [False, True], ids=["per-layer Functions", "fused step"])
def test_a_broken_backward_is_named_and_logged(monkeypatch, fused):
    # Each path has its own sigmoid derivative; the check must catch a wrong one in the path training takes.
    if fused:  # the fused step's (handgrad.functional.backprop), doubled
        correct = fused_ops.activation_backward

        def doubled(grad, a, f, negative_slope, *flags):
            return (2 if f == "sigmoid" else 1) * correct(grad, a, f, negative_slope, *flags)
        monkeypatch.setattr(fused_ops, "activation_backward", doubled)
    else:  # the Sigmoid Function's, doubled
        correct = Sigmoid.backward
        monkeypatch.setattr(Sigmoid, "backward", staticmethod(lambda ctx, grad_y: 2 * correct(ctx, grad_y)))
    logger = RecordingLogger()
    check = GradientCheck(every_n_steps=10, threshold=1e-6)
    with pytest.warns(GradientMismatchWarning, match=r"step \d+: .* in layers\.0 1\.0e\+00\. A backward") as record:
        trainer = fit([check], net(activation="sigmoid"), spirals(), logger, fused=fused)
    assert trainer.lightning_module.fused_step is fused
    mismatches = [str(w.message).split(":")[0] for w in record if w.category is GradientMismatchWarning]
    assert mismatches == ["GradientCheck at step 4", "GradientCheck at step 13"]

    # The sigmoid sits between layers.0 and layers.1: only the gradient of layers.0 passes through it.
    [(step, error), *_] = logger.values("gradcheck/layers.0")
    assert step == 4 and error == pytest.approx(1.0)  # |2g - g| / |g|
    assert all(error < 1e-12 for _, error in logger.values("gradcheck/layers.1"))
    assert check.last_errors["layers.0"] > check.threshold


def test_a_net_without_twin_is_skipped_with_one_warning():
    torch.manual_seed(0)
    no_twin = torch.nn.Sequential(torch.nn.Linear(2, 3))
    with pytest.warns(UserWarning, match="offers no twin") as record:
        fit([GradientCheck(every_n_steps=1)], no_twin, spirals())
    assert sum("offers no twin" in str(w.message) for w in record) == 1


# --------------------------------------------------------------------------- pieces


@pytest.mark.parametrize("shape, expected", [
    ((5, 1, 28, 28), (5, 28, 28)),
    ((5, 3, 8, 8), (5, 8, 8, 3)),
    ((5, 784), (5, 28, 28)),
    ((5, 12, 12), (5, 12, 12)),
    ((5, 2), None),
])
def test_as_images(shape, expected):
    images = as_images(torch.rand(shape))
    assert (images if images is None else tuple(images.shape)) == expected


@pytest.mark.parametrize("make", [lambda: GradientCheck(every_n_steps=0), lambda: GradientCheck(threshold=0),
                                  lambda: GradientCheck(max_examples=0), lambda: GradientFlow(every_n_steps=-1),
                                  lambda: MisclassifiedExamples(n=0), lambda: MisclassifiedExamples(every_n_epochs=0)])
def test_bad_arguments_are_refused(make):
    with pytest.raises(ValueError, match="must be"):
        make()
