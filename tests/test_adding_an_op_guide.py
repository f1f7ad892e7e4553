"""docs/adding-an-op.md stays true: its code blocks are the source as it is, its commands name real files
and select real tests, its worked example (softplus, nn.Softplus) is in every table the guide names, and
the op is right against torch where it is easiest to get wrong: at the threshold where torch switches to
the identity, for several beta and threshold, and at magnitudes where e^(beta x) overflows."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as torch_F

import handgrad.functional as F
import handgrad.nn as nn
from handgrad.verify import OP_CASES
from handgrad.verify.cases import TORCH_MODULES, TORCH_OPS

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "adding-an-op.md"
SOURCE = "\n".join(path.read_text() for path in sorted((REPO / "src" / "handgrad").rglob("*.py")))


def blocks(language: str) -> list[str]:
    """The guide's fenced code blocks of ``language`` ("" for those without one)."""
    return [body for lang, body in re.findall(r"^```(\w*)\n(.*?)^```$", GUIDE.read_text(), re.S | re.M)
            if lang == language]


def commands() -> list[list[str]]:
    return [shlex.split(line) for block in blocks("bash") for line in block.splitlines() if line.strip()]


# --------------------------------------------------------------------------- the guide against the source


def stale(code: list[str]) -> list[str]:
    """The first line of each block that does not appear verbatim in src/handgrad."""
    return [body.splitlines()[0] for body in code if body.rstrip("\n") not in SOURCE]


def test_every_code_block_is_the_source_verbatim():
    code = blocks("python")
    assert len(code) >= 6
    assert not stale(code), f"docs/adding-an-op.md shows code that is not in src/handgrad as it is: {stale(code)}"


def test_the_check_finds_a_stale_block():
    (wrapper,) = [body for body in blocks("python") if "return Softplus.call(input, beta, threshold)" in body]
    edited = wrapper.replace("Softplus.call(input, beta, threshold)", "Softplus.call(input, threshold, beta)")
    assert stale([wrapper]) == [] and stale([edited]) == [edited.splitlines()[0]]


def test_every_path_the_guide_names_exists():
    named = set(re.findall(r"`((?:src|tests|scripts|docs)/[\w/.-]+\.(?:py|md))(?:::(\w+))?`", GUIDE.read_text()))
    assert len(named) >= 10
    for path, test in named:
        assert (REPO / path).is_file(), path
        if test:
            assert f"def {test}(" in (REPO / path).read_text(), f"{path}::{test}"


def test_the_commands_run_real_scripts_and_select_real_tests():
    runs = commands()
    assert len(runs) >= 4
    for run in runs:
        files = [arg for arg in run if arg.endswith(".py") and "/" in arg and not arg.startswith(".venv")]
        assert files and all((REPO / path).is_file() for path in files), run
        if "--only" in run:
            prefix = run[run.index("--only") + 1]
            assert any(case.name.startswith(prefix) for case in OP_CASES), run
    pytest_runs = [run for run in runs if "pytest" in run and "-k" in run]
    assert pytest_runs
    for run in pytest_runs:  # one collection per command: each of its test files contributes tests
        files = [arg for arg in run if arg.startswith("tests/")]
        keyword = run[run.index("-k") + 1]
        collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                    *files, "-k", keyword], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert collected.returncode == 0, collected.stdout[-2000:] + collected.stderr[-2000:]
        for path in files:
            assert f"{path}::" in collected.stdout, f"{path} -k {keyword} selects no test"


def test_the_table_rows_shown_are_the_ops_rows():
    (printed,) = [body for body in blocks("") if body.startswith("| softplus")]
    shown = [line.split(" | ")[0].removeprefix("| ") for line in printed.splitlines()]
    assert shown == [case.name for case in OP_CASES if case.op == "softplus"]


def test_the_example_is_in_every_table():
    assert [case.name for case in OP_CASES if case.op == "softplus"] == ["softplus", "softplus(beta=2, threshold=3)"]
    assert TORCH_OPS["softplus"] == ("nn.functional.softplus",) and "Softplus" in TORCH_MODULES
    assert "softplus" in F.__all__ and "Softplus" in nn.__all__


