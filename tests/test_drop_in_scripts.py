"""PyTorch training scripts with only their imports swapped to handgrad's: every backward node of nn, F and optim
is hand-written (handgrad.coverage), and a few training steps give torch's losses and gradients.

The scripts (tests/torch_scripts/) are plain PyTorch, as pytorch/examples writes them: the MNIST CNN (F.nll_loss,
log_softmax, dropout, optim.Adadelta, StepLR), an LSTM classifier with nn.Dropout2d (AdamW), the VAE
(F.binary_cross_entropy, Adam) and the word-level language model (nn.init.uniform_, Embedding, a two-layer LSTM,
Dropout, tied weights, CrossEntropyLoss, nn.utils.clip_grad_norm_). Each is run twice from its source text:
as it is, and with its import lines rewritten (``import torch.nn as nn`` -> ``import handgrad.nn as nn``, ...).
Both runs use float64, the same seed and the same synthetic batches; every parameter's gradient is compared
at every step.
"""

from __future__ import annotations

import difflib
import functools
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import handgrad
import handgrad.functional
import handgrad.nn
import handgrad.optim
from handgrad.coverage_report import AUTOGRAD, HAND, OUTSIDE, CoverageReport

SCRIPTS = Path(__file__).resolve().parent / "torch_scripts"
STEPS = 3
ALL_HAND_WRITTEN = ["mnist_cnn", "lstm_classifier", "word_language_model"]
NAMES = [*ALL_HAND_WRITTEN, "vae"]


def swap_imports(source: str) -> str:
    """The script with torch.nn and torch.optim replaced by handgrad's on its import lines, and no other change."""
    lines = []
    for line in source.splitlines(keepends=True):
        if line.startswith(("import ", "from ")):
            line = (line.replace("torch.nn", "handgrad.nn").replace("torch.optim", "handgrad.optim")
                    .replace("from torch import ", "from handgrad import "))
        lines.append(line)
    return "".join(lines)


def load(name: str, handgrad_imports: bool) -> types.ModuleType:
    """The script as a module, from its source text (swapped or not): what `python script.py` would define."""
    path = SCRIPTS / f"{name}.py"
    source = path.read_text()
    module = types.ModuleType(f"torch_scripts.{name}")
    module.__file__ = str(path)
    exec(compile(swap_imports(source) if handgrad_imports else source, str(path), "exec"), module.__dict__)
    return module


@dataclass
class Run:
    losses: list[torch.Tensor]
    grads: list[dict[str, torch.Tensor]]  # per step: parameter name -> its gradient after backward
    state: dict[str, torch.Tensor]  # the parameters after the last step
    report: CoverageReport
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None


@functools.cache
def run(name: str, handgrad_imports: bool) -> Run:
    """STEPS training steps of the script in float64 inside handgrad.coverage; strict for handgrad's run of a
    script written only with nn, F and optim calls."""
    script = load(name, handgrad_imports)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model, optimizer, scheduler = script.build()
        losses, grads = [], []

        def log(step, loss):
            losses.append(loss.detach().clone())
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})

        strict = handgrad_imports and name in ALL_HAND_WRITTEN
        with handgrad.coverage(model, strict=strict) as report:
            script.train(model, optimizer, scheduler, script.synthetic_batches(STEPS), log)
    finally:
        torch.set_default_dtype(default)
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    return Run(losses, grads, state, report, model, optimizer)


# --------------------------------------------------------------------------- only the imports change


@pytest.mark.parametrize("name", NAMES)
def test_only_the_import_lines_change(name):
    source = (SCRIPTS / f"{name}.py").read_text()
    changed = [line[1:] for line in difflib.ndiff(source.splitlines(), swap_imports(source).splitlines())
               if line.startswith(("- ", "+ "))]
    assert changed and all(line.lstrip().startswith(("import ", "from ")) for line in changed), changed
    script = load(name, handgrad_imports=True)
    assert script.nn is handgrad.nn
    assert getattr(script, "F", handgrad.functional) is handgrad.functional
    assert getattr(script, "optim", handgrad.optim) is handgrad.optim


