"""handgrad's optimisers: each update rule written out in foreach ops, one line of its formula each, and
proven equal to torch.optim's bit for bit (tests/test_optim*.py).

    SGD        w <- w - lr * grad, with momentum, Nesterov momentum, weight decay    (sgd.py)

Each is a torch.optim.Optimizer subclass with torch's constructor, defaults, param_group keys and state,
so its state_dict loads into torch's optimiser and back (base.py: what they share, and the options
refused). The ``*_step_`` functions are the updates themselves, for callers that hold their own gradients
(handgrad.steps' fused training step calls ``sgd_step_``).
"""

from handgrad.optim.base import HandOptimizer
from handgrad.optim.sgd import SGD, sgd_step_

__all__ = ["SGD", "HandOptimizer", "sgd_step_"]
