"""handgrad.coverage: which nodes a backward ran are handgrad's, which autograd's, and which module made them."""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path

import pytest
import torch

import handgrad
import handgrad.functional as F
import handgrad.nn as hnn
from handgrad.coverage_graph import HANDGRAD_FUNCTIONS, op_and_kind
from handgrad.coverage_report import BEFORE, NOT_OBSERVED, OUTSIDE, Counts, CoverageError

DOC = Path(__file__).resolve().parent.parent / "docs" / "coverage.md"


def batch(n: int = 4, features: int = 6, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, features, generator=g), torch.randint(classes, (n,), generator=g)


def handgrad_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(hnn.Linear(6, 8), hnn.ReLU(), hnn.Linear(8, 3))


def mixed_mlp() -> torch.nn.Module:
    """handgrad's Linear, then torch's SiLU (which has no handgrad twin) and Linear."""
    torch.manual_seed(0)
    return torch.nn.Sequential(hnn.Linear(6, 8), torch.nn.SiLU(), torch.nn.Linear(8, 3))


def autograd_pairs(report) -> set[tuple[str, str]]:
    return {(r.op, r.module) for r in report.nodes if r.kind == "autograd"}


# --------------------------------------------------------------------------- what is counted


def test_an_all_handgrad_mlp_is_fully_hand_written():
    model, (x, y) = handgrad_mlp(), batch()
    with handgrad.coverage(model) as report:
        F.cross_entropy(model(x), y).backward()

    assert report.share == 1.0
    assert (report.hand, report.autograd, report.bookkeeping) == (4, 0, 4)  # 4 AccumulateGrad
    assert report.by_op == {"LinearBackward": 2, "ReLUBackward": 1, "CrossEntropyBackward": 1, "AccumulateGrad": 4}
    assert report.by_module == {"0": Counts(1, 0, 2), "1": Counts(1, 0, 0), "2": Counts(1, 0, 2),
                                OUTSIDE: Counts(1, 0, 0)}  # the loss, called outside the model


def test_a_mix_reports_exactly_the_torch_nodes_with_their_modules():
    model, (x, y) = mixed_mlp(), batch()
    with handgrad.coverage(model) as report:
        F.cross_entropy(model(x), y).backward()

    assert autograd_pairs(report) == {("SiluBackward0", "1"), ("AddmmBackward0", "2")}
    assert (report.hand, report.autograd) == (2, 2) and report.share == 0.5
    assert report.by_module["2"] == Counts(hand=0, autograd=1, bookkeeping=3)  # TBackward0 + weight, bias
    assert {r.twin for r in report.nodes if r.kind == "autograd"} == {None, "handgrad.nn.Linear"}


class Block(torch.nn.Module):
    """A module with children and an op of its own (the tanh), to test the innermost attribution."""

    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Sequential(torch.nn.Linear(6, 6), hnn.Sigmoid())

    def forward(self, x):
        return torch.tanh(self.inner(x)) + x


def test_each_node_belongs_to_the_innermost_module_whose_forward_created_it():
    model = torch.nn.Sequential(Block(), hnn.Linear(6, 3))
    x, y = batch()
    with handgrad.coverage(model) as report:
        logits = model(x)
        F.cross_entropy(logits.exp().log(), y).backward()  # exp, log: functional torch ops outside the model

    assert autograd_pairs(report) == {("AddmmBackward0", "0.inner.0"), ("TanhBackward0", "0"),
                                      ("AddBackward0", "0"), ("ExpBackward0", OUTSIDE), ("LogBackward0", OUTSIDE)}
    assert {(r.op, r.module) for r in report.nodes if r.kind == "hand"} == {
        ("SigmoidBackward", "0.inner.1"), ("LinearBackward", "1"), ("CrossEntropyBackward", OUTSIDE)}
    tanh = next(r for r in report.nodes if r.op == "TanhBackward0")
    assert tanh.twin == "handgrad.functional.tanh"  # made by a user module: the functional twin


def test_view_shape_and_accumulate_grad_nodes_are_bookkeeping_and_expand_is_arithmetic():
    w = torch.randn(3, 4, requires_grad=True)
    loss = F.relu(w.reshape(12).unsqueeze(0).mT.squeeze(1).clone().double())[:5].sum()
    assert {op: kind for op, kind in map(op_and_kind, walk(loss.grad_fn))} == {
        "SumBackward0": "autograd", "SliceBackward0": "bookkeeping", "ReLUBackward": "hand",
        "ToCopyBackward0": "bookkeeping", "CloneBackward0": "bookkeeping", "SqueezeBackward1": "bookkeeping",
        "TransposeBackward0": "bookkeeping", "UnsqueezeBackward0": "bookkeeping", "ViewBackward0": "bookkeeping",
        "AccumulateGrad": "bookkeeping"}
    broadcast = w[:, :1].expand(3, 4).sum()  # expand's backward sums over the broadcast columns
    assert op_and_kind(broadcast.grad_fn.next_functions[0][0]) == ("ExpandBackward0", "autograd")


