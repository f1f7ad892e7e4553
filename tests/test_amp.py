"""Mixed precision: every op under torch.autocast (what Lightning's precision="bf16-mixed" runs)
against its torch reference under the same autocast.

Each row of handgrad.verify.OP_CASES runs inside ``torch.autocast("cpu", dtype=torch.bfloat16)``
beside its reference, on identical inputs, and the two must agree on the output's dtype and
values and on every input's gradient, whose dtype must be its leaf's. The inputs come three
ways: all float32 (data and parameters as a model holds them), all bfloat16 (inputs that come
out of an earlier bf16 layer), and mixed (a bf16 activation meeting float32 parameters, targets
and statistics). Whole networks, an MLP and a small conv net, then train a few SGD steps under
autocast beside their torch.nn twins, directly and through Lightning's precision="bf16-mixed".
tests/test_cuda.py runs the same checks on CUDA, with float16 as well.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import lightning as L
import pytest
import torch

import handgrad.functional
import handgrad.functional as F
import handgrad.nn as hnn
from handgrad.functional.activations import Sigmoid
from handgrad.functional.function import Autocast, TwinnedFunction
from handgrad.functional.linear import Linear
from handgrad.functional.losses import CrossEntropy, PointwiseLoss
from handgrad.verify import OP_CASES, Comparison, OpCase, compare

# torch.testing's bfloat16 rtol (1.6e-2, about two bf16 steps); its atol (1e-5) is raised to 1e-2: the
# values here are O(1), where bf16's spacing is 7.8e-3, and two roundings in a different order (ours and
# torch's kernels') leave a difference of that size wherever a sum cancels to near zero.
BF16 = dict(rtol=1.6e-2, atol=1e-2)

LEAVES = ("float32", "low", "mixed")  # the floating inputs: all float32, all the autocast dtype, or only `input`


def with_leaves(inputs: dict, leaves: str, low: torch.dtype) -> dict:
    """Copies of the floating tensors of ``inputs``, leaves again, in the dtypes ``leaves`` names."""
    out = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            dtype = low if leaves == "low" or (leaves == "mixed" and name == "input") else torch.float32
            value = value.detach().to(dtype).requires_grad_(value.requires_grad)
        out[name] = value
    return out


def under_autocast(fn, device_type: str, dtype: torch.dtype):
    """``fn`` run inside torch.autocast; backward runs outside it, as in a training step."""
    def run(**inputs):
        with torch.autocast(device_type, dtype=dtype):
            return fn(**inputs)
    return run


def amp_comparison(case: OpCase, leaves: str, device_type: str, dtype: torch.dtype, reference=None,
                   to_device=lambda inputs: inputs) -> tuple[Comparison, dict]:
    """The op of ``case`` and its reference (or ``reference``), both under autocast, on the same inputs."""
    inputs = to_device(with_leaves(case.inputs(torch.float32), leaves, dtype))
    comparison = compare(under_autocast(case.hand, device_type, dtype),
                         under_autocast(reference or case.reference, device_type, dtype), inputs, case.kwargs)
    return comparison, inputs


def assert_same_dtypes_and_close(comparison: Comparison, inputs: dict, **tolerances) -> None:
    assert comparison.output.dtype == comparison.expected_output.dtype, (
        f"output dtype {comparison.output.dtype}, torch's {comparison.expected_output.dtype}")
    for name, grad in comparison.grads.items():
        assert grad.dtype == inputs[name].dtype, f"grad of {name!r} is {grad.dtype}, its leaf {inputs[name].dtype}"
    comparison.assert_close(**tolerances)


# --------------------------------------------------------------------------- every op


@pytest.mark.parametrize("leaves", LEAVES)
@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.name)
def test_every_op_under_bf16_autocast_matches_autograd(case, leaves):
    comparison, inputs = amp_comparison(case, leaves, "cpu", torch.bfloat16)
    tolerances = BF16
    if case.name.startswith("layer_norm") and leaves != "float32":
        # torch's CPU layer_norm backward sums a bfloat16 bias gradient in an order that depends on
        # the thread count: with one thread (OMP_NUM_THREADS=1) it lands up to ~6 bf16 ulps (0.023
        # at 0.73) from ours, which accumulates in float32; with two threads the two agree at BF16.
        tolerances = dict(rtol=4e-2, atol=3e-2)
    if case.name.startswith(("rnn_tanh(", "rnn_relu(")) and "layers" in case.name:
        # A bf16 Elman recurrence through 2-3 layers: torch's own gradients lie up to 0.11 from the float64
        # values (handgrad's up to 0.09; the forward is written in torch's op order, so the two agree there), and
        # the two backwards round in different places; up to 0.05 apart, a relu mask flipping by one bf16 step.
        tolerances = dict(rtol=4e-2, atol=6e-2)
    assert_same_dtypes_and_close(comparison, inputs, **tolerances)


def functions_in_handgrad() -> list[type]:
    """Every autograd.Function class defined in handgrad.functional's modules."""
    found = []
    for module_info in pkgutil.iter_modules(handgrad.functional.__path__):
        module = importlib.import_module(f"handgrad.functional.{module_info.name}")
        found += [obj for _, obj in inspect.getmembers(module, inspect.isclass)
                  if issubclass(obj, torch.autograd.Function) and obj.__module__ == module.__name__
                  and obj is not TwinnedFunction]  # the typed base class, no op
    return found


