"""A run's row in TensorBoard's HPARAMS tab: the hyperparameters that tell runs apart, and as metrics
the test accuracy and loss of the weights tested and the latest validation accuracy.

Written once, when a run folder starts (a resumed run keeps its row). TensorBoard's HPARAMS tab reads
each metric's value from the run's own scalars of that tag (the last point), so no value is written
here: no placeholder, and test/acc fills in when the test has run.

Three details of TensorBoard (2.21) shape it:
- it takes the list of columns from the experiment summary of one run, picked arbitrarily, so every
  run writes the same keys: the network is one string (``MLP(sizes=[784, 30, 10], activation=sigmoid)``:
  its class and the arguments that differ from the class's defaults), whatever its class;
- it sorts the columns by (not differs, name) and ticks the first five, so the five of HPARAMS_SHOWN
  are marked ``differs`` to be the ones shown;
- a bool is an int to it (``download: True`` would read 1.0), so bools are written as "true"/"false".
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard.summary import hparams as hparams_summaries

HPARAMS_SHOWN = ("batch_size", "loss", "lr", "momentum", "net")  # the tab ticks five columns at first
METRICS = ("test/acc", "test/loss", "val/acc")


def run_hparams(config, trainer) -> dict[str, Any]:
    """The hyperparameters of the run that ``config`` (LightningCLI's parsed config) describes."""
    data = config.data.init_args if "init_args" in config.data else config.data  # a language model's: class_path
    return {
        "net": describe_net(config.model.net),
        **{key: config.model[key] for key in ("loss", "optimizer", "lr", "momentum", "weight_decay")
           if key in config.model},
        **{key: data[key] for key in ("dataset", "path", "digits", "block_size", "batch_size", "val_size",
                                      "chunk_size") if key in data},
        "max_epochs": trainer.max_epochs,
        "precision": str(trainer.precision),
        "seed": config.seed_everything,
    }


def write_hparams(trainer, config) -> None:
    """The run's HPARAMS row (rank 0, TensorBoard only); its hyperparameters also go to hparams.yaml."""
    if not isinstance(trainer.logger, TensorBoardLogger) or not trainer.is_global_zero:
        return  # e.g. fast_dev_run, which puts a DummyLogger in the TensorBoardLogger's place
    params = run_hparams(config, trainer)
    experiment, session_start, session_end = hparams_summaries({k: readable(v) for k, v in params.items()},
                                                               dict.fromkeys(METRICS, 0.0))  # names only are kept
    content = experiment.value[0].metadata.plugin_data
    data = HParamsPluginData.FromString(content.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in HPARAMS_SHOWN
    content.content = data.SerializeToString()
    writer = trainer.logger.experiment._get_file_writer()
    for summary in (experiment, session_start, session_end):
        writer.add_summary(summary)
    trainer.logger.log_hyperparams(params, metrics={})  # hparams.yaml; metrics={}: no summary, no hp_metric


def readable(value) -> int | float | str:
    """A value as the HPARAMS tab shows it: numbers and strings as they are, the rest as text."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "null"
    return value if isinstance(value, (int, float, str)) else str(value)


def describe_net(net) -> str:
    """'MLP(sizes=[784, 512, 256, 10])': the network's class and its arguments that differ from the defaults."""
    module, _, name = net.class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    defaults = {key: parameter.default for key, parameter in inspect.signature(cls).parameters.items()}
    given = {key: value for key, value in vars(net.init_args).items() if defaults.get(key, inspect.Parameter.empty)
             != value}
    return f"{name}({', '.join(f'{key}={value}' for key, value in given.items())})"