def test_a_custom_function_from_outside_handgrad_is_autograd_and_named_with_its_module():
    class Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return 2 * x

        @staticmethod
        def backward(ctx, grad):
            return 2 * grad

    y = Double.apply(torch.ones(2, requires_grad=True))
    assert op_and_kind(y.grad_fn) == (f"{__name__}.DoubleBackward", "autograd")


def walk(root):
    seen, stack = [], [root]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.append(node)
            stack.extend(child for child, _ in node.next_functions)
    return seen


# --------------------------------------------------------------------------- only what the backward ran


class TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.head, self.aux = hnn.Linear(6, 8), hnn.Linear(8, 3), torch.nn.Linear(8, 2)

    def forward(self, x):
        h = self.body(x)
        self.aux_output = self.aux(h)  # computed, with a graph, but not part of the loss
        return self.head(h)


def test_nodes_the_backward_does_not_reach_are_not_counted():
    model, (x, y) = TwoHeads(), batch()
    with handgrad.coverage(model) as report:
        F.cross_entropy(model(x), y).backward()
    assert model.aux_output.grad_fn is not None  # the aux head's nodes exist ...
    assert report.autograd == 0 and "aux" not in report.by_module  # ... but never ran


def test_nodes_the_engine_prunes_are_not_counted():
    model, (x, y) = mixed_mlp(), batch()
    with handgrad.coverage(model) as report:
        loss = F.cross_entropy(model(x), y)
        loss.backward(inputs=[model[2].weight], retain_graph=True)  # runs nothing below the last layer
        torch.autograd.grad(loss, [model[2].bias])
    first, second = report.nodes[:4], report.nodes[4:]
    assert report.backward_calls == 2
    assert {r.op for r in first} == {"CrossEntropyBackward", "AddmmBackward0", "TBackward0", "AccumulateGrad"}
    assert {r.op for r in second} == {"CrossEntropyBackward", "AddmmBackward0"}  # grad() accumulates nothing
    assert "0" not in report.by_module and "1" not in report.by_module
    static = handgrad.coverage.of(loss, model)  # the static walk counts what a plain backward() would run
    assert static.by_op["SiluBackward0"] == 1 and static.by_op["LinearBackward"] == 1


def test_nodes_created_before_the_block_are_labelled_so():
    model, (x, y) = mixed_mlp(), batch()
    logits = model(x)
    with handgrad.coverage(model) as report:
        F.cross_entropy(logits, y).backward()
    assert set(report.by_module) == {"0", "2", BEFORE, OUTSIDE}  # parameters still belong to their modules
    assert report.by_module[OUTSIDE] == Counts(hand=1)
    assert report.by_module[BEFORE] == Counts(hand=1, autograd=2, bookkeeping=1)  # linear, SiLU, addmm, t


# --------------------------------------------------------------------------- the two forms


@pytest.mark.parametrize("make_model", [handgrad_mlp, mixed_mlp])
def test_the_context_manager_and_the_function_agree(make_model):
    model, (x, y) = make_model(), batch()
    with handgrad.coverage(model) as observed:
        loss = F.cross_entropy(model(x), y)
        loss.backward(retain_graph=True)
    walked = handgrad.coverage.of(loss, model)

    assert walked.by_op == observed.by_op
    assert walked.total == observed.total and walked.share == observed.share
    assert sorted((r.op, r.order) for r in walked.nodes) == sorted((r.op, r.order) for r in observed.nodes)
    for name in ("0", "2"):  # modules with parameters: the function finds them from the parameters read
        assert walked.by_module[name] == observed.by_module[name]
    activation, loss_node = observed.by_module["1"], observed.by_module[OUTSIDE]  # no parameters to go by
    assert walked.by_module[NOT_OBSERVED] == Counts(activation.hand + loss_node.hand,
                                                    activation.autograd + loss_node.autograd)


def test_the_function_attributes_a_node_reading_parameters_of_two_modules_to_their_common_parent():
    model = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)))
    x = batch()[0]
    first, second = model[0]
    loss = torch.nn.functional.linear(x, first.weight + second.weight).sum()
    report = handgrad.coverage.of(loss, model)
    assert {(r.op, r.module) for r in report.nodes} == {
        ("SumBackward0", NOT_OBSERVED), ("MmBackward0", NOT_OBSERVED), ("TBackward0", NOT_OBSERVED),
        ("AddBackward0", "0"), ("AccumulateGrad", "0.0"), ("AccumulateGrad", "0.1")}


# --------------------------------------------------------------------------- strict mode