def test_every_function_names_its_autocast_group():
    functions = functions_in_handgrad()
    assert len(functions) >= 17
    for function in functions:
        declared = function.__dict__.get("autocast")
        groups = declared.values() if isinstance(declared, dict) else [declared]
        assert all(isinstance(g, Autocast) for g in groups), f"{function.__name__} declares autocast = {declared!r}"
        assert not isinstance(declared, dict) or "cpu" in declared, function.__name__


# --------------------------------------------------------------------------- the autocast machinery


def with_custom_fwd(function: type, cast_inputs: torch.dtype) -> type:
    """``function``'s math behind torch.amp.custom_fwd(cast_inputs=...) and custom_bwd, which
    twinned writes out for its casting groups (autocast.with_casts, in front of the Function)."""
    class Reference(torch.autograd.Function):
        @staticmethod
        @torch.amp.custom_fwd(device_type="cpu", cast_inputs=cast_inputs)
        def forward(ctx, *args):
            return function.forward(ctx, *args)  # autocast is off in here: the plain combined forward

        @staticmethod
        @torch.amp.custom_bwd(device_type="cpu")
        def backward(ctx, *grad_outputs):
            return function.backward(ctx, *grad_outputs)

    return Reference


@pytest.mark.parametrize("function, cast_inputs, input_dtype, extra", [
    (Linear, torch.bfloat16, torch.float32, lambda g: (torch.randn(3, 5, generator=g, requires_grad=True),
                                                       torch.randn(3, generator=g, requires_grad=True))),
    (PointwiseLoss, torch.float32, torch.bfloat16, lambda g: (
        torch.randn(4, 5, generator=g).bfloat16().requires_grad_(), None, ("squared", 0.0), "mean")),
    (Sigmoid, torch.bfloat16, torch.bfloat16, lambda g: ()),
], ids=["LOWER_PRECISION", "FLOAT32", "INPUT_DTYPE"])
def test_casting_groups_equal_torch_amp_custom_fwd_and_custom_bwd_bit_for_bit(function, cast_inputs, input_dtype,
                                                                               extra):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, generator=g).to(input_dtype).requires_grad_()
    args = (x, *extra(g))
    runs = []
    for fn in (function.apply, with_custom_fwd(function, cast_inputs).apply):
        copies = [a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = fn(*copies)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)  # PointwiseLoss also returns x - t
        outputs[0].backward(torch.ones_like(outputs[0]))
        runs.append((*outputs, *[a.grad for a in copies if isinstance(a, torch.Tensor)]))
    for ours, theirs in zip(*runs, strict=True):
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)


