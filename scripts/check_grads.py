"""Check every hand-written op against torch autograd and print the evidence as a table.

    python scripts/check_grads.py            # markdown table, exit status 1 if any op fails

For each row of handgrad.verify.OP_CASES: the largest absolute and relative difference
between the hand-written gradients (of every input) and autograd's, in float32 and
float64, whether float32 passes torch.testing.assert_close's default tolerances, and
whether torch.autograd.gradcheck (finite differences, float64) passes.
"""

from __future__ import annotations

import argparse
import sys

import torch

from handgrad.verify import OP_CASES, compare, gradcheck


def check(case) -> dict:
    row = {"op": case.name}
    for dtype, label in ((torch.float32, "fp32"), (torch.float64, "fp64")):
        comparison = compare(case.hand, case.reference, case.inputs(dtype), case.kwargs)
        row[f"{label}_abs"], row[f"{label}_rel"] = comparison.max_errors()
        try:
            comparison.assert_close()
            row[f"{label}_ok"] = True
        except AssertionError:
            row[f"{label}_ok"] = False
    try:
        row["gradcheck"] = gradcheck(case.hand, case.inputs(torch.float64), case.kwargs)
    except torch.autograd.GradcheckError:
        row["gradcheck"] = False
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="check only the ops whose name starts with one of these")
    args = parser.parse_args()
    cases = [c for c in OP_CASES if not args.only or any(c.name.startswith(p) for p in args.only)]

    mark = {True: "pass", False: "FAIL"}
    print("| op | fp32 max abs err | fp32 max rel err | fp32 assert_close | fp64 max abs err | fp64 max rel err "
          "| fp64 gradcheck |")
    print("|---|---:|---:|:---:|---:|---:|:---:|")
    failures = 0
    for case in cases:
        row = check(case)
        ok = row["fp32_ok"] and row["fp64_ok"] and row["gradcheck"]
        failures += not ok
        print(f"| {row['op']} | {row['fp32_abs']:.1e} | {row['fp32_rel']:.1e} | {mark[row['fp32_ok']]} "
              f"| {row['fp64_abs']:.1e} | {row['fp64_rel']:.1e} | {mark[row['gradcheck']]} |")
    print(f"\n{len(cases) - failures} of {len(cases)} ops match autograd"
          + ("" if not failures else f"; {failures} FAILED"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
