"""The table: one module per family of ops, each listing

    CASES            its OpCase rows (verify/compare.py), with the transform checks a row opts out of
    TORCH_OPS        handgrad op -> the OpInfo entries of its torch namesake (full names, variants included)
    TORCH_MODULES    the handgrad.nn classes whose torch namesake's ModuleInfo inputs run on them
    WITHOUT_OPINFO   (where there are such) handgrad ops whose torch namesake has no OpInfo
    KNOWN_FAILURES   torch samples known to fail, each with its reason and count (verify/samples.py)

and, where its ops need them (optional):

    SAMPLE_CALLS       handgrad op -> the op called with its OpInfo's arguments, where their order differs
                       (torch's embedding OpInfo passes the weight first)
    SAMPLE_REFERENCES  handgrad op -> f(sample): the reference for that sample instead of torch's op, or None
                       (attention's dropout samples: handgrad's masks differ from torch's kernel's by design)
    RANDOM_OPS         handgrad op -> torch.vmap randomness, for ops that draw random numbers
    TRANSFORM_MAX_ELEMENTS  handgrad op -> the size limit of its transform samples, where its smallest exceed 300

A family adds rows and entries in its own module; this one only gathers them, in the order the tables print.
"""

from __future__ import annotations

from handgrad.verify.cases import (
    activations,
    conv,
    dropout,
    fused,
    linear,
    losses,
    normalization,
    pooling,
    recurrent,
    sequence,
)

FAMILIES = (linear, activations, losses, conv, pooling, normalization, dropout, fused, sequence, recurrent)

MLP_CASES = linear.CASES + activations.CASES + losses.CASES
CNN_CASES = conv.CASES + pooling.CASES + normalization.CASES + dropout.CASES
FUSED_CASES = fused.CASES
SEQUENCE_CASES = sequence.CASES
RECURRENT_CASES = recurrent.CASES
OP_CASES = MLP_CASES + CNN_CASES + FUSED_CASES + SEQUENCE_CASES + RECURRENT_CASES

TORCH_OPS = {op: names for family in FAMILIES for op, names in family.TORCH_OPS.items()}
TORCH_MODULES = tuple(name for family in FAMILIES for name in family.TORCH_MODULES)
KNOWN_FAILURES = [entry for family in FAMILIES for entry in family.KNOWN_FAILURES]


def gathered(name: str) -> dict:
    """The families' optional mapping ``name``, merged."""
    return {key: value for family in FAMILIES for key, value in getattr(family, name, {}).items()}


SAMPLE_CALLS = gathered("SAMPLE_CALLS")
SAMPLE_REFERENCES = gathered("SAMPLE_REFERENCES")
RANDOM_OPS = gathered("RANDOM_OPS")
TRANSFORM_MAX_ELEMENTS = gathered("TRANSFORM_MAX_ELEMENTS")
WITHOUT_OPINFO = tuple(op for family in FAMILIES for op in getattr(family, "WITHOUT_OPINFO", ()))
