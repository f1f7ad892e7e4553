"""Every row of the table (handgrad.verify.OP_CASES), in float64, through double backward and every
torch.func transform, against its torch reference (handgrad.verify.transforms): gradgradcheck, a
gradient penalty, per-sample gradients, jvp, jacrev, jacfwd, hessian.

A row may opt out of a check only with a reason (OpCase.opt_out); the check then runs anyway and must
fail (an xfail, its reason in pytest's summary), so an opt-out that has started to pass fails the test
until it is deleted.
"""

from __future__ import annotations

import pytest

from handgrad.verify import OP_CASES
from handgrad.verify.transforms import CHECKS


@pytest.mark.parametrize("case, check", [pytest.param(case, check, id=f"{case.name}-{check}")
                                         for case in OP_CASES for check in CHECKS])
def test_transform_matches_torch(case, check):
    if check not in case.opt_out:
        CHECKS[check](case)
        return
    if fails(CHECKS[check], case):  # tried here, not under an xfail mark: pytest formats each failure's long
        pytest.xfail(case.opt_out[check])  # traceback through torch, ~0.2 s apiece
    pytest.fail(f"{case.name}: {check} passes now; delete its opt-out ({case.opt_out[check]!r})")


def fails(check, case) -> bool:
    try:
        check(case)
    except Exception:  # noqa: BLE001 (the known failure, whatever its kind)
        return True
    return False


def test_every_opt_out_names_a_check_and_gives_a_reason():
    for case in OP_CASES:
        assert set(case.opt_out) <= set(CHECKS), (case.name, set(case.opt_out) - set(CHECKS))
        assert all(len(reason) > 20 for reason in case.opt_out.values()), case.name


def test_a_wrong_second_derivative_fails_the_checks():
    """The checks can fail: a Function whose backward reads a copy saved without its graph (breaking rule R1)
    has the right first derivative and a wrong second one."""
    from handgrad.functional.function import TwinnedFunction, twinned
    from handgrad.verify import OpCase
    from handgrad.verify.inputs import elementwise_inputs

    @twinned
    class Cube(TwinnedFunction):
        """y = x^3; grad_x = 3 x^2 grad_y, from a detached x: its own derivative is lost."""

        @staticmethod
        def forward(input):
            return input**3

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0].detach())  # wrong on purpose (R1)
            ctx.save_for_forward(inputs[0].detach())

        @staticmethod
        def backward(ctx, grad_output):
            (x,) = ctx.saved_tensors
            return 3 * x * x * grad_output

        @staticmethod
        def jvp(ctx, t_input):
            (x,) = ctx.saved_tensors
            return 3 * x * x * t_input

    case = OpCase("cube", lambda input: Cube.call(input), lambda input: input**3, elementwise_inputs)
    for check in ("gradgradcheck", "penalty", "hessian"):
        with pytest.raises((AssertionError, RuntimeError)):  # GradcheckError is a RuntimeError
            CHECKS[check](case)
    CHECKS["jacrev"](case)  # first derivatives are right
