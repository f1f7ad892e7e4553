"""Check every hand-written op against torch autograd and print the evidence as a table.

    python scripts/check_grads.py                  # markdown table, exit status 1 if any op fails
    python scripts/check_grads.py --device cuda    # the same table on the GPU (TF32 off)

For each row of handgrad.verify.OP_CASES: the largest absolute and relative difference
between the hand-written gradients (of every input) and autograd's, in float32 and
float64, whether float32 passes torch.testing.assert_close's default tolerances, and
whether torch.autograd.gradcheck (finite differences, float64) passes. On CUDA the dropout row's
reference draws its mask as handgrad does (torch's CUDA dropout draws it in a fused kernel).
"""

from __future__ import annotations

import argparse
import sys

import torch

from handgrad.verify import OP_CASES, compare, gradcheck, seeded


def to_device(inputs: dict, device: str) -> dict:
    """The inputs on ``device``: each tensor a new leaf there, requiring grad where its original did."""
    return {name: value.detach().to(device).requires_grad_(value.requires_grad) if isinstance(value, torch.Tensor)
            else value for name, value in inputs.items()}


def dropout_with_handgrads_mask(input, p):
    """Dropout from torch ops, its mask drawn as handgrad's dropout draws it (bernoulli_ into a bool tensor)."""
    mask = torch.empty_like(input, dtype=torch.bool).bernoulli_(1 - p)
    return input * mask * (1 / (1 - p))


def reference(case, device: str):
    if device != "cpu" and case.name.startswith("dropout"):
        return seeded(dropout_with_handgrads_mask)
    return case.reference


def check(case, device: str = "cpu") -> dict:
    row = {"op": case.name}
    for dtype, label in ((torch.float32, "fp32"), (torch.float64, "fp64")):
        comparison = compare(case.hand, reference(case, device), to_device(case.inputs(dtype), device), case.kwargs)
        row[f"{label}_abs"], row[f"{label}_rel"] = comparison.max_errors()
        try:
            comparison.assert_close()
            row[f"{label}_ok"] = True
        except AssertionError:
            row[f"{label}_ok"] = False
    try:
        row["gradcheck"] = gradcheck(case.hand, to_device(case.inputs(torch.float64), device), case.kwargs)
    except torch.autograd.GradcheckError:
        row["gradcheck"] = False
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="check only the ops whose name starts with one of these")
    parser.add_argument("--device", default="cpu", help="where the ops run: cpu (default) or cuda")
    args = parser.parse_args()
    cases = [c for c in OP_CASES if not args.only or any(c.name.startswith(p) for p in args.only)]
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # true float32 matmuls and convolutions
        torch.backends.cudnn.allow_tf32 = False

    mark = {True: "pass", False: "FAIL"}
    print("| op | fp32 max abs err | fp32 max rel err | fp32 assert_close | fp64 max abs err | fp64 max rel err "
          "| fp64 gradcheck |")
    print("|---|---:|---:|:---:|---:|---:|:---:|")
    failures = 0
    for case in cases:
        row = check(case, args.device)
        ok = row["fp32_ok"] and row["fp64_ok"] and row["gradcheck"]
        failures += not ok
        print(f"| {row['op']} | {row['fp32_abs']:.1e} | {row['fp32_rel']:.1e} | {mark[row['fp32_ok']]} "
              f"| {row['fp64_abs']:.1e} | {row['fp64_rel']:.1e} | {mark[row['gradcheck']]} |")
    print(f"\n{len(cases) - failures} of {len(cases)} ops match autograd"
          + ("" if not failures else f"; {failures} FAILED"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
