"""handgrad.functional.function: the @twinned decorator (three classes and the dispatch between them),
may_overwrite, zero_link, and the refusal of second derivatives by Functions still once_differentiable."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as torch_F
from test_amp import BF16  # tests/ is on sys.path under pytest
from torch.func import grad, hessian, jacrev, vmap

import handgrad.functional as F
from handgrad.functional.function import TwinnedFunction, may_overwrite, twinned, zero_link

SEEN: list[str] = []  # the ctx class each Cube.setup_context was handed: it tells which torch Function ran


@twinned
class Cube(TwinnedFunction):
    """y = x^3;  grad_x = 3 x^2 grad_y;  t_y = 3 x^2 t_x"""

    @staticmethod
    def forward(input):
        return input**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        SEEN.append(type(ctx).__name__)
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return 3 * x * x * grad_output

    @staticmethod
    def jvp(ctx, t_input):
        (x,) = ctx.saved_tensors
        return 3 * x * x * t_input


def which_class_runs(run) -> str:
    """"fast" if ``run`` called the fast class (its ctx is its own backward node), else "twin" (torch.func
    hands the twin's setup_context its own node or, under vmap, a wrapper of its saved tensors)."""
    SEEN.clear()
    run()
    return "fast" if SEEN == ["CubeBackward"] else "twin"


def test_the_fast_class_is_handed_one_combined_forward_and_no_jvp():
    assert Cube.setup_context is torch.autograd.Function.setup_context  # so torch calls forward(ctx, *args)
    assert "jvp" not in Cube.__dict__ and "jvp" in Cube.transformable.__dict__  # dynamo refuses a jvp
    assert "jvp" not in Cube.traceable.__dict__ and Cube.transformable.generate_vmap_rule
    assert Cube.apply is Cube.call


def test_dispatch_takes_the_twin_only_under_a_transform_or_forward_ad():
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert which_class_runs(lambda: torch.autograd.grad(Cube.call(x).sum(), x, create_graph=True)) == "fast"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert which_class_runs(lambda: Cube.call(x)) == "fast"

    def dual():
        with fwAD.dual_level():
            Cube.call(fwAD.make_dual(x.detach(), torch.ones(4, dtype=torch.float64)))
    assert which_class_runs(dual) == "twin"
    assert which_class_runs(lambda: grad(lambda a: Cube.call(a).sum())(x.detach())) == "twin"
    assert which_class_runs(lambda: vmap(Cube.call)(x.detach())) == "twin"


def test_every_path_gives_the_same_derivatives():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(Cube.call, (x,), check_forward_ad=True, check_batched_grad=True,
                                    check_batched_forward_grad=True)
    assert torch.autograd.gradgradcheck(Cube.call, (x,))
    torch.testing.assert_close(hessian(lambda a: Cube.call(a).sum())(x.detach()), torch.diag(6 * x.detach()))


def test_a_function_defines_a_jvp_or_says_it_is_first_order():
    class NoJvp(TwinnedFunction):
        forward, setup_context, backward = Cube.forward, Cube.setup_context, Cube.backward

    with pytest.raises(TypeError, match="NoJvp: define a jvp staticmethod .* or set once_differentiable = True"):
        twinned(NoJvp)


# --------------------------------------------------------------------------- Functions not yet converted


@twinned
class FirstOrderSquare(TwinnedFunction):
    """y = x^2;  grad_x = 2 x grad_y, from x saved detached: a Function not yet written to rules R1-R8."""

    once_differentiable = True

    @staticmethod
    def forward(input):
        return input * input

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0].detach())

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return 2 * x * grad_output


def square_loss(a):
    return FirstOrderSquare.call(a).sum()


def test_first_order_function_gives_first_derivatives_everywhere():
    x = torch.randn(4, 3, dtype=torch.float64)
    expected = 2 * x
    torch.testing.assert_close(grad(square_loss)(x), expected)
    torch.testing.assert_close(jacrev(square_loss)(x), expected)
    leaf = x.clone().requires_grad_()
    square_loss(leaf).backward()
    torch.testing.assert_close(leaf.grad, expected)


