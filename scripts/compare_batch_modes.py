"""Full-batch, mini-batch and stochastic gradient descent, side by side.

    python scripts/compare_batch_modes.py --data-root data          # MNIST -> logs/compare_batch_modes/batch_modes.png
    python scripts/compare_batch_modes.py --quick                   # 2-D spirals, no files, seconds
    python scripts/compare_batch_modes.py --data-root data --out docs/batch_modes.png   # the README's figure
    tensorboard --logdir logs/compare_batch_modes

The same network (784-100-10, ReLU, softmax cross-entropy: the network of configs/full_batch.yaml,
mini_batch.yaml and sgd.yaml) starts from the same initial weights in each regime and sees the
same examples, the same number of times:

    full-batch   one update per epoch, from the gradient of all the examples
    mini-batch   one update per --batch-size examples
    stochastic   one update per example

Plain gradient descent, w <- w - lr * grad (handgrad.optim.SGD, no momentum), with a learning
rate per regime, each about the best of a small sweep on the default MNIST run (final loss after
10 epochs or, for batch 1, 2 epochs):

    --lr-sgd 0.01    batch 1     (0.003 learns slower; 0.1 diverges)
    --lr-mini 0.3    batch 32    (~32 x 0.01: the same step per example seen as SGD's; 0.03 and
                                  0.1 learn slower, 0.6 a little faster)
    --lr-full 0.5    batch n     (1.0 already oscillates: the largest step the curvature allows,
                                  far below n x 0.01, so full-batch cannot make up for its few updates)

About a dozen times per decade of updates, and at every epoch's end, the training loss over *all*
the examples is measured at the current weights: the curves compare the same quantity. The clock
stops while it is measured, so it counts only training (shuffling, forward, backward, update).
Each regime is a TensorBoard run, logs/compare_batch_modes/<regime> (replaced at each run):
train/loss at x = examples seen, its wall time = the training seconds so far (TensorBoard's
"Relative" x-axis shows them). The PNG has two panels: the loss against examples seen and
against those seconds.

Reference: Nielsen, "Neural Networks and Deep Learning", ch. 1 (stochastic gradient descent
with mini-batches); Goodfellow, Bengio and Courville, "Deep Learning", sec. 8.1.3 (batch and
minibatch algorithms: the standard error of a mean of n gradients falls only as 1 / sqrt(n)).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from handgrad.callbacks import fresh_run  # noqa: E402
from handgrad.data import DataModule, spirals  # noqa: E402
from handgrad.models import MLP  # noqa: E402
from handgrad.optim import SGD  # noqa: E402
from handgrad.steps import loss_function  # noqa: E402


@dataclass
class Regime:
    name: str  # the TensorBoard run's folder and the plot's label
    batch_size: int  # examples per update (full-batch: all of them)
    lr: float


@dataclass
class Curve:
    """The training loss over all the examples, measured every so many examples seen."""

    regime: Regime
    examples: list[int] = field(default_factory=list)  # examples seen
    seconds: list[float] = field(default_factory=list)  # training seconds (steps only) so far
    loss: list[float] = field(default_factory=list)
    updates: int = 0


def load(args) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """x (n, D), y (n,) and the network's sizes: --examples MNIST training images, or spirals for --quick."""
    if args.quick:
        x, y = spirals(args.examples // 3 + 1, seed=args.seed)
        sizes = [2, 64, 3]
    else:
        x, y = DataModule("mnist", root=args.data_root, download=False).load(train=True)
        x, sizes = x.flatten(1), [784, 100, 10]
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed))[:args.examples]
    return x[keep], y[keep], sizes


def measurement_points(total_updates: int, updates_per_epoch: int, per_decade: int = 12) -> set[int]:
    """After which updates to measure: log-spaced (``per_decade`` a decade, for the log-scaled axes) and at
    every epoch's end."""
    log_spaced = {round(10 ** (i / per_decade)) for i in range(int(per_decade * math.log10(total_updates)) + 1)}
    return log_spaced | set(range(updates_per_epoch, total_updates + 1, updates_per_epoch))


def train(net: torch.nn.Module, regime: Regime, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int,
          writer: SummaryWriter) -> Curve:
    """``epochs`` passes over (x, y) in mini-batches of regime.batch_size, measuring the loss now and then."""
    cost = loss_function("cross_entropy")
    optimizer = SGD(net.parameters(), lr=regime.lr)
    n, batch_size = len(y), regime.batch_size
    updates_per_epoch = -(-n // batch_size)
    measure_after = measurement_points(epochs * updates_per_epoch, updates_per_epoch)
    curve, order_stream, started = Curve(regime), torch.Generator().manual_seed(seed), time.time()

    def measure(seen: int, seconds: float) -> None:
        with torch.no_grad():
            loss = float(cost(net(x), y))
        curve.examples.append(seen), curve.seconds.append(seconds), curve.loss.append(loss)
        writer.add_scalar("train/loss", loss, global_step=seen, walltime=started + seconds)

    seen, seconds = 0, 0.0
    measure(seen, seconds)
    tick = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n, generator=order_stream) if batch_size < n else torch.arange(n)
        xs, ys = x[order], y[order]  # (n, D), (n,): this epoch's order
        for start in range(0, n, batch_size):
            loss = cost(net(xs[start:start + batch_size]), ys[start:start + batch_size])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            curve.updates += 1
            seen += len(ys[start:start + batch_size])
            if curve.updates in measure_after:  # stop the clock while the loss is measured
                seconds += time.perf_counter() - tick
                measure(seen, seconds)
                tick = time.perf_counter()
    return curve


