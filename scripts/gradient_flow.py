"""The vanishing gradient, measured with our own backward: a deep sigmoid network against ReLU.

    python scripts/gradient_flow.py --data-root data      # MNIST -> logs/gradient_flow/gradient_flow.png
    python scripts/gradient_flow.py --quick               # 2-D spirals, no files, seconds
    python scripts/gradient_flow.py --data-root data --out docs/gradient_flow.png   # the figure docs/ shows
    tensorboard --logdir logs/gradient_flow

Two networks 784-30-30-30-30-30-30-10 (six hidden layers), one with sigmoid units and one with
ReLU, start from the same weights (Nielsen's: weights ~ N(0, 1/fan_in), biases ~ N(0, 1)), end
in logits for softmax cross-entropy, and train for one epoch on the same 50,000 MNIST training
images in the same order: plain mini-batch SGD, batch 10, lr 0.1 (Nielsen's chapter 5 setting).

At initialisation and as the epoch goes on, the cost's gradient over a fixed probe of 1,000
training images is computed by handgrad's hand-written backward (the same call training makes),
and for each layer l the norm ||dC/dW_l|| of its weight gradient is recorded: in the PNG (top:
the norm against the layer, one line per moment; bottom: each layer's norm against the step)
and in TensorBoard, one run per network under logs/gradient_flow/<activation>
(grad/layers.<l>/norm at x = the step).

Why the sigmoid network's first layers barely move: backpropagation multiplies the error by
W_l^T and by sigma'(z_l) at every layer it crosses (Nielsen's BP2), and sigma' <= 1/4, so the
gradient shrinks geometrically from the output back to the input. ReLU's derivative is 1 on
every active unit, so the gradient reaches the first layers at a similar size.

Reference: Nielsen, "Neural Networks and Deep Learning", ch. 5 ("Why are deep neural networks
hard to train?"); Glorot and Bengio (2010), "Understanding the difficulty of training deep
feedforward neural networks".
"""

from __future__ import annotations

import argparse
import sys
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

ACTIVATIONS = {"sigmoid": "sigmoid", "relu": "ReLU"}  # name -> label in the PNG


def load(args) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, D), y (n,): --examples MNIST training images (a seeded random subset), or spirals for --quick."""
    if args.quick:
        x, y = spirals(args.examples // 3 + 1, seed=args.seed)
    else:
        x, y = DataModule("mnist", root=args.data_root, download=False).load(train=True)
        x = x.flatten(1)  # (60000, 784)
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed))[:args.examples]
    return x[keep], y[keep]


def weight_gradient_norms(net: MLP, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """||dC/dW_l|| for each layer l, input side first, by the hand-written backward (C: cross-entropy over x)."""
    net.zero_grad(set_to_none=True)
    loss_function("cross_entropy")(net(x), y).backward()
    norms = [float(layer.weight.grad.norm()) for layer in net.layers]
    net.zero_grad(set_to_none=True)
    return norms


def first_epoch(net: MLP, x: torch.Tensor, y: torch.Tensor, order: torch.Tensor, probe: int, batch_size: int,
                lr: float, log_every: int, writer: SummaryWriter) -> dict[int, list[float]]:
    """One epoch of plain SGD. Returns {step: per-layer weight-gradient norms on the probe}, measured at
    the start, every ``log_every`` steps and at the end."""
    cost, optimizer = loss_function("cross_entropy"), SGD(net.parameters(), lr=lr)
    x_probe, y_probe = x[:probe], y[:probe]
    steps = -(-len(y) // batch_size)
    norms: dict[int, list[float]] = {}

    def record(step: int) -> None:
        norms[step] = weight_gradient_norms(net, x_probe, y_probe)
        for layer, norm in enumerate(norms[step]):
            writer.add_scalar(f"grad/layers.{layer}/norm", norm, step)

    record(0)
    xs, ys = x[order], y[order]  # (n, D), (n,)
    for step, start in enumerate(range(0, len(y), batch_size), start=1):
        loss = cost(net(xs[start:start + batch_size]), ys[start:start + batch_size])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % log_every == 0 or step == steps:
            writer.add_scalar("train/loss", loss.item(), step)
            record(step)
    return norms


def moments(steps: int) -> list[int]:
    """The steps the top panels show: initialisation, then 10, 100, 1000, ... and the epoch's end."""
    shown, step = [0], 10
    while step < steps:
        shown.append(step)
        step *= 10
    return shown + [steps]


