"""Proof that a hand-written backward equals autograd's: helpers, checks and one table of ops.

    compare.py      ``compare(hand, reference, inputs)``: outputs and every input's gradient side by side;
                    ``OpCase``, a row of the table; ``gradcheck``
    transforms.py   the higher-order checks of a row: gradgradcheck, a gradient penalty, per-sample
                    gradients (vmap of grad), jvp, jacrev, jacfwd, hessian, each against torch's
    samples.py      PyTorch's own OpInfo samples run on handgrad's ops (module_samples.py: ModuleInfo
                    inputs on handgrad.nn); known.py: the samples known to fail, and their bookkeeping
    inputs.py       input generators the rows share
    cases/          the table, one module per family of ops

The tests and ``scripts/check_grads.py`` read ``OP_CASES`` and the families' sample mappings.
"""

from handgrad.verify.cases import CNN_CASES, FUSED_CASES, MLP_CASES, OP_CASES
from handgrad.verify.cases.fused import (
    TORCH_ACTIVATIONS,
    linear_activation_reference,
    max_pool2d_relu_reference,
    mlp_by_name,
    mlp_loss_by_name,
    mlp_loss_reference,
    mlp_reference,
)
from handgrad.verify.compare import Comparison, Inputs, OpCase, compare, fresh_copies, gradcheck, gradient_message
from handgrad.verify.inputs import away_from_zero, class_indices, distinct, randn, seeded

__all__ = [
    "CNN_CASES",
    "FUSED_CASES",
    "MLP_CASES",
    "OP_CASES",
    "TORCH_ACTIVATIONS",
    "Comparison",
    "Inputs",
    "OpCase",
    "away_from_zero",
    "class_indices",
    "compare",
    "distinct",
    "fresh_copies",
    "gradcheck",
    "gradient_message",
    "linear_activation_reference",
    "max_pool2d_relu_reference",
    "mlp_by_name",
    "mlp_loss_by_name",
    "mlp_loss_reference",
    "mlp_reference",
    "randn",
    "seeded",
]
