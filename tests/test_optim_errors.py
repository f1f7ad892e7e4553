"""handgrad.optim's refusals: bad hyperparameters and the options handgrad does not implement, each a clear
error naming the value and the fix, whether it comes from the constructor, a later param group or a
loaded state_dict."""

from __future__ import annotations

import pytest
import torch

import handgrad.optim
from handgrad.optim import SGD, Adadelta, Adagrad, Adam, AdamW, RMSprop


def params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(4))]


BAD_VALUES = [
    (Adam, dict(lr=-0.1), r"Adam: lr=-0.1 is negative; a learning rate must be >= 0"),
    (AdamW, dict(lr=torch.tensor([1e-3, 1e-3])), r"AdamW: lr is a tensor of 2 elements; .*lr=torch.tensor\(1e-3\)"),
    (Adam, dict(eps=-1e-8), r"Adam: eps=-1e-08 is negative; .*eps=1e-8"),
    (Adam, dict(eps=float("nan")), r"Adam: eps=nan is not a number"),
    (Adam, dict(weight_decay=-1), r"Adam: weight_decay=-1 is negative"),
    (Adam, dict(betas=(1.0, 0.999)), r"Adam: betas\[0\]=1.0 is outside \[0, 1\); .*betas=\(0.9, 0.999\)"),
    (AdamW, dict(betas=(0.9, -0.1)), r"AdamW: betas\[1\]=-0.1 is outside \[0, 1\)"),
    (Adam, dict(betas=(0.9,)), r"Adam: betas=\(0.9,\) is not a pair"),
    (Adam, dict(betas=(torch.tensor(0.9), torch.tensor(0.99))), r"Adam: betas\[0\]=tensor\(0.9000\) is a tensor"),
    (RMSprop, dict(alpha=-0.5), r"RMSprop: alpha=-0.5 is negative; .*alpha=0.99"),
    (RMSprop, dict(momentum=-1.0), r"RMSprop: momentum=-1.0 is negative; use a value in \[0, 1\)"),
    (RMSprop, dict(eps=-1.0), r"RMSprop: eps=-1.0 is negative"),
    (Adadelta, dict(rho=1.1), r"Adadelta: rho=1.1 is outside \[0, 1\]; .*rho=0.9"),
    (Adadelta, dict(lr=-1.0), r"Adadelta: lr=-1.0 is negative"),
    (Adagrad, dict(lr_decay=-0.5), r"Adagrad: lr_decay=-0.5 is negative; use 0 \(a constant learning rate\)"),
    (Adagrad, dict(initial_accumulator_value=-0.1), r"Adagrad: initial_accumulator_value=-0.1 is negative"),
    (Adagrad, dict(eps=-1e-10), r"Adagrad: eps=-1e-10 is negative"),
    (SGD, dict(lr=0.1, momentum=-0.5), r"SGD: momentum=-0.5 is negative"),
]


@pytest.mark.parametrize("optimizer, kwargs, message", BAD_VALUES, ids=[m.split(";")[0] for _, _, m in BAD_VALUES])
def test_bad_values_raise_naming_the_value_and_the_fix(optimizer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        optimizer(params(), **kwargs)


REFUSED = [(cls, option) for cls in (SGD, Adam, AdamW, RMSprop, Adadelta, Adagrad)
           for option in ("fused", "capturable", "differentiable") if option in cls.__init__.__code__.co_varnames]


@pytest.mark.parametrize("optimizer, option", REFUSED, ids=[f"{c.__name__}-{o}" for c, o in REFUSED])
def test_other_implementations_are_refused_with_the_fix(optimizer, option):
    name = optimizer.__name__
    with pytest.raises(ValueError, match=rf"{name}: {option}=True .*; use {option}=False .* or "
                                         rf"torch.optim.{name}\({option}=True\)"):
        optimizer(params(), **{option: True})
    optimizer(params(), **{option: False})  # False (and foreach, any value) is fine


@pytest.mark.parametrize("foreach", [None, True, False])
def test_foreach_is_accepted_and_stored(foreach):
    assert Adam(params(), foreach=foreach).param_groups[0]["foreach"] is foreach


def test_a_later_param_group_is_checked_too():
    optimizer = RMSprop(params())
    with pytest.raises(ValueError, match=r"RMSprop: lr=-1 is negative"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))], "lr": -1})
    assert len(optimizer.param_groups) == 1
    with pytest.raises(ValueError, match=r"RMSprop: capturable=True"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))], "capturable": True})


def test_a_state_dict_asking_for_a_refused_option_is_refused_on_load():
    w = params()
    theirs = torch.optim.Adam(w, fused=True)
    with pytest.raises(ValueError, match=r"Adam: fused=True asks for torch's fused kernel"):
        Adam(w).load_state_dict(theirs.state_dict())


def test_a_state_dict_from_before_a_key_existed_gets_the_default():
    """A param group saved without ``maximize`` (older torch or handgrad) loads with maximize=False."""
    w = params()
    saved = SGD(w, lr=0.1, momentum=0.9).state_dict()
    del saved["param_groups"][0]["maximize"]
    optimizer = SGD(w, lr=0.1, momentum=0.9)
    optimizer.load_state_dict(saved)
    assert optimizer.param_groups[0]["maximize"] is False


def test_a_step_count_saved_as_a_number_becomes_a_tensor():
    w = params()
    for p in w:
        p.grad = torch.ones_like(p)
    optimizer = Adam(w)
    optimizer.step()
    saved = optimizer.state_dict()
    for state in saved["state"].values():
        state["step"] = 1  # as torch before 1.12 saved it
    optimizer.load_state_dict(saved)
    assert all(s["step"].dtype == torch.float32 and s["step"].item() == 1 for s in optimizer.state.values())
    optimizer.step()


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adadelta", "Adagrad"])
def test_a_sparse_gradient_is_refused_with_the_fix(name):
    w = torch.nn.Parameter(torch.randn(5, 3))
    w.grad = torch.randn(5, 3).to_sparse()
    with pytest.raises(RuntimeError, match=rf"{name}: the gradient of a parameter of shape \(5, 3\) is sparse; "
                                           r"handgrad's updates are dense"):
        getattr(handgrad.optim, name)([w]).step()
