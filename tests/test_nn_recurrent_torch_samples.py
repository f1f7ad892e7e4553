"""PyTorch's own ModuleInfo samples for its recurrent layers (nn.RNN, GRU, LSTM with and without proj_size,
RNNCell, GRUCell, LSTMCell), beyond what tests/test_torch_samples.py checks for every handgrad.nn class
(outputs and gradients against torch's module, float64 and float32, train and eval; errors rejected):
every sample's own reference, the unbatched input run batched, holds for handgrad's twin; none is
skipped; and torch's error samples raise torch's exception type with its message."""

from __future__ import annotations

import pytest
import torch

import handgrad.nn as hnn
from handgrad.verify.module_samples import module_info, module_samples

NAMES = ("RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell")
SAMPLES = {"RNN": 32, "GRU": 16, "LSTM": 32, "RNNCell": 3, "GRUCell": 2, "LSTMCell": 2}  # per dtype and mode

# torch's own CPU LSTM, on the proj_size samples, notes that it leaves oneDNN for its default implementation
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN:UserWarning")


def flat(output) -> list[torch.Tensor]:
    return [output] if isinstance(output, torch.Tensor) else [t for item in output for t in flat(item)]


@pytest.mark.parametrize("name", NAMES)
def test_every_sample_runs_and_its_no_batch_dim_reference_holds(name):
    samples = list(module_samples(name, dtypes=(torch.float64,)))
    assert len(samples) == 2 * SAMPLES[name]  # train and eval
    for sample in samples:
        constructor, forward = sample.module_input.constructor_input, sample.module_input.forward_input
        module = getattr(hnn, name)(*constructor.args, **constructor.kwargs).double().train(sample.training)
        reference = sample.module_input.reference_fn(module, *forward.args, **forward.kwargs)  # parameters passed
        for a, b in zip(flat(module(*forward.args, **forward.kwargs)), flat(reference), strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_torchs_error_samples_raise_torchs_error_and_message(name):
    info = module_info(name)
    errors = info.module_error_inputs_func(info, device="cpu", dtype=torch.float32, requires_grad=False,
                                           training=True)
    for error in errors:
        constructor, forward = error.module_error_input.constructor_input, error.module_error_input.forward_input
        with pytest.raises(error.error_type, match=error.error_regex):
            module = getattr(hnn, name)(*constructor.args, **constructor.kwargs)
            if forward is not None:
                module(*forward.args, **forward.kwargs)
    assert len(errors) == {"RNN": 14, "GRU": 14, "LSTM": 14, "RNNCell": 6, "GRUCell": 6, "LSTMCell": 4}[name]
