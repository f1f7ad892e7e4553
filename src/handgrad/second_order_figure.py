"""The edge-of-stability figure of a training run, drawn from its TensorBoard events.

    python scripts/plot_edge_of_stability.py logs/edge_of_stability/version_0          # -> that folder
    python scripts/plot_edge_of_stability.py RUN --out docs/edge_of_stability.png     # the docs' figure

Top: the training loss against optimiser steps (``train/loss``). Bottom: the sharpness
(``second_order/sharpness``, handgrad.second_order.SecondOrder) with the threshold the optimiser
becomes unstable at (``second_order/stability_threshold``: 2 / lr for plain gradient descent; SGD
only) as a dashed line. Cohen et al. (2021), figure 1, draw the same two panels.

It also prints what the callback cost in that run (``cost_summary``): the median wall time of a sharpness
estimate for each number of Hessian-vector products it took, of the per-sample gradient norms, and of
a training step (the gap between consecutive ``train/loss`` events at steps the callback skipped).
"""

from __future__ import annotations

import argparse
import statistics
from itertools import pairwise
from pathlib import Path

from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

LOSS, SHARPNESS, THRESHOLD = "train/loss", "second_order/sharpness", "second_order/stability_threshold"
DEFAULT_LOGS = Path("logs") / "edge_of_stability"


def read_scalars(run: str | Path, tags: tuple[str, ...] = (LOSS, SHARPNESS)) -> dict[str, tuple[list, list]]:
    """{tag: (steps, values)} for each of ``tags`` in the run folder's event files, and the threshold's if
    logged (SGD only), sorted by step (a resumed run writes a second file). A ValueError names a missing
    folder or tag."""
    if not Path(run).is_dir():
        raise ValueError(f"{run}: no such run folder; pass a folder holding events.out.tfevents.* files, "
                         f"e.g. {DEFAULT_LOGS / 'version_0'}")
    events = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload()
    found = events.Tags()["scalars"]
    missing = [tag for tag in tags if tag not in found]
    if missing:
        raise ValueError(f"{run} has no {', '.join(missing)} scalars; train with the SecondOrder callback on, e.g. "
                         "--config edge_of_stability")
    series = {}
    for tag in (*tags, THRESHOLD) if THRESHOLD in found else tags:
        points = sorted({e.step: e.value for e in events.Scalars(tag)}.items())
        series[tag] = ([step for step, _ in points], [value for _, value in points])
    return series


def cost_summary(run: str | Path) -> dict[str, float]:
    """What the callback cost in a run, from its events. Milliseconds unless said otherwise:

        step         a training step: the median gap between consecutive train/loss events one step
                     apart, the steps the callback acted on left out
        sharpness    a sharpness estimate, median over the calls; ``products``: their median length
        graph, hvp   the least-squares line through (products, ms) of every call: building the
                     gradient with its graph (forward and first backward), and each product after it
        per_sample   the per-sample gradient norms, median over the calls
    """
    events = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload()
    found = set(events.Tags()["scalars"])

    def values(tag: str) -> list[float]:
        return [e.value for e in events.Scalars(tag)] if tag in found else []

    checked = {e.step for e in events.Scalars(SHARPNESS)} if SHARPNESS in found else set()
    loss = sorted((e.step, e.wall_time) for e in events.Scalars(LOSS)) if LOSS in found else []
    gaps = [t1 - t0 for (s0, t0), (s1, t1) in pairwise(loss) if s1 == s0 + 1 and s1 not in checked]
    products, seconds = values("second_order/hessian_vector_products"), values("second_order/sharpness_seconds")
    per_sample = values("second_order/per_sample_seconds")
    costs = {}
    if gaps:
        costs["step"] = 1000 * statistics.median(gaps)
    if seconds:
        costs["sharpness"] = 1000 * statistics.median(seconds)
        costs["products"] = statistics.median(products)
    if len(set(products)) > 1:
        slope, intercept = statistics.linear_regression(products, seconds)
        costs["graph"], costs["hvp"] = 1000 * intercept, 1000 * slope
    if per_sample:
        costs["per_sample"] = 1000 * statistics.median(per_sample)
    return costs


def edge_of_stability_figure(series: dict[str, tuple[list, list]], title: str = "") -> Figure:
    """Two panels sharing the step axis: the training loss, and the sharpness with the threshold."""
    figure = Figure(figsize=(7, 6), dpi=110, layout="constrained")
    loss_ax, sharp_ax = figure.subplots(2, 1, sharex=True)
    loss_ax.plot(*series[LOSS], color="tab:blue", linewidth=1)
    loss_ax.set_ylabel("training loss")
    loss_ax.set_yscale("log")
    loss_ax.grid(alpha=0.3)
    sharp_ax.plot(*series[SHARPNESS], color="tab:red", linewidth=1.2, marker=".", markersize=3,
                  label="sharpness: largest Hessian eigenvalue")
    steps, threshold = series.get(THRESHOLD, ([], []))
    if threshold:
        sharp_ax.plot(steps, threshold, color="black", linestyle="--", linewidth=1,
                      label=f"stability threshold 2/lr = {threshold[-1]:g}" if len(set(threshold)) == 1
                      else "stability threshold 2(1+momentum)/lr")
    sharp_ax.set_ylim(0, 1.25 * max(series[SHARPNESS][1] + threshold))
    sharp_ax.set_xlabel("optimiser step")
    sharp_ax.set_ylabel("sharpness")
    sharp_ax.legend(loc="lower right")
    sharp_ax.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    return figure


def latest_run(logs: Path = DEFAULT_LOGS) -> Path:
    """The newest version_* folder under ``logs`` (a ValueError if there is none)."""
    runs = sorted(logs.glob("version_*"), key=lambda path: path.stat().st_mtime)
    if not runs:
        raise ValueError(f"{logs} holds no version_* run; train first: python scripts/train.py --config "
                         "edge_of_stability, or pass the run folder")
    return runs[-1]


def main(argv: list[str] | None = None) -> Path:
    """Draw the figure of a run (the newest under logs/edge_of_stability by default); returns the PNG's path."""
    parser = argparse.ArgumentParser(description="Sharpness against 2/lr, and the loss, of a run with SecondOrder on.")
    parser.add_argument("run", nargs="?", help=f"the run folder (default: the newest under {DEFAULT_LOGS})")
    parser.add_argument("--out", help="the PNG to write (default: RUN/edge_of_stability.png)")
    parser.add_argument("--title", default="", help="a title above the panels")
    args = parser.parse_args(argv)
    try:
        run = Path(args.run) if args.run else latest_run()
        series = read_scalars(run)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")  # one line, as handgrad-train prints its errors
    out = Path(args.out) if args.out else run / "edge_of_stability.png"
    figure = edge_of_stability_figure(series, args.title)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    print(cost_table(cost_summary(run)))
    return out


def cost_table(costs: dict[str, float]) -> str:
    """``cost_summary`` as lines of text, each cost also in training steps."""
    labels = {"step": "a training step", "sharpness": f"a sharpness estimate ({costs.get('products', 0):g} products, "
              "median)", "graph": "  of which the gradient with its graph", "hvp": "  and each Hessian-vector product",
              "per_sample": "the per-sample gradient norms"}
    step = costs.get("step")
    return "\n".join(f"{label:<46} {costs[key]:8.1f} ms" + (f" = {costs[key] / step:5.1f} steps" if step else "")
                     for key, label in labels.items() if key in costs)