def test_strict_mode_names_each_torch_node_its_module_and_the_handgrad_twin():
    model, (x, y) = mixed_mlp(), batch()
    with pytest.raises(CoverageError) as caught, handgrad.coverage(model, strict=True) as report:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    assert str(caught.value) == (
        "handgrad.coverage(strict=True): 4 of 5 arithmetic gradient nodes were computed by autograd, not by "
        "handgrad (hand-written share 20.0%):\n"
        "  SiluBackward0        in module '1' (SiLU): handgrad has no twin\n"
        "  AddmmBackward0       in module '2' (Linear): use handgrad.nn.Linear\n"
        "  LogSoftmaxBackward0  in (outside any module): use handgrad.functional.log_softmax\n"
        "  NllLossBackward0     in (outside any module): use handgrad.functional.cross_entropy\n"
        "Replace them with their handgrad twins, or leave strict=False to get the report without this error.")
    assert caught.value.report is report and report.autograd == 4  # the report is still there
    assert model[0].weight.grad is not None  # the backward ran in full before the error


def test_strict_mode_lists_ten_pairs_then_counts_the_rest():
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(6, 6) for _ in range(12)])
    with pytest.raises(CoverageError, match=r"(?s)'9' \(Linear\).*\n  \.\.\. and 3 more \(op, module\) pairs"):
        handgrad.coverage.of(model(batch()[0]).sum(), model, strict=True)


def test_strict_mode_passes_an_all_handgrad_model():
    model, (x, y) = handgrad_mlp(), batch()
    with handgrad.coverage(model, strict=True) as report:
        F.cross_entropy(model(x), y).backward()
    assert report.share == 1.0
    handgrad.coverage.of(F.cross_entropy(model(x), y), model, strict=True)


@pytest.mark.parametrize("name", sorted(hnn.HAND_WRITTEN - {"functional"}))  # its module classes
def test_every_torch_twin_of_a_handgrad_module_is_pointed_to_it(name):
    twin = getattr(torch.nn, name)
    args = {"Linear": (6, 3), "Conv2d": (1, 2, 3), "MaxPool2d": (2,), "AvgPool2d": (2,), "BatchNorm1d": (6,),
            "BatchNorm2d": (1,), "BatchNorm3d": (1,), "LayerNorm": (6,), "Softmax": (1,), "LogSoftmax": (1,),
            "Embedding": (10, 6), **dict.fromkeys(["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"], (6, 3))
            }.get(name, ())
    module = twin(*args)
    x = torch.randn(4, 1, 6, 6) if name in ("Conv2d", "MaxPool2d", "AvgPool2d", "BatchNorm2d", "Dropout2d") else \
        torch.randn(4, 1, 2, 3, 3) if name in ("BatchNorm3d", "Dropout3d") else torch.randn(4, 6)
    x = torch.rand(4, 6) if name == "BCELoss" else x  # probabilities
    x = torch.randint(10, (4, 6)) if name == "Embedding" else x.requires_grad_(True)  # token indices: no gradient
    classes, values = (torch.tensor([0, 1, 2, 3]),), (torch.rand(4, 6),)
    loss_args = {"CrossEntropyLoss": classes, "NLLLoss": classes, "MSELoss": values, "L1Loss": values,
                 "SmoothL1Loss": values, "HuberLoss": values, "KLDivLoss": values, "BCELoss": values,
                 "BCEWithLogitsLoss": values}.get(name, ())
    with handgrad.coverage(module) as report:
        output = module(x, *loss_args)
        (output[0] if isinstance(output, tuple) else output).sum().backward()  # recurrent layers: (output, state)
    twins = {r.twin for r in report.nodes if r.kind == "autograd" and r.module == ""}
    assert twins == {f"handgrad.nn.{name}"}


def test_every_functional_twin_exists():
    assert all(callable(getattr(F, function)) for function in HANDGRAD_FUNCTIONS.values())


# --------------------------------------------------------------------------- the text


def test_the_report_text():
    model, (x, y) = mixed_mlp(), batch()
    with handgrad.coverage(model) as report:
        F.cross_entropy(model(x), y).backward()
    assert str(report) == """\
handgrad.coverage: 1 backward ran 9 nodes: 2 hand-written, 2 autograd, 5 bookkeeping; hand-written share 50.0%

module                type    hand  autograd  bookkeeping   share
0                     Linear     1         0            2  100.0%
1                     SiLU       0         1            0    0.0%
2                     Linear     0         1            3    0.0%
(outside any module)             1         0            0  100.0%
total                            2         2            5   50.0%

op                    kind         nodes  modules               handgrad twin
LinearBackward        hand             1  0
CrossEntropyBackward  hand             1  (outside any module)
SiluBackward0         autograd         1  1                     none
AddmmBackward0        autograd         1  2                     handgrad.nn.Linear
TBackward0            bookkeeping      1  2
AccumulateGrad        bookkeeping      4  0, 2

hand: the backward of a handgrad.functional Function. autograd: any other node that computes
derivative arithmetic. bookkeeping: AccumulateGrad and the view, reshape, transpose, slice,
concatenation, copy and cast nodes, which pass gradient elements on unchanged; not in the share.
share = hand / (hand + autograd)."""
    assert repr(report) == "CoverageReport(hand=2, autograd=2, bookkeeping=5, share=0.500)"


