"""Check every hand-written op against torch autograd and print the evidence as a table.

    python scripts/check_grads.py                  # markdown table, exit status 1 if any op fails
    python scripts/check_grads.py --device cuda    # the first-order columns on the GPU (TF32 off)
    python scripts/check_grads.py --no-samples     # without the torch samples column (saves ~30 s)

For each row of handgrad.verify.OP_CASES: the largest absolute and relative difference between the
hand-written gradients (of every input) and autograd's, in float32 and float64, whether float32 passes
torch.testing.assert_close's default tolerances, and whether torch.autograd.gradcheck (finite
differences, float64) passes; then, in float64 on the CPU (handgrad.verify.transforms), gradgradcheck,
per-sample gradients (torch.func.vmap of torch.func.grad) and torch.func.jvp against torch's, and how
many of PyTorch's own OpInfo samples of the op's torch namesake match (handgrad.verify.samples, float64
and float32). A check a row opts out of shows its reason's tag (reasons below the table); it counts as a
failure only if it passes (the opt-out is stale). On CUDA the dropout row's reference draws its mask as
handgrad does (torch's CUDA dropout draws it in a fused kernel).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from functools import cache

import torch
from torch.autograd.gradcheck import GradcheckError

from handgrad.verify import OP_CASES, compare, gradcheck, seeded
from handgrad.verify.cases import KNOWN_FAILURES, TORCH_MODULES, TORCH_OPS
from handgrad.verify.known import unexplained
from handgrad.verify.module_samples import module_samples, run_module_sample
from handgrad.verify.samples import op_samples, run_op_sample
from handgrad.verify.transforms import CHECKS, FIRST_ORDER

TRANSFORM_COLUMNS = {"gradgradcheck": "gradgradcheck", "vmap_grad": "vmap per-sample grads", "jvp": "jvp"}


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


def transform_cell(case, check: str) -> tuple[str, bool]:
    """(the cell, whether it is as it should be): pass, FAIL, or an opt-out's tag when it fails as stated."""
    try:
        CHECKS[check](case)
        passed = True
    except Exception:  # noqa: BLE001 (a failing check, whatever its kind)
        passed = False
    if check in case.opt_out:
        return (case.opt_out[check].split(":")[0], True) if not passed else ("pass (stale opt-out)", False)
    return ("pass", True) if passed else ("FAIL", False)


@cache
def samples_cell(op: str) -> tuple[str, bool]:
    """(matched/total of the op's torch samples, whether every other one is a known failure); "—" without any."""
    if op not in TORCH_OPS:
        return "—", True
    outcomes = [run_op_sample(c) for c in op_samples(op, TORCH_OPS[op])]
    counted = [o for o in outcomes if o.status != "torch_error"]
    matched = sum(o.status == "match" for o in counted)
    return f"{matched}/{len(counted)}", not unexplained(op, "samples", outcomes, KNOWN_FAILURES)


def check(case, device: str = "cpu", samples: bool = True) -> dict:
    row: dict = {"op": case.name}
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
    except GradcheckError:
        row["gradcheck"] = False
    row["transforms"] = {name: transform_cell(case, name) for name in TRANSFORM_COLUMNS}
    row["samples"] = samples_cell(case.op) if samples else ("not run", True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="check only the ops whose name starts with one of these")
    parser.add_argument("--device", default="cpu", help="where the first-order columns run: cpu (default) or cuda")
    parser.add_argument("--no-samples", action="store_true", help="skip the torch samples column")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # torch's notes on batching-rule fallbacks would break up the table
    cases = [c for c in OP_CASES if not args.only or any(c.name.startswith(p) for p in args.only)]
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # true float32 matmuls and convolutions
        torch.backends.cudnn.allow_tf32 = False

    mark = {True: "pass", False: "FAIL"}
    print("| op | fp32 max abs err | fp32 max rel err | fp32 assert_close | fp64 max abs err | fp64 max rel err "
          "| fp64 gradcheck | " + " | ".join(TRANSFORM_COLUMNS.values()) + " | torch samples matched/total |")
    print("|---|---:|---:|:---:|---:|---:|:---:|" + ":---:|" * len(TRANSFORM_COLUMNS) + "---:|")
    failures, tags = 0, set()
    for case in cases:
        row = check(case, args.device, samples=not args.no_samples)
        cells = [row["transforms"][name] for name in TRANSFORM_COLUMNS] + [row["samples"]]
        ok = row["fp32_ok"] and row["fp64_ok"] and row["gradcheck"] and all(good for _, good in cells)
        failures += not ok
        tags |= {case.opt_out[name].split(":")[0] for name in TRANSFORM_COLUMNS if name in case.opt_out}
        print(f"| {row['op']} | {row['fp32_abs']:.1e} | {row['fp32_rel']:.1e} | {mark[row['fp32_ok']]} "
              f"| {row['fp64_abs']:.1e} | {row['fp64_rel']:.1e} | {mark[row['gradcheck']]} | "
              + " | ".join(cell for cell, _ in cells) + " |")
    print(f"\n{len(cases) - failures} of {len(cases)} ops match autograd"
          + ("" if not failures else f"; {failures} FAILED"))
    if not args.no_samples and not args.only:
        failures += print_sample_totals(cases)
    for tag in sorted(tags):
        details = sorted(set(reasons_for(cases, tag)))
        if tag == FIRST_ORDER:  # "<Function> is once_differentiable ...", "<Function> has no jvp yet"
            details = [f"{', '.join(sorted({d.split()[0] for d in details}))} (once_differentiable, no jvp yet)"]
        print(f"\n{tag} (opted out, tested to fail): {'; '.join(details)}")
    return 1 if failures else 0


def print_sample_totals(cases) -> int:
    """The torch-samples totals: OpInfo samples over the table's distinct ops, and the ModuleInfo inputs of
    every handgrad.nn twin with one (float64 and float32, train and eval). Returns 1 if any is unexplained."""
    ops = sorted({case.op for case in cases if case.op in TORCH_OPS})
    cells = [samples_cell(op)[0].split("/") for op in ops]
    print(f"PyTorch's OpInfo samples: {sum(int(m) for m, _ in cells)} of {sum(int(t) for _, t in cells)} match "
          f"({len(ops)} ops)")
    matched = total = 0
    bad = False
    for name in TORCH_MODULES:
        outcomes = [run_module_sample(c) for c in module_samples(name)]
        counted = [o for o in outcomes if o.status != "torch_error"]
        matched += sum(o.status == "match" for o in counted)
        total += len(counted)
        bad = bad or bool(unexplained(name, "samples", outcomes, KNOWN_FAILURES))
    print(f"PyTorch's ModuleInfo inputs: {matched} of {total} match ({len(TORCH_MODULES)} handgrad.nn modules)")
    return int(bad or matched != total)


def reasons_for(cases, tag: str) -> list[str]:
    """The details of every opt-out (of the printed columns) whose reason starts with ``tag``."""
    return [reason.split(":", 1)[1].strip() for case in cases for name, reason in case.opt_out.items()
            if name in TRANSFORM_COLUMNS and reason.split(":")[0] == tag]


if __name__ == "__main__":
    sys.exit(main())