@pytest.mark.parametrize("name", NAMES)
def test_the_swapped_script_builds_handgrads_modules_and_optimiser(name):
    ours, theirs = run(name, True), run(name, False)
    ours_types = [type(m) for m in ours.model.modules()]
    assert [t.__name__ for t in ours_types] == [type(m).__name__ for m in theirs.model.modules()]
    assert all(t.__module__ == "handgrad.nn" for t in ours_types[1:] if t.__name__ in handgrad.nn.HAND_WRITTEN)
    assert any(t.__module__ == "handgrad.nn" for t in ours_types)
    if ours.optimizer is not None:
        assert type(ours.optimizer).__module__.startswith("handgrad.optim.")


# --------------------------------------------------------------------------- the same training


@pytest.mark.parametrize("name", NAMES)
def test_a_few_steps_give_torchs_losses_and_gradients(name):
    ours, theirs = run(name, True), run(name, False)
    assert len(ours.losses) == len(theirs.losses) == STEPS
    torch.testing.assert_close(torch.stack(ours.losses), torch.stack(theirs.losses), rtol=1e-12, atol=0)
    for step, (grads, expected) in enumerate(zip(ours.grads, theirs.grads, strict=True)):
        assert list(grads) == list(expected)  # every parameter, under the same name
        for param, grad in grads.items():
            assert grad.dtype == torch.float64 and grad.abs().sum() > 0, (step, param)
            torch.testing.assert_close(grad, expected[param], rtol=1e-10, atol=1e-13, msg=f"step {step}: {param}")
    for param, value in ours.state.items():  # so the optimisers took the same steps
        torch.testing.assert_close(value, theirs.state[param], rtol=1e-10, atol=1e-13, msg=param)


# --------------------------------------------------------------------------- coverage


@pytest.mark.parametrize("name", ALL_HAND_WRITTEN)
def test_every_backward_node_is_hand_written(name):
    ours, theirs = run(name, True), run(name, False)  # handgrad's run was strict: any autograd node raised
    assert ours.report.backward_calls == STEPS and ours.report.share == 1.0 and ours.report.autograd == 0
    assert ours.report.hand >= 4 * STEPS
    # The same count on torch's run finds no hand-written node: the report does tell the two apart.
    assert theirs.report.hand == 0 and theirs.report.autograd >= ours.report.hand


def test_the_vaes_autograd_nodes_are_exactly_its_own_tensor_arithmetic():
    """The VAE computes its reparameterisation (mu + eps * std, std = exp(0.5 * logvar)), its output
    (torch.sigmoid) and the KL term with torch's tensor ops, not through nn or F: the import swap leaves those
    to autograd. Every node of an nn module or an F call is hand-written."""
    report = run("vae", True).report
    per_backward = {  # (op, where) -> nodes in each backward
        # VAE.forward: std = torch.exp(0.5 * logvar); mu + eps * std; torch.sigmoid(self.fc4(h3))
        ("MulBackward0", ""): 2, ("ExpBackward0", ""): 1, ("AddBackward0", ""): 1, ("SigmoidBackward0", ""): 1,
        # loss_function: -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()), then BCE + KLD
        ("MulBackward0", OUTSIDE): 1, ("SumBackward0", OUTSIDE): 1, ("SubBackward0", OUTSIDE): 2,
        ("AddBackward0", OUTSIDE): 2, ("PowBackward0", OUTSIDE): 1, ("ExpBackward0", OUTSIDE): 1,
    }
    autograd: dict[tuple[str, str], int] = {}
    for record in report.nodes:
        if record.kind == AUTOGRAD:
            autograd[record.op, record.module] = autograd.get((record.op, record.module), 0) + 1
    assert autograd == {key: count * STEPS for key, count in per_backward.items()}
    hand = {(r.op, r.module) for r in report.nodes if r.kind == HAND}
    assert hand == {("LinearBackward", layer) for layer in ("fc1", "fc21", "fc22", "fc3", "fc4")} | {
        ("ReLUBackward", ""), ("BinaryCrossEntropyBackward", OUTSIDE)}
    assert all(report.by_module[layer].share == 1.0 for layer in ("fc1", "fc21", "fc22", "fc3", "fc4"))