def test_the_model_itself_is_the_root_row():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = hnn.Linear(6, 3)

        def forward(self, x):
            return torch.sigmoid(self.fc(x))  # an op of the model's own forward

    model = Net()
    with handgrad.coverage(model) as report:
        model(batch()[0]).sum().backward()
    assert "\n(root)                Net        0         1            0    0.0%\n" in str(report)
    assert report.by_module[""] == Counts(autograd=1)


def test_a_report_without_arithmetic_nodes_has_no_share():
    w = torch.randn(3, requires_grad=True)
    report = handgrad.coverage.of(w.view(3, 1), None)
    assert math.isnan(report.share) and report.bookkeeping == 2
    assert str(report).startswith("handgrad.coverage.of: loss.backward() runs 2 nodes: 0 hand-written, 0 autograd, "
                                  "2 bookkeeping; hand-written share -\n")


def test_the_doc_page_shows_what_its_examples_print():
    examples = re.findall(r"```python\n(.*?)```\n\nprints:\n\n```text\n(.*?)```", DOC.read_text(), re.S)
    assert len(examples) == 3
    for code, shown in examples:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(DOC), "exec"), {})
        assert out.getvalue() == shown


# --------------------------------------------------------------------------- misuse


def test_a_block_without_a_backward_is_an_error_that_says_so():
    model, (x, y) = handgrad_mlp(), batch()
    with pytest.raises(RuntimeError, match=r"^handgrad.coverage: no backward ran inside the with block, so there is "
                                           r"nothing to report; call loss.backward\(\) inside it, or use "
                                           r"handgrad.coverage.of\(loss, model\) on a loss computed already$"):
        with handgrad.coverage(model):
            F.cross_entropy(model(x), y)


@pytest.mark.parametrize("loss, got", [(torch.ones(2), "a tensor without grad_fn"), (1.0, "float")])
def test_the_function_refuses_a_loss_without_a_graph(loss, got):
    with pytest.raises(ValueError, match=f"^handgrad.coverage.of: loss must be a tensor with a grad_fn, got {got}; "
                                         r"compute it outside torch.no_grad\(\)"):
        handgrad.coverage.of(loss)


def test_the_model_must_be_a_module():
    with pytest.raises(TypeError, match="^handgrad.coverage: model must be a torch.nn.Module or None, got dict; "):
        handgrad.coverage({"fc": hnn.Linear(2, 2)})


def test_hooks_are_removed_after_the_block_even_when_the_forward_raises():
    model, (x, y) = handgrad_mlp(), batch()
    with pytest.raises(ValueError, match="linear: input of shape"), handgrad.coverage(model):
        model(x[:, :5])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with handgrad.coverage(model) as report:  # and a later block starts clean
        F.cross_entropy(model(x), y).backward()
    assert report.backward_calls == 1 and report.share == 1.0


def test_nested_blocks_both_observe_the_backward():
    model, (x, y) = mixed_mlp(), batch()
    with handgrad.coverage(model) as outer:
        with handgrad.coverage(model[2]) as inner:
            F.cross_entropy(model(x), y).backward()
    assert outer.by_op == inner.by_op
    assert inner.by_module[""] == outer.by_module["2"]


def test_the_reshapes_around_handgrad_functions_do_not_lower_the_share():
    torch.manual_seed(0)
    image = torch.randn(1, 8, 8)  # unbatched: conv2d and max_pool2d unsqueeze, then squeeze
    weight, bias = torch.randn(2, 1, 3, 3, requires_grad=True), torch.randn(2, requires_grad=True)
    sequence = torch.randn(2, 5, 4)  # (N, T, D): linear_activation flattens to (N * T, D) and back
    w, b = torch.randn(3, 4, requires_grad=True), torch.randn(3, requires_grad=True)
    with handgrad.coverage() as report:
        conv = F.max_pool2d(F.conv2d(image, weight, bias), 2)
        hidden = F.linear_activation(sequence, w, b, "relu")
        F.mse_loss(conv.flatten(), torch.zeros(18)).backward()
        F.mse_loss(hidden, torch.zeros(2, 5, 3)).backward()
    assert report.share == 1.0 and report.autograd == 0
    assert {r.op for r in report.nodes if r.kind == "bookkeeping"} == {
        "UnsqueezeBackward0", "SqueezeBackward1", "ViewBackward0", "AccumulateGrad"}