def plot(norms: dict[str, dict[int, list[float]]], title: str, out: Path) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharey=True)
    for column, activation in enumerate(ACTIVATIONS):
        by_step = norms[activation]
        steps = sorted(by_step)
        layers = range(1, len(by_step[0]) + 1)
        top, bottom = axes[0, column], axes[1, column]
        shown = [s for s in moments(steps[-1]) if s in by_step]
        for i, step in enumerate(shown):
            colour = plt.cm.viridis(i / max(1, len(shown) - 1))
            top.plot(layers, by_step[step], marker="o", color=colour,
                     label="at initialisation" if step == 0 else f"after {step} steps")
        top.set(title=f"{ACTIVATIONS[activation]}: gradient norm per layer", xlabel="layer (1 = nearest the input)",
                xticks=list(layers), yscale="log")
        for layer in layers:
            colour = plt.cm.plasma((layer - 1) / max(1, len(layers) - 1) * 0.85)
            bottom.plot(steps, [by_step[s][layer - 1] for s in steps], color=colour, label=f"layer {layer}")
        bottom.set(title=f"{ACTIVATIONS[activation]}: during the first epoch", xlabel="optimiser step", yscale="log")
        top.legend(fontsize=8)
        bottom.legend(fontsize=7, ncol=2)
        for ax in (top, bottom):
            ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel("||dC/dW|| (hand-written backward)")
    axes[1, 0].set_ylabel("||dC/dW|| (hand-written backward)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data", help="folder holding MNIST/raw/ (torchvision's layout)")
    parser.add_argument("--examples", type=int, default=None, help="training images in the epoch (default: 50000; "
                        "--quick: 600)")
    parser.add_argument("--probe", type=int, default=1000, help="images the gradient norms are measured on")
    parser.add_argument("--hidden", type=int, default=6, help="hidden layers")
    parser.add_argument("--width", type=int, default=30, help="units per hidden layer")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--log-every", type=int, default=50, help="steps between two measurements")
    parser.add_argument("--seed", type=int, default=0, help="the initial weights and the epoch's order")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default="logs/gradient_flow/gradient_flow.png",
                        help="the PNG to write (docs/gradient_flow.png is the one docs/backprop.md shows)")
    parser.add_argument("--logdir", default="logs/gradient_flow", help="one TensorBoard run per network under it")
    parser.add_argument("--quick", action="store_true", help="2-D spirals (no files), for tests and a first look")
    args = parser.parse_args(argv)
    args.examples = args.examples or (600 if args.quick else 50000)
    torch.set_num_threads(args.threads)

    x, y = load(args)
    sizes = [x.shape[1], *[args.width] * args.hidden, int(y.max()) + 1]
    torch.manual_seed(args.seed)
    initial = MLP(sizes, activation="sigmoid", init="nielsen_scaled").state_dict()  # both networks start here
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed))

    norms = {}
    for activation in ACTIVATIONS:
        net = MLP(sizes, activation=activation)
        net.load_state_dict(initial)
        with fresh_run(Path(args.logdir), activation) as writer:
            norms[activation] = first_epoch(net, x, y, order, args.probe, args.batch_size, args.lr, args.log_every,
                                            writer)

    data = "spirals" if args.quick else "MNIST"
    plot(norms, f"{data}: {'-'.join(map(str, sizes))}, the same initial weights; plain SGD, batch "
         f"{args.batch_size}, lr {args.lr:g}; gradients over {min(args.probe, len(y))} training images",
         Path(args.out))
    print("| network | when | " + " | ".join(f"layer {i + 1}" for i in range(len(sizes) - 1)) + " | layer 1 / last |")
    print("|---|---|" + "---:|" * len(sizes))
    for activation in ACTIVATIONS:
        for step in (0, max(norms[activation])):
            row = norms[activation][step]
            print(f"| {activation} | {'init' if step == 0 else f'step {step}'} | "
                  + " | ".join(f"{n:.1e}" for n in row) + f" | {row[0] / row[-1]:.1e} |")
    print(f"wrote {args.out} and TensorBoard runs under {args.logdir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