def test_first_order_function_refuses_second_derivatives_by_name():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    refused = "handgrad's FirstOrderSquare is differentiable once only.*convert FirstOrderSquare"
    with pytest.raises(RuntimeError, match=refused):  # a gradient penalty: refused, never silently wrong
        torch.autograd.grad(square_loss(torch.tanh(x)), x, create_graph=True)
    with pytest.raises(RuntimeError, match=refused):
        jacrev(grad(square_loss))(x.detach())
    with pytest.raises(NotImplementedError, match="handgrad's FirstOrderSquare has no jvp yet"):
        hessian(square_loss)(x.detach())


# --------------------------------------------------------------------------- zero_link, may_overwrite


def test_zero_link_gives_torchs_zero_second_derivative_where_grad_y_has_no_graph():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    results = []
    for leaky_relu in (F.leaky_relu, torch_F.leaky_relu):
        (grad_x,) = torch.autograd.grad(leaky_relu(x, 0.1).sum(), x, create_graph=True)  # grad_y = ones
        results.append(torch.autograd.grad((grad_x * grad_x).sum(), x))  # raises without a link to x
    torch.testing.assert_close(results[0], results[1])
    assert not results[0][0].any()


def test_zero_link_returns_a_copy_that_can_be_updated_in_place():
    x = torch.randn(3, 4, requires_grad=True)
    F.leaky_relu(x, 0.1).sum().backward(create_graph=True)
    x.grad.mul_(0.5)  # as clip_grad_norm_ does; a view made inside a custom Function would refuse this
    assert zero_link(x, x.detach()) is x  # nothing to link: the result itself


OVERWRITE: list[bool] = []  # what may_overwrite(grad_output) said in each Double.backward


@twinned
class Double(TwinnedFunction):
    """y = 2 x;  grad_x = 2 grad_y;  t_y = 2 t_x"""

    @staticmethod
    def forward(input):
        return 2 * input

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad_output):
        OVERWRITE.append(may_overwrite(grad_output))
        return 2 * grad_output

    @staticmethod
    def jvp(ctx, t_input):
        return 2 * t_input


@pytest.mark.parametrize("backward, allowed", [
    (lambda y, x: y.backward(torch.ones(3)), True),  # an ordinary backward
    (lambda y, x: torch.autograd.grad(y, x, torch.ones(3), create_graph=True), False),  # grad mode on
    (lambda y, x: torch.autograd.grad(y, x, torch.eye(3), is_grads_batched=True), False),  # legacy vmap's batch
], ids=["backward", "create_graph", "is_grads_batched"])
def test_may_overwrite_only_where_nothing_differentiates_or_batches(backward, allowed):
    OVERWRITE.clear()
    x = torch.randn(3, requires_grad=True)
    backward(Double.call(x), x)
    assert OVERWRITE == [allowed]


def test_may_overwrite_is_false_under_a_transform():
    OVERWRITE.clear()
    vmap(grad(lambda a: Double.call(a).sum()))(torch.randn(2, 3))
    assert OVERWRITE == [False]
    with torch.no_grad():
        assert may_overwrite()


# --------------------------------------------------------------------------- autocast


def test_gradient_penalty_under_autocast_equals_torchs():
    """The casts run in front of the Function, where autograd records them: a second derivative under bf16
    autocast goes through them, as through autocast's own casts in front of torch's linear."""
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(shape, generator=g) for shape in ((8, 5), (4, 5), (4,)))
    results = []
    for linear in (F.linear, torch_F.linear):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            (grad_x,) = torch.autograd.grad(torch.tanh(linear(xs, ws, b)).float().sum(), xs, create_graph=True)
            results.append(torch.autograd.grad((grad_x * grad_x).sum(), ws))
    torch.testing.assert_close(results[0], results[1], **BF16)
