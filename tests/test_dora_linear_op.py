"""The dora_linear and row_norm ops against the float64 dense definition.

Every test runs twice: with the PyTorch reference backend and with the C++ CPU
backend (``cpp``, skipped when the extension is not built). row_norm has no C++
kernel: under ``cpp`` it takes the automatic choice.
"""


import pytest
import torch
from torch.library import opcheck

from masked_dora.ops import dora_linear, row_norm, weight_sq_norm
from masked_dora.ops.dora_linear import (dora_linear_backward_reference, dora_linear_forward_reference,
                                         grad_scale_from_output, readable_rows)

from helpers import assert_close_rel, dense_masked_dora_f64, leaf


@pytest.fixture(autouse=True)
def backend(torch_and_cpp_backend):  # every test: torch reference and C++ backends (conftest.py)
    return torch_and_cpp_backend


# (M, K, N, r): odd sizes, r = 1, r not a power of two, K >> N, N > K
SHAPES = [(7, 13, 11, 1), (33, 64, 48, 3), (5, 300, 10, 2), (9, 20, 70, 5), (1, 8, 8, 8)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make_inputs(m, k, n, r, dtype, bias=True, zero_rows=0):
    w = torch.randn(n, k) / k**0.5
    if zero_rows:
        w[:zero_rows] = 0.0
    return dict(
        x=torch.randn(m, k),
        weight=w,
        bias=torch.randn(n) if bias else None,
        lora_A=torch.randn(r, k) / k**0.5,
        lora_B=torch.randn(n, r) * 0.1,
        magnitude=torch.rand(n) + 0.5,
        gate=torch.rand(n),
        scaling=1.7,
    )


def run_layer(inp, dtype, x=None):
    """Our composed layer (row_norm + dora_linear) with leaves to differentiate."""
    x = leaf(inp["x"] if x is None else x, dtype)
    A, B = leaf(inp["lora_A"], dtype), leaf(inp["lora_B"], dtype)
    mag, z = leaf(inp["magnitude"], torch.float32), leaf(inp["gate"], torch.float32)
    bias = None if inp["bias"] is None else inp["bias"].to(dtype)
    w = inp["weight"].to(dtype)
    norm = row_norm(w, A, B, inp["scaling"])
    scale = mag * z / norm
    gated_bias = None if bias is None else z * bias.float()
    y = dora_linear(x, w, A, B, inp["scaling"], scale, gated_bias)
    return y, (x, A, B, mag, z)


def run_dense_f64(inp, x=None):
    x = leaf(inp["x"] if x is None else x, torch.float64)
    A, B = leaf(inp["lora_A"], torch.float64), leaf(inp["lora_B"], torch.float64)
    mag, z = leaf(inp["magnitude"], torch.float64), leaf(inp["gate"], torch.float64)
    y = dense_masked_dora_f64(x, inp["weight"], inp["bias"], A, B, inp["scaling"], mag, z)
    return y, (x, A, B, mag, z)


NAMES = ("x", "lora_A", "lora_B", "magnitude", "gate")


def check_against_dense(inp, dtype, x=None):
    y, leaves = run_layer(inp, dtype, x)
    y_ref, ref_leaves = run_dense_f64(inp, x)
    assert y.dtype == dtype
    assert_close_rel(y, y_ref, dtype, "y")
    grad = torch.randn_like(y_ref)
    y.backward(grad.to(dtype))
    y_ref.backward(grad)
    for name, a, b in zip(NAMES, leaves, ref_leaves):
        assert_close_rel(a.grad, b.grad, dtype, f"grad {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_backward_matches_float64(shape, dtype):
    check_against_dense(make_inputs(*shape, dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_no_bias_and_3d_input(dtype):
    inp = make_inputs(6, 24, 16, 4, dtype, bias=False)
    inp["x"] = torch.randn(2, 3, 24)
    y, _ = run_layer(inp, dtype)
    assert y.shape == (2, 3, 16)
    check_against_dense(inp, dtype)


def test_non_contiguous_input():
    inp = make_inputs(10, 32, 12, 3, torch.float32)
    x = torch.randn(32, 10).t()  # (10, 32), not contiguous
    assert not x.is_contiguous()
    check_against_dense(inp, torch.float32, x=x)
    x3 = torch.randn(4, 32, 5).transpose(1, 2)  # (4, 5, 32) non-contiguous 3-D
    check_against_dense(inp, torch.float32, x=x3)


def test_pruned_channels_exactly_zero_and_zero_rows_finite():
    inp = make_inputs(8, 16, 12, 2, torch.float32, zero_rows=3)
    inp["lora_B"][:3] = 0.0  # exactly-zero rows of W0 + sBA (PEFT #3237)
    inp["magnitude"][:3] = 0.0
    inp["gate"][5:9] = 0.0
    y, leaves = run_layer(inp, torch.float32)
    y.sum().backward()
    assert torch.isfinite(y).all()
    assert (y[:, 5:9] == 0).all()
    for t in leaves:
        assert torch.isfinite(t.grad).all()


def test_row_norm_matches_dense_and_floors_zero_rows():
    inp = make_inputs(1, 40, 30, 4, torch.float64, zero_rows=2)
    inp["lora_B"][:2] = 0.0
    w, A, B, s = inp["weight"].double(), inp["lora_A"].double(), inp["lora_B"].double(), 0.9
    dense = (w + s * B @ A).norm(dim=1)
    n = row_norm(w, A, B, s, eps=1e-6)
    assert n.dtype == torch.float64
    assert (n[:2] == 1e-6).all()
    assert_close_rel(n[2:], dense[2:], torch.float64)
    # cached ||W0||^2 gives the same answer; float32 accumulates in float32
    assert torch.equal(row_norm(w, A, B, s, weight_sq_norm(w), eps=1e-6), n)
    n32 = row_norm(w.float(), A.float(), B.float(), s)
    assert n32.dtype == torch.float32
    assert_close_rel(n32[2:], dense[2:], torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_row_norm_half_accumulates_in_float32(dtype):
    inp = make_inputs(1, 64, 48, 8, dtype)
    w, A, B = inp["weight"], inp["lora_A"], inp["lora_B"]
    dense = (w.double() + 1.7 * B.to(dtype).double() @ A.to(dtype).double()).norm(dim=1)
    n = row_norm(w.to(dtype), A.to(dtype), B.to(dtype), 1.7)
    assert n.dtype == torch.float32
    assert_close_rel(n, dense, dtype)


def test_row_norm_is_detached():
    A = torch.randn(2, 8, requires_grad=True)
    B = torch.randn(6, 2, requires_grad=True)
    n = row_norm(torch.randn(6, 8), A, B, 1.0)
    assert not n.requires_grad


def test_opcheck_all_ops():
    inp = make_inputs(7, 16, 12, 3, torch.float32)
    x = inp["x"].requires_grad_()
    A, B = leaf(inp["lora_A"]), leaf(inp["lora_B"])
    scale, bias = leaf(torch.rand(12)), leaf(torch.randn(12))
    w = inp["weight"]
    opcheck(torch.ops.masked_dora.dora_linear.default, (x, w, A, B, 0.5, scale, bias))
    opcheck(torch.ops.masked_dora.dora_linear.default, (x, w, A, B, 0.5, scale, None))
    skip = torch.arange(12) % 3 == 0
    opcheck(torch.ops.masked_dora.dora_linear.default, (x, w, A, B, 0.5, scale, bias, skip))
    y, pre, xa = dora_linear_forward_reference(x.detach(), w, A.detach(), B.detach(), 0.5, scale.detach(), None)
    zeroed = scale.detach().clone()
    zeroed[::4] = 0.0  # rows recomputed from P
    redo = zeroed == 0
    for need in (True, False):
        opcheck(torch.ops.masked_dora.dora_linear_backward.default,
                (torch.randn(7, 12), x.detach(), w, A.detach(), B.detach(), 0.5, zeroed, None, y, False, xa, ~redo,
                 redo, None, need))
        opcheck(torch.ops.masked_dora.dora_linear_backward.default,  # rows known, output changed (P recomputed)
                (torch.randn(7, 12), x.detach(), w, A.detach(), B.detach(), 0.5, scale.detach(), bias.detach(),
                 None, False, xa, ~redo, skip, torch.tensor([0, 3]), need))
        opcheck(torch.ops.masked_dora.dora_linear_backward.default,  # P kept (torch.compile, saved-tensor hooks)
                (torch.randn(7, 12), x.detach(), w, A.detach(), B.detach(), 0.5, scale.detach(), bias.detach(),
                 pre, True, xa, None, None, None, need))
    opcheck(torch.ops.masked_dora.row_norm.default, (w, A.detach(), B.detach(), 0.5, None, 1e-8))
    opcheck(torch.ops.masked_dora.row_norm.default, (w, A.detach(), B.detach(), 0.5, weight_sq_norm(w), 1e-8))


def test_backward_reference_matches_autograd_of_forward():
    """The hand-written backward equals autograd through the forward formula (float64)."""
    inp = make_inputs(5, 12, 9, 3, torch.float64)
    x, A, B = leaf(inp["x"].double()), leaf(inp["lora_A"].double()), leaf(inp["lora_B"].double())
    scale, bias = leaf(torch.rand(9, dtype=torch.float64)), leaf(torch.randn(9, dtype=torch.float64))
    w = inp["weight"].double()
    y = (x @ w.t() + 1.3 * (x @ A.t()) @ B.t()) * scale + bias
    g = torch.randn_like(y)
    y.backward(g)
    out, pre, xa = dora_linear_forward_reference(x.detach(), w, A.detach(), B.detach(), 1.3, scale.detach(),
                                                 bias.detach())
    gx, gA, gB, dot, gb = dora_linear_backward_reference(g, x.detach(), w, A.detach(), B.detach(), 1.3,
                                                         scale.detach(), out, xa)
    assert_close_rel(dot, (g * out).sum(0), torch.float64)
    readable = readable_rows(scale.detach(), bias.detach(), pre, torch.float64)
    gs = grad_scale_from_output(dot, gb, g, x.detach(), w, B.detach(), 1.3, scale.detach(), bias.detach(), xa,
                                readable, ~readable)
    for out, ref in ((gx, x.grad), (gA, A.grad), (gB, B.grad), (gs, scale.grad), (gb, bias.grad)):
        assert_close_rel(out, ref, torch.float64)


@pytest.mark.parametrize("bad, error, match", [
    (dict(x=torch.randn(3, 7)), ValueError, "x: expected last dimension in_features=8"),
    (dict(x=torch.randint(0, 3, (3, 8))), TypeError, "x: expected a floating-point tensor"),
    (dict(lora_A=torch.randn(2, 9)), ValueError, "lora_A: expected shape"),
    (dict(lora_B=torch.randn(6, 3)), ValueError, "lora_B: expected shape"),
    (dict(scale=torch.randn(5)), ValueError, "scale: expected shape"),
    (dict(x=torch.randn(3, 8, dtype=torch.float64)), TypeError, "weight: expected dtype torch.float64"),
    (dict(x=torch.randn(3, 8, device="meta")), ValueError, "weight: expected device meta"),
    (dict(weight=torch.randn(6, 8, requires_grad=True)), ValueError, "weight: the base weight must be frozen"),
])
def test_dora_linear_rejects_bad_input(bad, error, match):
    args = dict(x=torch.randn(3, 8), weight=torch.randn(6, 8), lora_A=torch.randn(2, 8), lora_B=torch.randn(6, 2),
                scaling=1.0, scale=torch.rand(6), bias=None)
    args.update(bad)
    with pytest.raises(error, match=match):
        dora_linear(**args)


def test_the_forced_backend_is_the_one_that_runs(backend):
    from masked_dora.ops import select

    assert select("dora_linear", torch.device("cpu"), torch.float32).name == backend
    assert select("dora_linear_backward", torch.device("cpu"), torch.bfloat16).name == backend


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_zero_rows_with_nonzero_magnitude_stay_finite(dtype):
    """The default norm floor for half types keeps c = m / n inside float16's range."""
    inp = make_inputs(6, 16, 10, 2, dtype, zero_rows=2)
    inp["lora_B"][:2] = 0.0
    inp["magnitude"][:2] = 1.0  # e.g. imported, or moved by weight decay
    y, leaves = run_layer(inp, dtype)
    y.float().pow(2).sum().backward()
    assert torch.isfinite(y).all()
    for t in leaves:
        assert torch.isfinite(t.grad).all()
    w = inp["weight"].to(dtype)
    assert (row_norm(w, inp["lora_A"].to(dtype), inp["lora_B"].to(dtype), 1.0)[:2] == 1e-4).all()
