"""The table: one module per family of ops, each listing

    CASES            its OpCase rows (verify/compare.py), with the transform checks a row opts out of
    TORCH_OPS        handgrad op -> the OpInfo entries of its torch namesake (full names, variants included)
    TORCH_MODULES    the handgrad.nn classes whose torch namesake's ModuleInfo inputs run on them
    WITHOUT_OPINFO   (where there are such) handgrad ops whose torch namesake has no OpInfo
    KNOWN_FAILURES   torch samples known to fail, each with its reason and count (verify/samples.py)

A family adds rows and entries in its own module; this one only gathers them, in the order the tables print.
"""

from __future__ import annotations

from handgrad.verify.cases import activations, conv, dropout, fused, linear, losses, normalization, pooling, recurrent

FAMILIES = (linear, activations, losses, conv, pooling, normalization, dropout, fused, recurrent)

MLP_CASES = linear.CASES + activations.CASES + losses.CASES
CNN_CASES = conv.CASES + pooling.CASES + normalization.CASES + dropout.CASES
FUSED_CASES = fused.CASES
RECURRENT_CASES = recurrent.CASES
OP_CASES = MLP_CASES + CNN_CASES + FUSED_CASES + RECURRENT_CASES

TORCH_OPS = {op: names for family in FAMILIES for op, names in family.TORCH_OPS.items()}
TORCH_MODULES = tuple(name for family in FAMILIES for name in family.TORCH_MODULES)
KNOWN_FAILURES = [entry for family in FAMILIES for entry in family.KNOWN_FAILURES]
WITHOUT_OPINFO = tuple(op for family in FAMILIES for op in getattr(family, "WITHOUT_OPINFO", ()))
