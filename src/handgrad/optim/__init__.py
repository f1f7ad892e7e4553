"""handgrad's optimisers: each update rule written out in foreach ops, one line of its formula each, and
proven equal to torch.optim's bit for bit (tests/test_optim*.py).

    SGD        w <- w - lr * grad, with momentum, Nesterov momentum, weight decay    (sgd.py)
    Adam       steps along m / sqrt(v), both running averages bias-corrected        (adam.py)
    AdamW      Adam with decoupled weight decay                                     (adam.py)
    RMSprop    grad / sqrt(running average of grad^2), optionally centered         (rmsprop.py)
    Adadelta   grad scaled by RMS of past updates / RMS of gradients                (adadelta.py)
    Adagrad    grad / sqrt(sum of all past grad^2)                                  (adagrad.py)

Each is a torch.optim.Optimizer subclass with torch's constructor, defaults, param_group keys and state,
so its state_dict loads into torch's optimiser and back (base.py: what they share, and the options
refused). The ``*_step_`` functions are the updates themselves, for callers that hold their own gradients
(handgrad.steps' fused training step calls ``sgd_step_``).

Every other public name of torch.optim is torch's own object (``Optimizer``, ``Adamax``, ``LBFGS``,
``lr_scheduler``, ``swa_utils``), so that ``import handgrad.optim as optim`` can replace
``import torch.optim as optim`` (handgrad.drop_in); ``from handgrad.optim.lr_scheduler import StepLR`` imports
torch's StepLR. ``HAND_WRITTEN`` lists handgrad's names.
"""

from typing import TYPE_CHECKING

import torch.optim

from handgrad import drop_in
from handgrad.optim.adadelta import Adadelta, adadelta_step_
from handgrad.optim.adagrad import Adagrad, adagrad_step_
from handgrad.optim.adam import Adam, AdamW, adam_step_
from handgrad.optim.base import HandOptimizer
from handgrad.optim.rmsprop import RMSprop, rmsprop_step_
from handgrad.optim.sgd import SGD, sgd_step_

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "Adadelta", "Adagrad", "HandOptimizer",
           "sgd_step_", "adam_step_", "rmsprop_step_", "adadelta_step_", "adagrad_step_"]

HAND_WRITTEN = frozenset(__all__)  # every other public name of torch.optim is torch's
__all__ += drop_in.from_torch(torch.optim, HAND_WRITTEN)
drop_in.register_submodules(__name__, torch.optim, {})

if not TYPE_CHECKING:
    __getattr__, __dir__ = drop_in.namespace(__name__, torch.optim, HAND_WRITTEN)
else:  # type checkers read torch.optim's other names here; the optimisers above stay handgrad's
    from torch.optim import *  # type: ignore[assignment]  # noqa: E402, F403
