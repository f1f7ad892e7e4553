"""What the diagnostic callbacks cost a training run: the seconds spent in their hooks over the
seconds of the whole fit.

    python scripts/callback_cost.py --data-root data               # four configs, 2 epochs each (docs/backprop.md)
    python scripts/callback_cost.py --configs spirals --epochs 1   # seconds, no data set needed

Each config trains as ``handgrad-train --config <name>`` trains it (TensorBoard
logging, validation every epoch, the config's callbacks with its settings), written to a
temporary folder. Every hook that a callback of handgrad.callbacks defines is timed (wall clock)
around the call Lightning makes, and each callback's share is its hooks' seconds divided by the
seconds of ``trainer.fit``. Printed as a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable

import lightning as L

from handgrad import cli
from handgrad.configfiles import config_dir, packaged_configs

CONFIGS = ["nielsen_ch1", "mnist_mlp", "mlp_regularized", "lenet5"]
DIAGNOSTICS = ["GradientCheck", "GradientFlow", "MisclassifiedExamples"]  # the columns, in handgrad.callbacks


def time_hooks(callback: L.Callback, seconds: dict[str, float]) -> None:
    """Replace each hook ``callback``'s class defines (overriding L.Callback's) by a timed call of it;
    the time adds up in seconds[class name]. Lightning looks hooks up on the instance, so it calls these."""
    name = type(callback).__name__
    for hook in (h for h in dir(L.Callback) if h.startswith("on_")):
        if getattr(type(callback), hook) is getattr(L.Callback, hook):
            continue  # not defined by this callback: Lightning's empty hook

        setattr(callback, hook, timed_call(getattr(callback, hook), seconds, name))


def timed_call(hook: Callable, seconds: dict[str, float], name: str) -> Callable:
    """``hook`` that adds the time each call takes to seconds[name]."""
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return hook(*args, **kwargs)
        finally:
            seconds[name] += time.perf_counter() - start
    return timed


def measure(config: str, epochs: int, data_root: str) -> dict:
    """One fit of ``config``: each diagnostic callback's share of its time, and its every_n_steps."""
    seconds: dict[str, float] = defaultdict(float)
    with tempfile.TemporaryDirectory() as log_dir, contextlib.redirect_stdout(sys.stderr):  # the epoch lines
        run = cli.build(["--config", str(config_dir() / f"{config}.yaml"), "--data.root", data_root,
                         "--data.download", "false", "--trainer.max_epochs", str(epochs),
                         "--trainer.enable_model_summary", "false", "--trainer.logger.init_args.save_dir", log_dir])
        callbacks = run.trainer.callbacks  # type: ignore[attr-defined]  # set in Trainer.__init__
        diagnostics = [c for c in callbacks if type(c).__name__ in DIAGNOSTICS]
        for callback in diagnostics:
            time_hooks(callback, seconds)
        start = time.perf_counter()
        run.trainer.fit(run.model, datamodule=run.datamodule)
        fit = time.perf_counter() - start
    every = {type(c).__name__: getattr(c, "every_n_steps", None) for c in diagnostics}
    return dict(config=config, fit_s=fit, steps=run.trainer.global_step, every_n_steps=every,
                share={name: seconds[name] / fit for name in every})


def table(rows: list[dict]) -> str:
    lines = ["| config | epochs | optimiser steps | fit | N | " + " | ".join(DIAGNOSTICS) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(DIAGNOSTICS)]
    for row in rows:
        n = sorted({v for v in row["every_n_steps"].values() if v})
        shares = [f"{100 * row['share'][d]:.1f}%" if d in row["share"] else "off" for d in DIAGNOSTICS]
        lines.append(f"| {row['config']} | {row['epochs']} | {row['steps']:,} | {row['fit_s']:.1f} s | "
                     f"{', '.join(map(str, n)) or '-'} | " + " | ".join(shares) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = packaged_configs()
    parser.add_argument("--configs", nargs="+", default=CONFIGS, choices=names, metavar="NAME",
                        help=f"config names, of {', '.join(names)} (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data-root", default="data", help="the folder holding MNIST/raw/")
    args = parser.parse_args(argv)
    rows = []
    for config in args.configs:
        rows.append({**measure(config, args.epochs, args.data_root), "epochs": args.epochs})
        print(f"{config}: {rows[-1]['fit_s']:.1f} s", file=sys.stderr)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
