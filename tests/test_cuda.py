"""The proof on a GPU: every op on CUDA against autograd (float64 and float32, and float64
gradcheck), the fused ops, a handgrad network trained on CUDA against the same on the CPU, and
mixed precision on CUDA (float16 and bfloat16 autocast, what Lightning's "16-mixed" and
"bf16-mixed" run) against torch's ops under the same autocast.

Skipped as a whole without CUDA (scripts/gpu_check.sh runs it on a lent GPU machine). TF32 is
off while it runs, so float32 matmuls and convolutions keep float32's precision.
"""

from __future__ import annotations

import copy

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

from test_amp import (  # tests/ is on sys.path
    BF16,
    LEAVES,
    amp_comparison,
    assert_same_dtypes_and_close,
    assert_trains_like_its_twin,
    batches,
    twin_networks,
)

import handgrad.functional as F
import handgrad.nn as hnn
from handgrad.functional.mlp_loss import mlp_loss_and_grads
from handgrad.optim import SGD
from handgrad.verify import OP_CASES, compare, gradcheck, mlp_loss_reference, seeded

# cuDNN picks convolution algorithms at run time and CUDA kernels sum in other orders than the CPU's: a few
# float32 ulps beyond torch.testing's float32 defaults (rtol 1.3e-6, atol 1e-5). float64 keeps its defaults.
CUDA_FLOAT32 = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(autouse=True, scope="module")
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def on_cuda(inputs: dict) -> dict:
    """The inputs on the GPU: each tensor a new leaf there, requiring grad exactly where its CPU original did."""
    return {name: value.detach().to("cuda").requires_grad_(value.requires_grad) if isinstance(value, torch.Tensor)
            else value for name, value in inputs.items()}


def dropout_with_handgrads_mask(input, p):
    """Dropout from torch ops, its mask drawn as handgrad's dropout draws it (bernoulli_ into a bool tensor).
    torch's own CUDA dropout draws its mask in a fused kernel: a different mask for the same seed."""
    mask = torch.empty_like(input, dtype=torch.bool).bernoulli_(1 - p)
    return input * mask * (1 / (1 - p))


REFERENCES_ON_CUDA = {"dropout(p=0.3, seeded)": seeded(dropout_with_handgrads_mask)}


def reference_on_cuda(case):
    return REFERENCES_ON_CUDA.get(case.name, case.reference)


# --------------------------------------------------------------------------- every op, fp64 and fp32


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.name)
def test_every_op_on_cuda_matches_autograd(case, dtype):
    comparison = compare(case.hand, reference_on_cuda(case), on_cuda(case.inputs(dtype)), case.kwargs)
    assert comparison.output.is_cuda and all(g.is_cuda for g in comparison.grads.values())
    comparison.assert_close(**({} if dtype == torch.float64 else CUDA_FLOAT32))


@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.name)
def test_every_op_on_cuda_passes_float64_gradcheck(case):
    assert gradcheck(case.hand, on_cuda(case.inputs(torch.float64)), case.kwargs)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_mlp_loss_and_grads_on_cuda_equal_autograds_gradients(loss):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 12, generator=g)
    target = torch.randn(16, 5, generator=g) if loss == "mse" else torch.randint(5, (16,), generator=g)
    params = [torch.randn(8, 12, generator=g) / 12**0.5, torch.randn(8, generator=g),
              torch.randn(5, 8, generator=g) / 8**0.5, torch.randn(5, generator=g)]
    x, target = x.cuda(), target.cuda()
    params = [p.cuda().requires_grad_() for p in params]
    kwargs = dict(activation="tanh", output_activation=None, loss=loss, reduction="mean")

    expected = mlp_loss_reference(x, target, **kwargs, weight0=params[0], bias0=params[1], weight1=params[2],
                                  bias1=params[3])
    expected.backward()
    value, _, grads = mlp_loss_and_grads(x, target, params[0::2], params[1::2], **kwargs)
    torch.testing.assert_close(value, expected.detach(), **CUDA_FLOAT32)
    for grad, param in zip(grads, params, strict=True):
        torch.testing.assert_close(grad, param.grad, **CUDA_FLOAT32)


# --------------------------------------------------------------------------- a network trained on CUDA and on the CPU


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
def test_handgrad_network_trains_on_cuda_as_on_the_cpu(kind):
    # In float64, so that the two devices' different summation orders stay ~1e-15 apart: in float32 a
    # pre-activation within rounding of 0 could switch a ReLU (or a max-pool winner) on one device only.
    on_cpu = twin_networks(kind)[0].double()
    on_gpu = copy.deepcopy(on_cpu).cuda()
    loss_fn = hnn.CrossEntropyLoss()
    losses = {}
    for device, net in (("cpu", on_cpu), ("cuda", on_gpu)):
        optimizer = SGD(net.parameters(), lr=0.1, momentum=0.9)
        losses[device] = []
        for x, target in batches(kind, steps=10, device=device):
            optimizer.zero_grad()
            loss = loss_fn(net(x.double()), target)
            loss.backward()
            optimizer.step()
            losses[device].append(loss.detach())
    torch.testing.assert_close(torch.stack(losses["cuda"]).cpu(), torch.stack(losses["cpu"]))
    assert losses["cpu"][-1] < losses["cpu"][0]
    for (name, value), expected in zip(on_gpu.state_dict().items(), on_cpu.state_dict().values(), strict=True):
        assert value.is_cuda
        torch.testing.assert_close(value.cpu(), expected, msg=lambda m, name=name: f"{name}: {m}")


# --------------------------------------------------------------------------- mixed precision on CUDA

AUTOCAST_DTYPES = pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])


@AUTOCAST_DTYPES
@pytest.mark.parametrize("leaves", LEAVES)
@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.name)
def test_every_op_under_cuda_autocast_matches_autograd(case, leaves, dtype):
    # float16 keeps 3 more mantissa bits than bfloat16: bfloat16's tolerances hold for both.
    comparison, inputs = amp_comparison(case, leaves, "cuda", dtype, reference_on_cuda(case), to_device=on_cuda)
    assert comparison.output.is_cuda
    assert_same_dtypes_and_close(comparison, inputs, **BF16)


@AUTOCAST_DTYPES
@pytest.mark.parametrize("kind", ["mlp", "convnet"])
def test_network_trains_under_cuda_autocast_like_its_torch_twin(kind, dtype):
    assert_trains_like_its_twin(kind, "cuda", dtype, **BF16)


def test_cross_entropy_never_waits_for_the_gpu():
    """On CUDA, cross_entropy leaves its class-index range check out (it reads the target on the host,
    a synchronisation every step); forward and backward then queue kernels only."""
    logits = torch.randn(8, 10, device="cuda", requires_grad=True)
    target = torch.randint(10, (8,), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        F.cross_entropy(logits, target).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(logits.grad, torch.autograd.grad(
        torch.nn.functional.cross_entropy(logits, target), logits)[0])
