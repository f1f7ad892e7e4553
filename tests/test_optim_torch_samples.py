"""PyTorch's own optimiser samples, run on handgrad.optim: torch.testing._internal.common_optimizers.optim_db.

For each of SGD, Adam, AdamW, RMSprop, Adadelta and Adagrad, every config torch's test suite builds for the
CPU (``optim_inputs_func(device="cpu")``, with the implementation flags torch's helper adds to each:
differentiable, and fused where torch has a fused CPU kernel) either walks torch's path bit for bit for 10
steps, float32 and float64, or is refused by handgrad with the ValueError naming one of the options it
documents as refused (handgrad.optim.base). Nothing else: no crash, no mismatch, no other refusal.
Torch's error samples raise in handgrad too, as the same exception type.
"""

from __future__ import annotations

import collections

import pytest
import torch
import torch.testing._internal.common_optimizers as common_optimizers
from test_optim_twins import assert_same_state, twins, walk_together

import handgrad.optim
from handgrad.optim.base import OTHER_IMPLEMENTATIONS

NAMES = ("SGD", "Adam", "AdamW", "RMSprop", "Adadelta", "Adagrad")


def optim_info(name: str):
    return next(info for info in common_optimizers.optim_db if info.optim_cls is getattr(torch.optim, name))


def samples(name: str) -> list:
    """torch's configs for the CPU, each also with the flags its helper adds (as torch's own tests run them)."""
    info = optim_info(name)
    helper = getattr(common_optimizers, "_get_optim_inputs_including_global_cliquey_kwargs", None)
    return helper("cpu", torch.float32, info) if helper else info.optim_inputs_func(device="cpu")


def outcome(name: str, kwargs: dict) -> str:
    """"matched" (10 steps equal to torch's, both dtypes) or "refused <option>" (handgrad's documented refusal)."""
    try:
        getattr(handgrad.optim, name)([torch.nn.Parameter(torch.zeros(1))], **kwargs)
    except ValueError as error:
        refused = [option for option in OTHER_IMPLEMENTATIONS if kwargs.get(option)]
        assert refused, f"{name}({kwargs}) refused, but asks for no refused option: {error}"
        assert f"{name}: {refused[0]}=True" in str(error), str(error)
        return f"refused {refused[0]}"
    for dtype in (torch.float32, torch.float64):
        pairs = twins(name, kwargs, dtype, group0={})
        walk_together(pairs, range(10))
        assert_same_state(pairs[0][1], pairs[1][1])
    return "matched"


@pytest.mark.parametrize("name", NAMES)
def test_every_torch_sample_config_matches_or_is_refused_as_documented(name):
    configs = samples(name)
    counts: collections.Counter = collections.Counter()
    for sample in configs:
        counts[outcome(name, sample.kwargs)] += 1
    matched = counts["matched"]
    refused = sum(n for result, n in counts.items() if result.startswith("refused"))
    print(f"\n{name}: {matched} matched, {refused} refused ({dict(counts)}), {len(configs)} in all")
    assert matched + refused == len(configs) and matched >= len(optim_info(name).optim_inputs_func(device="cpu"))


# torch refuses a tensor lr with foreach=True (its multi-tensor Adam has no overload for it); handgrad's
# update computes with a tensor lr whatever foreach says, so it accepts that config.
ACCEPTED_BY_HANDGRAD = {"lr as Tensor doesn't work with foreach & not capturable"}


@pytest.mark.parametrize("name", NAMES)
def test_torchs_error_samples_raise_in_handgrad_too(name):
    errors = optim_info(name).optim_error_inputs_func("cpu", torch.float32)
    checked = 0
    for error in errors:
        sample = error.optimizer_error_input
        if error.error_on != common_optimizers.OptimizerErrorEnum.CONSTRUCTION_ERROR:
            continue
        params = sample.params if sample.params is not None else [torch.nn.Parameter(torch.randn(2, 2))]
        if sample.desc in ACCEPTED_BY_HANDGRAD:
            getattr(handgrad.optim, name)(params, **sample.kwargs)
            continue
        if issubclass(error.error_type, Warning):
            with pytest.warns(error.error_type):
                getattr(handgrad.optim, name)(params, **sample.kwargs)
        else:
            with pytest.raises(error.error_type):
                getattr(handgrad.optim, name)(params, **sample.kwargs)
        checked += 1
    assert checked >= 5
