"""handgrad.nn on PyTorch's own ModuleInfo inputs (verify/samples.py runs the OpInfo samples).

For each handgrad.nn class, the ModuleInfo of its torch.nn namesake: every ModuleInput, in float64 and
float32, in train and in eval mode. The torch module is built from the constructor input, its
state_dict loaded into the handgrad twin, and both are called on copies of the forward input: the
outputs, the gradients of the inputs and of every parameter, and every buffer after the call and after a
second, no_grad call (running statistics, num_batches_tracked) must agree. torch.nn.Dropout and the
channel dropouts Dropout1d, Dropout2d, Dropout3d have no ModuleInfo: their inputs are made from the
samples of their functional op (DropoutInfo).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

import handgrad.nn as HN
from handgrad.verify.samples import (
    DTYPES,
    Outcome,
    TorchError,
    assert_all_same,
    assert_same,
    copy_of,
    databases,
    flat,
    gradients,
    leaves,
    opinfo,
    outcome_of,
)


@dataclass
class ModuleSample:
    name: str  # the handgrad.nn class
    info: Any  # the ModuleInfo of its torch.nn namesake
    dtype: torch.dtype
    training: bool
    module_input: Any  # a ModuleInput


DROPOUT_OPINFOS = {"Dropout": "nn.functional.dropout", "Dropout1d": "nn.functional.dropout1d",
                   "Dropout2d": "nn.functional.dropout2d", "Dropout3d": "nn.functional.dropout3d"}


def module_info(name: str):
    """The ModuleInfo of torch.nn.<name>; for the dropouts, which have none, one made from the functional samples."""
    cls = getattr(torch.nn, name)
    found = next((info for info in databases()[1] if info.module_cls is cls), None)
    return found if found is not None else DropoutInfo(name) if name in DROPOUT_OPINFOS else None


class DropoutInfo:
    """A stand-in ModuleInfo for torch.nn.<name>, a dropout: <name>(p)(input) for each sample of its functional
    op's OpInfo (DROPOUT_OPINFOS)."""

    module_error_inputs_func = None

    def __init__(self, name: str):
        self.module_cls, self.functional = getattr(torch.nn, name), DROPOUT_OPINFOS[name]

    def supported_dtypes(self, device_type):
        return set(DTYPES)

    def module_inputs_func(self, info, device, dtype, requires_grad, training):
        from torch.testing._internal.common_modules import FunctionInput, ModuleInput
        seen, inputs = set(), []
        for s in opinfo(self.functional).sample_inputs(device, dtype, requires_grad=requires_grad):
            p = s.kwargs.get("p", 0.5)
            if not s.kwargs.get("inplace") and (p, s.input.shape) not in seen:  # torch's inplace refuses a leaf
                seen.add((p, s.input.shape))
                inputs.append(ModuleInput(FunctionInput(p=p), FunctionInput(s.input), desc=f"p={p}"))
        return inputs


def module_samples(name: str, dtypes=DTYPES) -> Iterator[ModuleSample]:
    info = module_info(name)
    for dtype in dtypes:
        if dtype not in info.supported_dtypes("cpu"):
            continue
        for training in (True, False):
            torch.manual_seed(0)
            for module_input in info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True,
                                                        training=training):
                if module_input.forward_input is not None:
                    yield ModuleSample(name, info, dtype, training, module_input)


def run_module_sample(case: ModuleSample) -> Outcome:
    constructor, forward = case.module_input.constructor_input, case.module_input.forward_input

    def side(cls, state=None):
        module = cls(*copy_of(constructor.args), **copy_of(constructor.kwargs)).to(case.dtype)
        module.load_state_dict(state if state is not None else module.state_dict())
        module.train(case.training)
        args, kwargs = copy_of(forward.args), copy_of(forward.kwargs)
        parameters = [p for p in module.parameters() if p.requires_grad]
        torch.manual_seed(1)  # Dropout: both sides draw the same mask
        outputs = flat(module(*args, **kwargs))
        grads = gradients(outputs, leaves((args, kwargs)) + parameters)
        after_one = {k: v.clone() for k, v in module.state_dict().items()}
        with torch.no_grad():
            torch.manual_seed(2)
            module(*copy_of(forward.args), **copy_of(forward.kwargs))
        return outputs, grads, after_one, module.state_dict()

    def run():
        try:
            reference = case.info.module_cls(*copy_of(constructor.args), **copy_of(constructor.kwargs)).to(case.dtype)
            state = {k: v.clone() for k, v in reference.state_dict().items()}
            expected = side(case.info.module_cls, state)
        except Exception as e:  # noqa: BLE001
            raise TorchError(f"{type(e).__name__}: {e}") from e
        actual = side(getattr(HN, case.name), state)
        assert_all_same("output", actual[0], expected[0])
        assert_all_same("gradient (inputs, then parameters)", actual[1], expected[1])
        for call, a_state, e_state in (("1", actual[2], expected[2]), ("2", actual[3], expected[3])):
            assert a_state.keys() == e_state.keys(), f"state_dict keys {sorted(a_state)} vs {sorted(e_state)}"
            for key in e_state:
                assert_same(f"{key} after call {call}", a_state[key], e_state[key])

    mode = "train" if case.training else "eval"
    return outcome_of(run, f"{str(case.dtype)[6:]} {mode} {case.module_input.desc or ''}: "
                           f"{case.info.module_cls.__name__}{constructor.args}{constructor.kwargs}")


def module_error_inputs(name: str) -> Iterator[tuple[str, Any]]:
    """(name, ErrorModuleInput) for every construction or call torch's ModuleInfo says the module rejects."""
    info = module_info(name)
    if info is not None and info.module_error_inputs_func is not None:
        for error_input in info.module_error_inputs_func(info, device="cpu", dtype=torch.float32, requires_grad=True,
                                                         training=True):
            yield name, error_input


def call_error_input(name: str, error_input) -> None:
    """Build handgrad.nn.<name> from the error input and call it, as torch's test does."""
    constructor = error_input.module_error_input.constructor_input
    forward = error_input.module_error_input.forward_input
    module = getattr(HN, name)(*copy_of(constructor.args), **copy_of(constructor.kwargs))  # as torch builds it
    if forward is not None:
        module(*copy_of(forward.args), **copy_of(forward.kwargs))