def test_autocast_state_is_restored_after_forward_backward_and_errors():
    x = torch.randn(4, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.mse_loss(F.sigmoid(F.linear(x, torch.randn(5, 5))), torch.randn(4, 5))
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        with pytest.raises(RuntimeError, match="out of bounds"):  # raised where autocast is switched off
            # (the wrapper would check 7)
            CrossEntropy.apply(torch.randn(2, 3), torch.tensor([0, 7]), None, None, None, "mean", 0.0)
        assert torch.is_autocast_enabled("cpu")
    loss.backward()
    assert not torch.is_autocast_enabled("cpu")
    assert x.grad.dtype == torch.float32


def test_backward_inside_the_autocast_region_gives_the_same_gradients():
    case = next(c for c in OP_CASES if c.name == "mlp_loss(cross_entropy, relu)")
    grads = []
    for backward_inside in (False, True):
        inputs = with_leaves(case.inputs(torch.float32), "mixed", torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = case.hand(**inputs, **case.kwargs)
            if backward_inside:
                loss.backward()
        if not backward_inside:
            loss.backward()
        grads.append([v.grad for v in inputs.values() if isinstance(v, torch.Tensor) and v.requires_grad])
    for outside, inside in zip(*grads, strict=True):
        torch.testing.assert_close(inside, outside, **BF16)


# --------------------------------------------------------------------------- whole networks


def twin_networks(kind: str, device: str = "cpu") -> tuple[torch.nn.Module, torch.nn.Module]:
    """A handgrad.nn network and its torch.nn twin with the same state_dict."""
    def build(nn):
        if kind == "mlp":
            return torch.nn.Sequential(nn.Linear(20, 32), nn.Sigmoid(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 5))
        return torch.nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                   torch.nn.Flatten(), nn.Linear(4 * 4 * 4, 5))

    torch.manual_seed(0)
    hand = build(hnn).to(device)
    twin = build(torch.nn).to(device)
    twin.load_state_dict(hand.state_dict())
    return hand, twin


def batches(kind: str, steps: int, device: str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    shape = (16, 20) if kind == "mlp" else (16, 1, 8, 8)
    return [(torch.randn(shape, generator=g).to(device), torch.randint(5, (16,), generator=g).to(device))
            for _ in range(steps)]


def train_under_autocast(net: torch.nn.Module, loss_fn, data, device_type: str, dtype: torch.dtype,
                         lr: float = 0.1) -> list[torch.Tensor]:
    """Plain SGD steps with the forward under autocast (backward outside it); the loss of each step."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    losses = []
    for x, target in data:
        optimizer.zero_grad()
        with torch.autocast(device_type, dtype=dtype):
            loss = loss_fn(net(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return losses


def assert_trains_like_its_twin(kind: str, device: str, dtype: torch.dtype, steps: int = 5, **tolerances) -> None:
    hand, twin = twin_networks(kind, device)
    data = batches(kind, steps, device)
    losses = train_under_autocast(hand, hnn.CrossEntropyLoss(), data, device, dtype)
    expected = train_under_autocast(twin, torch.nn.CrossEntropyLoss(), data, device, dtype)
    assert all(loss.dtype == torch.float32 for loss in losses)  # cross-entropy runs in float32 under autocast
    torch.testing.assert_close(torch.stack(losses), torch.stack(expected), **tolerances)
    assert expected[-1] < expected[0]  # it learns: the comparison is not of two stalled runs
    for (name, value), expected_value in zip(hand.state_dict().items(), twin.state_dict().values(), strict=True):
        assert value.dtype == expected_value.dtype, name  # parameters and statistics stay float32
        torch.testing.assert_close(value, expected_value, msg=lambda m, name=name: f"{name}: {m}", **tolerances)


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
def test_network_trains_under_bf16_autocast_like_its_torch_twin(kind):
    assert_trains_like_its_twin(kind, "cpu", torch.bfloat16, **BF16)


class TinyClassifier(L.LightningModule):
    """Just enough of a LightningModule to train ``net`` with cross-entropy and SGD."""

    def __init__(self, net: torch.nn.Module, loss_fn):
        super().__init__()
        self.net, self.loss_fn, self.logit_dtypes = net, loss_fn, set()

    def training_step(self, batch, batch_idx):
        x, target = batch
        logits = self.net(x)
        self.logit_dtypes.add(logits.dtype)
        return self.loss_fn(logits, target)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_bf16_mixed_trains_like_its_torch_twin():
    hand, twin = twin_networks("convnet")
    x, target = (torch.cat(parts) for parts in zip(*batches("convnet", steps=4), strict=True))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, target), batch_size=16)
    systems = [TinyClassifier(hand, hnn.CrossEntropyLoss()), TinyClassifier(twin, torch.nn.CrossEntropyLoss())]
    for system in systems:
        L.Trainer(accelerator="cpu", precision="bf16-mixed", max_epochs=2, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False).fit(system, loader)
    assert systems[0].logit_dtypes == systems[1].logit_dtypes == {torch.bfloat16}  # the forward ran under autocast
    for (name, value), expected in zip(hand.state_dict().items(), twin.state_dict().values(), strict=True):
        torch.testing.assert_close(value, expected, msg=lambda m, name=name: f"{name}: {m}", **BF16)
