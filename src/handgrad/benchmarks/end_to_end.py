"""Row group 3 (CPU): epochs of nielsen_ch1 run as ``handgrad-train --config nielsen_ch1`` runs them
(Lightning, TensorBoard logging, histograms and the config's callbacks; validation off) against the plain
PyTorch loop (torch.nn twin, torch.optim.SGD) and steps.bare_epoch over the same tensors in the same order:
us per example at batch 10 (50,000 examples) and batch 1 (5,000), and the ratio Lightning / loop.
Needs MNIST under --data-root.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
from typing import cast

import torch
import torch.nn.functional as torch_F
import yaml

from handgrad import cli
from handgrad.benchmarks.timing import CLOCKS, EpochTimer
from handgrad.configfiles import config_dir
from handgrad.data import ChunkSampler, DataModule
from handgrad.models import MLP
from handgrad.optim import SGD
from handgrad.steps import bare_epoch

NIELSEN_CONFIG = config_dir() / "nielsen_ch1.yaml"
E2E_BATCHES = {10: None, 1: 5000}  # batch -> training examples an epoch (None: the config's split, 50,000)
E2E_CONTENDERS = {  # name -> what it is, for the table
    "lightning": "Lightning: handgrad-train --config nielsen_ch1 (fused step)",
    "plain_torch": "plain PyTorch loop: torch.nn twin, torch mse_loss, torch.optim.SGD",
    "bare_epoch": "steps.bare_epoch, fused step (Lightning's path without Lightning)",
    "bare_epoch_per_layer": "steps.bare_epoch(fused=False): per-layer Functions + autograd engine",
}


def lightning_epochs(batch: int, val_size: int, epochs: int, data_root: str, clock: str):
    """``epochs`` epochs of nielsen_ch1 as ``handgrad-train --config nielsen_ch1`` runs them (TensorBoard
    logging, histograms and the config's callbacks on), with validation off and the run written to a temporary
    folder. Returns (the trained Classifier, seconds of each epoch)."""
    with tempfile.TemporaryDirectory() as log_dir, contextlib.redirect_stdout(sys.stderr):  # its epoch lines
        run = cli.build(["--config", str(NIELSEN_CONFIG), "--data.root", data_root, "--data.download", "false",
                         "--data.batch_size", str(batch), "--data.val_size", str(val_size),
                         "--trainer.max_epochs", str(epochs), "--trainer.limit_val_batches", "0",
                         "--checkpoint.monitor", "null", "--trainer.enable_model_summary", "false",
                         "--trainer.logger.init_args.save_dir", log_dir])
        timer = EpochTimer(clock)
        run.trainer.callbacks.insert(0, timer)  # type: ignore[attr-defined]  # set in Trainer.__init__
        run.trainer.fit(run.model, datamodule=run.datamodule)
    return run.model, timer.seconds


def plain_torch_epoch(net: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                      batch: int, order: torch.Tensor) -> None:
    """The reference: the plain PyTorch loop over the same tensors in the same order."""
    x, targets = x[order], torch_F.one_hot(y[order], 10).float()
    for start in range(0, len(targets), batch):
        loss = torch_F.mse_loss(net(x[start:start + batch]), targets[start:start + batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def end_to_end_rows(args) -> list[dict]:
    """Row group 3: epochs of nielsen_ch1 through the Lightning pipeline against bare loops, at batch 10 and 1.

    Each repeat runs every contender for ``--e2e-epochs`` epochs (the first a warm-up, untimed), from the
    config's initial weights, over the same training split in the same per-epoch order (the DataModule's);
    the contenders take turns, the order rotating. Reported: median us per example, and the median over
    repeats of the paired ratio Lightning / contender.
    """
    config = yaml.safe_load(NIELSEN_CONFIG.read_text())
    data_args = {**config["data"], "root": args.data_root, "download": False}
    try:
        n_total = len(DataModule(**{**data_args, "val_size": 0}).load(train=True)[1])
    except Exception as error:  # no MNIST files there
        print(f"note: row group 3 skipped: MNIST not readable under --data-root {args.data_root} ({error})",
              file=sys.stderr)
        return []
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.get("threads") or threads_before)  # as handgrad-train sets it from the config
    results = [row for batch, examples in E2E_BATCHES.items()
               for row in end_to_end_at(args, config, data_args, n_total, batch, examples)]
    torch.set_num_threads(threads_before)
    return results


def end_to_end_at(args, config: dict, data_args: dict, n_total: int, batch: int, examples: int | None) -> list[dict]:
    """end_to_end_rows at one batch size: a row per contender."""
    model, net_args = config["model"], config["model"]["net"]["init_args"]
    results = []
    n_train = args.e2e_examples or examples or n_total - config["data"]["val_size"]
    data = DataModule(**{**data_args, "batch_size": batch, "val_size": n_total - n_train})
    data.setup("fit")
    x, y = data.splits["train"]
    sampler = cast(ChunkSampler, data.train_dataloader().sampler)

    def orders():
        for epoch in range(args.e2e_epochs):
            sampler.set_epoch(epoch)
            yield sampler.permutation()  # the order Lightning's sampler draws for this epoch

    def fresh(backend: str) -> MLP:
        torch.manual_seed(config["seed_everything"])  # the initial weights of handgrad-train's run
        return MLP(**net_args, backend=backend)

    trained = {}  # contender -> its network after its latest run

    def run_lightning():
        classifier, seconds = lightning_epochs(batch, data.val_size, args.e2e_epochs, args.data_root,
                                               args.clock)
        trained["lightning"] = classifier.net
        return seconds

    def run_loop(name: str, backend: str, epoch_fn):
        net = fresh(backend)
        optimizer = (torch.optim.SGD if backend == "autograd" else SGD)(
            net.parameters(), lr=model["lr"], momentum=model["momentum"], weight_decay=model["weight_decay"])
        seconds, now = [], CLOCKS[args.clock]
        for order in orders():
            start = now()
            epoch_fn(net, optimizer, order)
            seconds.append(now() - start)
        trained[name] = net
        return seconds

    contenders = {
        "lightning": run_lightning,
        "plain_torch": lambda: run_loop("plain_torch", "autograd", lambda net, opt, order: plain_torch_epoch(
            net, opt, x, y, batch, order)),
        "bare_epoch": lambda: run_loop("bare_epoch", "hand", lambda net, opt, order: bare_epoch(
            net, opt, x, y, batch, model["loss"], order, fused=True)),
        "bare_epoch_per_layer": lambda: run_loop("bare_epoch_per_layer", "hand", lambda net, opt, order: bare_epoch(
            net, opt, x, y, batch, model["loss"], order, fused=False)),
    }
    per_example: dict[str, list[float]] = {name: [] for name in contenders}  # seconds per example, one value per repeat
    names = list(contenders)
    for r in range(args.e2e_repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
            seconds = contenders[name]()[1:]  # the first epoch warms up
            per_example[name].append(statistics.mean(seconds) / n_train)
        print(f"  end to end b{batch}, repeat {r + 1}/{args.e2e_repeats}: " + ", ".join(
            f"{name} {ts[-1] * 1e6:.1f}" for name, ts in per_example.items()) + " us/example", file=sys.stderr)

    same = all(torch.equal(p, q) for p, q in zip(trained["lightning"].parameters(),  # after the same epochs
                                                  trained["bare_epoch"].parameters(), strict=True))
    for name, ts in per_example.items():
        results.append(dict(
            network="nielsen_ch1 784-30-10 sigmoid, mse", batch=batch, examples=n_train, contender=name,
            what=E2E_CONTENDERS[name], us_per_example=statistics.median(ts) * 1e6,
            lightning_vs_this=statistics.median(a / b for a, b in zip(per_example["lightning"], ts, strict=True)),
            repeats_us_per_example=[t * 1e6 for t in ts], timed_epochs=args.e2e_epochs - 1,
            threads=torch.get_num_threads(), clock=args.clock,
            **({"same_weights_as_bare_epoch": same} if name == "lightning" else {})))
    return results


def end_to_end_markdown(rows: list[dict]) -> str:
    lines = ["| batch | examples an epoch | contender | us / example | Lightning / this |",
             "|---:|---:|---|---:|---:|"]
    for r in rows:
        ratio = "" if r["contender"] == "lightning" else f"{r['lightning_vs_this']:.2f}"
        lines.append(f"| {r['batch']} | {r['examples']:,} | {r['what']} | {r['us_per_example']:.1f} | {ratio} |")
    return "\n".join(lines)