# --------------------------------------------------------------------------- the example op against torch

SETTINGS = [(1.0, 20.0), (2.0, 3.0), (0.5, 1.0), (-1.0, 20.0), (3.0, 0.0), (1.0, 100.0)]


def around_the_threshold(beta: float, threshold: float, dtype: torch.dtype) -> torch.Tensor:
    """x on a grid, at magnitudes where e^(beta x) overflows, and at threshold / beta with its neighbours."""
    at = torch.tensor(threshold / beta, dtype=dtype)
    neighbours = [torch.nextafter(at, at + step) for step in (-1, 1)]
    neighbours += [torch.nextafter(n, n + step) for n, step in zip(neighbours, (-1, 1), strict=True)]
    return torch.cat([torch.linspace(-100, 100, 401, dtype=dtype), torch.tensor([-1e4, -89.0, 89.0, 1e4], dtype=dtype),
                      at.reshape(1), torch.stack(neighbours)])


@pytest.mark.parametrize("beta, threshold", SETTINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_softplus_matches_torch_around_the_threshold(beta, threshold, dtype):
    x = around_the_threshold(beta, threshold, dtype)
    ours_x, torch_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, theirs = F.softplus(ours_x, beta, threshold), torch_F.softplus(torch_x, beta, threshold)
    upstream = torch.linspace(-1, 1, len(x), dtype=dtype)
    (grad,) = torch.autograd.grad(ours, ours_x, upstream)
    (expected_grad,) = torch.autograd.grad(theirs, torch_x, upstream)
    assert ours.dtype == dtype and torch.isfinite(ours).all() and torch.isfinite(grad).all()
    # torch's log1p(e^z) overflows where 88 < z <= threshold in float32 (threshold 100): inf, and a nan gradient;
    # the stable form gives x and 1 there, the limits of y and dy/dx
    overflow = ~torch.isfinite(theirs)
    assert overflow.any() == (threshold > 88 and dtype != torch.float64)
    torch.testing.assert_close(ours[~overflow], theirs[~overflow])
    torch.testing.assert_close(grad[~overflow], expected_grad[~overflow])
    torch.testing.assert_close(ours[overflow], x[overflow])
    torch.testing.assert_close(grad[overflow], upstream[overflow])
    identity = x.float() * beta > threshold  # torch returns x itself there, and passes the gradient through
    assert identity.any() and (~identity).any()
    assert torch.equal(ours[identity], theirs[identity]) and torch.equal(ours[identity], x[identity])
    assert torch.equal(grad[identity], upstream[identity])


@pytest.mark.parametrize("beta, threshold", SETTINGS)
def test_softplus_second_derivative_is_torchs_off_the_threshold(beta, threshold):
    x = around_the_threshold(beta, threshold, torch.float64)
    x = x[x * beta != threshold]  # there torch's second derivative is 0 while its first is still sigma (see the guide)
    seconds = []
    for softplus in (F.softplus, torch_F.softplus):
        leaf = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(softplus(leaf, beta, threshold).sum(), leaf, create_graph=True)
        seconds.append(torch.autograd.grad(grad.sum(), leaf)[0])
    torch.testing.assert_close(*seconds)


def test_the_module_twin_is_torchs_with_the_hand_written_forward():
    ours, theirs = nn.Softplus(beta=2.0, threshold=5.0), torch.nn.Softplus(beta=2.0, threshold=5.0)
    assert repr(ours) == repr(theirs) and isinstance(ours, torch.nn.Softplus)
    x = torch.randn(4, 7, generator=torch.Generator().manual_seed(0)) * 4
    torch.testing.assert_close(ours(x), theirs(x))
    assert ours(x.requires_grad_()).grad_fn.name().startswith("Softplus")


def test_softplus_refuses_an_integer_input_naming_the_fix():
    with pytest.raises(TypeError, match=r"^softplus: input of dtype torch.int64 is not a floating-point tensor; "
                                        r"pass e.g. input.float\(\)$"):
        F.softplus(torch.arange(3))