def plot(curves: list[Curve], title: str, out: Path) -> None:
    """Two panels, three curves each: the loss against examples seen and against training seconds."""
    fig, (by_examples, by_seconds) = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for curve in curves:
        regime = curve.regime
        label = f"{regime.name} (batch {regime.batch_size}, lr {regime.lr:g}, {curve.updates} updates)"
        style = dict(marker="o" if len(curve.loss) < 30 else None, ms=3, label=label)
        by_examples.plot(curve.examples[1:], curve.loss[1:], **style)  # log axes: the start (x = 0) is the dotted line
        by_seconds.plot(curve.seconds[1:], curve.loss[1:], **style)
    for ax in (by_examples, by_seconds):
        ax.axhline(curves[0].loss[0], color="grey", ls=":", lw=1, label="loss at the start (every regime)")
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
    by_examples.set(xlabel="examples seen", ylabel="training loss (cross-entropy over all examples)")
    by_seconds.set(xlabel="wall-clock seconds spent in training steps")
    by_examples.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def table(curves: list[Curve]) -> str:
    lines = ["| regime | batch | lr | updates | final train loss | wall s | ms / update | us / example |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in curves:
        lines.append(f"| {c.regime.name} | {c.regime.batch_size} | {c.regime.lr:g} | {c.updates} | {c.loss[-1]:.4f} "
                     f"| {c.seconds[-1]:.2f} | {1e3 * c.seconds[-1] / c.updates:.3f} "
                     f"| {1e6 * c.seconds[-1] / c.examples[-1]:.1f} |")
    return "\n".join(lines)



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data", help="folder holding MNIST/raw/ (torchvision's layout)")
    parser.add_argument("--examples", type=int, default=None,
                        help="training examples, a seeded random subset (default: 10000; --quick: 600)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="passes over them, the same in every regime (default: 10; --quick: 3)")
    parser.add_argument("--batch-size", type=int, default=32, help="the mini-batch regime's batch")
    parser.add_argument("--lr-full", type=float, default=0.5, help="full-batch learning rate")
    parser.add_argument("--lr-mini", type=float, default=0.3, help="mini-batch learning rate")
    parser.add_argument("--lr-sgd", type=float, default=0.01, help="stochastic (batch 1) learning rate")
    parser.add_argument("--seed", type=int, default=0, help="initial weights, the subset and every epoch's order")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the README's timings: 1)")
    parser.add_argument("--out", default="logs/compare_batch_modes/batch_modes.png",
                        help="the PNG to write (docs/batch_modes.png is the one the README shows)")
    parser.add_argument("--logdir", default="logs/compare_batch_modes", help="one TensorBoard run per regime under it")
    parser.add_argument("--quick", action="store_true", help="2-D spirals (no files), for tests and a first look")
    args = parser.parse_args(argv)
    args.examples = args.examples or (600 if args.quick else 10000)
    args.epochs = args.epochs or (3 if args.quick else 10)
    torch.set_num_threads(args.threads)

    x, y, sizes = load(args)
    torch.manual_seed(args.seed)
    initial = MLP(sizes, activation="relu").state_dict()  # every regime starts here
    regimes = [Regime("full-batch", len(y), args.lr_full), Regime("mini-batch", args.batch_size, args.lr_mini),
               Regime("stochastic", 1, args.lr_sgd)]

    curves = []
    for regime in regimes:
        net = MLP(sizes, activation="relu")
        net.load_state_dict(copy.deepcopy(initial))
        with fresh_run(Path(args.logdir), regime.name) as writer:
            curves.append(train(net, regime, x, y, args.epochs, args.seed, writer))
        print(f"{regime.name}: {curves[-1].updates} updates, {curves[-1].seconds[-1]:.2f} s", flush=True)

    data, threads = ("spirals" if args.quick else "MNIST"), torch.get_num_threads()
    plot(curves, f"{data}, {len(y)} examples x {args.epochs} epochs, {'-'.join(map(str, sizes))} ReLU net, "
         f"the same initial weights; {threads} CPU thread{'s' if threads > 1 else ''}", Path(args.out))
    print(table(curves))
    print(f"wrote {args.out} and TensorBoard runs under {args.logdir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
