"""PyTorch's own module samples for its recurrent layers (torch.testing._internal.common_modules.module_db:
nn.RNN, nn.GRU, nn.LSTM with and without proj_size, nn.RNNCell, nn.GRUCell, nn.LSTMCell), run on
handgrad.nn's twins: every sample, in float32 and float64, in training and evaluation, gives torch's
outputs and gradients (input, initial states, every parameter), and the sample's own reference (the
unbatched input run batched) holds for the twin too; torch's error samples raise the same error."""

from __future__ import annotations

import pytest
import torch
import torch.testing._internal.common_modules as common_modules

import handgrad.nn as hnn

NAMES = ("RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell")

# torch's own CPU LSTM, on the proj_size samples, notes that it leaves oneDNN for its default implementation
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN:UserWarning")


def module_info(name: str):
    return next(info for info in common_modules.module_db if info.module_cls is getattr(torch.nn, name))


def leaves(value) -> list[torch.Tensor]:
    """The tensors requiring grad inside a sample's (nested) arguments."""
    if isinstance(value, torch.Tensor):
        return [value] if value.requires_grad else []
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in leaves(item)]
    if isinstance(value, dict):
        return leaves(list(value.values()))
    return []


def flat(output) -> list[torch.Tensor]:
    return [output] if isinstance(output, torch.Tensor) else [t for item in output for t in flat(item)]


def run_sample(name: str, sample, dtype: torch.dtype, training: bool) -> None:
    """torch's module and handgrad's twin (torch's state_dict loaded) on the sample: the same outputs and
    gradients, and the sample's reference function holds for the twin."""
    ci, fi = sample.constructor_input, sample.forward_input
    twin = getattr(torch.nn, name)(*ci.args, **ci.kwargs).to(dtype).train(training)
    hand = getattr(hnn, name)(*ci.args, **ci.kwargs).to(dtype).train(training)
    hand.load_state_dict(twin.state_dict())
    outputs = []
    for module in (hand, twin):
        torch.manual_seed(0)
        outputs.append(flat(module(*fi.args, **fi.kwargs)))
    ours, theirs = outputs
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(t.shape, dtype=t.dtype, generator=g) for t in theirs]
    inputs = leaves((fi.args, fi.kwargs))
    got = torch.autograd.grad(ours, [*inputs, *hand.parameters()], grads)
    expected = torch.autograd.grad(theirs, [*inputs, *twin.parameters()], grads)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
    if sample.reference_fn is not None:
        reference = sample.reference_fn(hand, *fi.args, **fi.kwargs)  # ModuleInput passes the parameters itself
        for a, b in zip(ours, flat(reference), strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_every_torch_sample_matches(name, dtype, training):
    info = module_info(name)
    torch.manual_seed(0)
    samples = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True, training=training)
    for sample in samples:
        run_sample(name, sample, dtype, training)
    print(f"\n{name} {dtype} {'train' if training else 'eval'}: {len(samples)} samples matched")
    assert len(samples) >= {"RNN": 32, "GRU": 16, "LSTM": 32}.get(name, 2)


@pytest.mark.parametrize("name", NAMES)
def test_torchs_error_samples_raise_the_same_error(name):
    info = module_info(name)
    errors = info.module_error_inputs_func(info, device="cpu", dtype=torch.float32, requires_grad=False,
                                           training=True)
    for error in errors:
        ci, fi = error.module_error_input.constructor_input, error.module_error_input.forward_input
        with pytest.raises(error.error_type, match=error.error_regex):
            module = getattr(hnn, name)(*ci.args, **ci.kwargs)
            if error.error_on == common_modules.ModuleErrorEnum.FORWARD_ERROR:
                module(*fi.args, **fi.kwargs)
    assert len(errors) >= 4
