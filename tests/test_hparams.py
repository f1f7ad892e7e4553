"""What a run writes for TensorBoard (handgrad.hparams and the tags of a run): every scalar against optimiser
steps, no placeholder hp_metric, and an HPARAMS row of the run's own hyperparameters and metrics."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from conftest import REPO
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from test_cli import SPIRALS, events, scalars

from handgrad import cli
from handgrad.hparams import HPARAMS_SHOWN, METRICS, describe_net, readable

STEPS_PER_EPOCH = 79  # spirals: 2500 training examples at batch 32


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two epochs of spirals.yaml (GradientCheck and GradientFlow on), histograms every 50 steps: its events."""
    workdir = tmp_path_factory.mktemp("tensorboard")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(workdir)
        args = ["--config", SPIRALS, "--trainer.max_epochs", "2", "--model.histogram_every_n_steps", "50"]
        assert cli.main(args) == 0
    return events(workdir / "logs" / "spirals" / "version_0")


def hparams_record(log, tag: str) -> HParamsPluginData:
    return HParamsPluginData.FromString(log.PluginTagToContent("hparams")[f"_hparams_/{tag}"])


def test_every_scalar_is_plotted_against_optimiser_steps(run):
    tags = run.Tags()["scalars"]
    assert "hp_metric" not in tags and "epoch" not in tags  # no placeholder, no chunk-counted epoch
    chunk_ends = {step for step, _ in scalars(run, "train/loss")}
    assert max(chunk_ends) == 2 * STEPS_PER_EPOCH
    for tag in tags:
        steps = {step for step, _ in scalars(run, tag)}
        assert steps <= chunk_ends, (tag, steps - chunk_ends)  # logged after a chunk: at its last step
    assert [step for step, _ in scalars(run, "val/acc")] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    epochs = scalars(run, "train/epoch")  # 1, 1, 1, 1, 2, 2, 2, 2: a chunk's epoch, counted from 1
    assert epochs[0] == (scalars(run, "train/loss")[0][0], 1.0) and epochs[-1] == (2 * STEPS_PER_EPOCH, 2.0)


def test_the_test_is_plotted_at_the_step_of_the_checkpoint_it_tested(run):
    (step, accuracy), = scalars(run, "test/acc")
    best = max(scalars(run, "val/acc"), key=lambda point: point[1])
    assert step == best[0] and 0.6 < accuracy <= 1  # chance: 1/3


def test_the_hparams_row_holds_the_runs_hyperparameters_and_metrics(run):
    experiment = hparams_record(run, "experiment").experiment
    names = [info.name for info in experiment.hparam_infos]
    assert {"net", "loss", "lr", "momentum", "weight_decay", "batch_size", "dataset", "max_epochs", "seed"} <= set(
        names)
    assert {info.name for info in experiment.hparam_infos if info.differs} == set(HPARAMS_SHOWN)  # ticked first
    assert [metric.name.tag for metric in experiment.metric_infos] == list(METRICS)
    assert not any(name.startswith("_") or "/" in name for name in names)  # no _instantiator, no net/init_args/...

    values = dict(hparams_record(run, "session_start_info").session_start_info.hparams.items())
    assert values["lr"].number_value == 0.1 and values["momentum"].number_value == 0.9
    assert values["batch_size"].number_value == 32 and values["max_epochs"].number_value == 2
    assert values["loss"].string_value == "cross_entropy" and values["dataset"].string_value == "spirals"
    assert values["net"].string_value == "MLP(sizes=[2, 100, 3])"
    assert run.Scalars("test/acc")  # the value the row shows for test/acc: the run's last test/acc point


def test_a_network_is_named_by_its_class_and_the_arguments_that_differ_from_its_defaults():
    net = SimpleNamespace(class_path="handgrad.models.MLP",
                          init_args=SimpleNamespace(sizes=[784, 30, 10], activation="sigmoid", dropout=0.0))
    assert describe_net(net) == "MLP(sizes=[784, 30, 10], activation=sigmoid)"
    lenet = SimpleNamespace(class_path="handgrad.models.LeNet5", init_args=SimpleNamespace(batch_norm=True))
    assert describe_net(lenet) == "LeNet5(batch_norm=True)"


def test_values_are_written_as_the_tab_shows_them():
    assert [readable(v) for v in (True, None, 0.5, 64, "full", [1, 2])] == ["true", "null", 0.5, 64, "full", "[1, 2]"]


def documented_tags() -> list[re.Pattern]:
    """The tags of docs/tensorboard.md's table, <layer> and <param> read as any name."""
    table = (REPO / "docs" / "tensorboard.md").read_text()
    tags = re.findall(r"^\| `([^`]+)` \|", table, re.MULTILINE)  # one tag a row, in the first column
    return [re.compile(re.escape(tag).replace(r"<layer>", r"[\w.]+").replace(r"<param>", r"[\w.]+")) for tag in tags]


def test_every_tag_a_run_writes_is_in_the_docs_table(run):
    patterns = documented_tags()
    written = run.Tags()["scalars"] + run.Tags()["histograms"]
    assert written and all(any(p.fullmatch(tag) for p in patterns) for tag in written), [
        tag for tag in written if not any(p.fullmatch(tag) for p in patterns)]
