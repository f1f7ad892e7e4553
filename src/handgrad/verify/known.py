"""The known failures of PyTorch's samples on handgrad (verify/samples.py), and their bookkeeping.

Each family lists its entries in verify/cases/<family>.py (KNOWN_FAILURES). An entry names the op or
handgrad.nn class, the check, a regex, the exact number of samples it explains and the reason.
``unexplained`` returns what the entries do not explain: a failing sample no entry matches, and an entry
whose count differs from the samples it matches. The tests fail on either, so a fix that makes a known
failure pass fails them until its entry's count is lowered or the entry deleted: the list cannot go stale.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownFailure:
    """Samples of ``target`` known to fail ``check``, each with its reason; delete the entry once fixed.

    ``target`` is a handgrad op ("cross_entropy") or handgrad.nn class ("CrossEntropyLoss"); ``check`` is
    "samples" (values and gradients against torch) or a transform ("gradgradcheck", "vmap_grad", "jvp");
    ``match`` is a regex searched in "<status>: <detail>"; ``count`` is how many samples fail that way
    (float64 and float32 together): the test fails when it changes, so the list can never go stale.
    """

    target: str
    check: str
    match: str
    count: int
    reason: str


@dataclass
class Outcome:
    status: str  # match | refused | crash | wrong | torch_error
    detail: str = ""
    sample: str = ""


def first_order_samples(op: str, function: str, gradgradcheck: int, jvp: int) -> list[KnownFailure]:
    """The entries of an op whose Function is still once_differentiable: gradgradcheck and jvp refused on
    that many of its transform samples."""
    return [KnownFailure(op, "gradgradcheck", f"{function} is differentiable once only", gradgradcheck,
                         f"first order only: {function} is not yet written to rules R1-R8"),
            KnownFailure(op, "jvp", f"{function} has no jvp yet", jvp, f"first order only: {function} has no jvp yet")]


def unexplained(target: str, check: str, outcomes: list[Outcome], known: list[KnownFailure]) -> list[str]:
    """What no entry of ``known`` explains: a failing sample no entry matches, or an entry of ``target`` and
    ``check`` whose count differs from the samples it matches (some have started to pass: lower it)."""
    entries = [k for k in known if k.target == target and k.check == check]
    counts = dict.fromkeys(entries, 0)
    problems = []
    for outcome in outcomes:
        if outcome.status in ("match", "torch_error"):
            continue
        text = f"{outcome.status}: {outcome.detail}"
        entry = next((k for k in entries if re.search(k.match, text)), None)
        if entry is None:
            problems.append(f"{text} [{outcome.sample}]")
        else:
            counts[entry] += 1
    problems += [f"known failure {k.match!r} ({k.reason}) matched {n} samples, not {k.count}: update its count, "
                 "or delete it if none is left" for k, n in counts.items() if n != k.count]
    return problems
