"""The C++/CUDA extension's CUDA kernels against the float64 reference (GPU only).

Every test forces ``MASKED_DORA_BACKEND=cuda`` through ``use_backend("cuda")``,
so a kernel that is missing from the build fails loudly instead of silently
falling back. Skipped without a GPU; skipped (with the reason) when the
extension was built without CUDA.
"""

import pytest
import torch
from torch.library import opcheck

import masked_dora
from masked_dora.ops import dora_linear, row_norm, use_backend

from helpers import assert_close_rel, dense_masked_dora_f64, leaf

pytestmark = pytest.mark.cuda

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
SHAPES = [(257, 1000, 515, 1), (1024, 4096, 1536, 16), (77, 320, 4096, 6), (8, 4096, 4096, 64)]


@pytest.fixture(autouse=True)
def _needs_cuda_kernels():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if not torch._C._dispatch_has_kernel_for_dispatch_key("masked_dora::dora_linear_kernel", "CUDA"):
        pytest.skip(f"masked_dora._C has no CUDA kernels: {masked_dora.backend_status()}")


def tolerance(dtype):
    return 5e-4 if dtype == torch.float32 else None  # fp32 matmuls may use TF32


def inputs(m, k, n, r, dtype, zero_rows=0):
    dev = "cuda"
    w = torch.randn(n, k, device=dev) / k**0.5
    w[:zero_rows] = 0.0
    B = torch.randn(n, r, device=dev) * 0.05
    B[:zero_rows] = 0.0
    return dict(x=torch.randn(m, k, device=dev).to(dtype), weight=w.to(dtype),
                lora_A=(torch.randn(r, k, device=dev) / k**0.5).to(dtype), lora_B=B.to(dtype),
                magnitude=torch.rand(n, device=dev) + 0.5, gate=(torch.rand(n, device=dev) > 0.25).float(),
                bias=torch.randn(n, device=dev).to(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_row_norm_cuda(shape, dtype):
    m, k, n, r = shape
    t = inputs(m, k, n, r, dtype, zero_rows=3)
    dense = (t["weight"].double() + 1.5 * t["lora_B"].double() @ t["lora_A"].double()).norm(dim=1)
    with use_backend("cuda"):
        out = row_norm(t["weight"], t["lora_A"], t["lora_B"], 1.5, eps=1e-6)
    assert out.dtype == torch.float32
    assert (out[:3] == 1e-6).all()
    assert_close_rel(out[3:], dense[3:], dtype, "row norm", tol=tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_masked_dora_layer_cuda_forward_backward(shape, dtype):
    m, k, n, r = shape
    t = inputs(m, k, n, r, dtype, zero_rows=2)
    x, A, B = leaf(t["x"]), leaf(t["lora_A"]), leaf(t["lora_B"])
    mag, z = leaf(t["magnitude"]), leaf(t["gate"])
    with use_backend("cuda"):
        norm = row_norm(t["weight"], A, B, 2.0)
        scale = mag * z / norm
        y = dora_linear(x, t["weight"], A, B, 2.0, scale, z * t["bias"].float())
    x64, A64, B64 = leaf(t["x"], torch.float64), leaf(t["lora_A"], torch.float64), leaf(t["lora_B"], torch.float64)
    mag64, z64 = leaf(t["magnitude"], torch.float64), leaf(t["gate"], torch.float64)
    y_ref = dense_masked_dora_f64(x64, t["weight"], t["bias"], A64, B64, 2.0, mag64, z64)
    assert_close_rel(y, y_ref, dtype, "y", tol=tolerance(dtype))
    assert (y[:, t["gate"] == 0] == 0).all()
    g = torch.randn_like(y_ref)
    with use_backend("cuda"):
        y.backward(g.to(dtype))
    y_ref.backward(g)
    for name, ours, ref in (("x", x, x64), ("A", A, A64), ("B", B, B64), ("m", mag, mag64), ("z", z, z64)):
        assert_close_rel(ours.grad, ref.grad, dtype, f"grad {name}", tol=tolerance(dtype))


def test_opcheck_with_cuda_backend():
    t = inputs(33, 96, 80, 4, torch.bfloat16)
    x, A, B = leaf(t["x"]), leaf(t["lora_A"]), leaf(t["lora_B"])
    scale, bias = leaf(torch.rand(80, device="cuda")), leaf(torch.randn(80, device="cuda"))
    with use_backend("cuda"):
        opcheck(torch.ops.masked_dora.dora_linear.default, (x, t["weight"], A, B, 0.5, scale, bias))
        opcheck(torch.ops.masked_dora.row_norm.default, (t["weight"], t["lora_A"], t["lora_B"], 0.5, None, 1e-8))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("m, k_full, n_full, keep_in, keep_out", [
    (1, 4096, 4096, 0.5, 0.75), (77, 1000, 515, 0.9, 0.5), (1024, 4096, 11008, 0.75, 1.0), (300, 256, 256, 1.0, 0.3),
])
@pytest.mark.parametrize("with_residual", [False, True])
def test_compact_linear_cuda(dtype, m, k_full, n_full, keep_in, keep_out, with_residual):
    from masked_dora.ops.compact_linear import compact_linear

    dev = "cuda"
    in_idx = torch.sort(torch.randperm(k_full, device=dev)[: max(1, int(k_full * keep_in))]).values
    out_idx = torch.sort(torch.randperm(n_full, device=dev)[: max(1, int(n_full * keep_out))]).values
    x = torch.randn(m, k_full, device=dev).to(dtype)
    w = (torch.randn(out_idx.numel(), in_idx.numel(), device=dev) / in_idx.numel() ** 0.5).to(dtype)
    b = torch.randn(out_idx.numel(), device=dev).to(dtype)
    residual = torch.randn(m, n_full, device=dev).to(dtype) if with_residual else None
    ref = torch.zeros(m, n_full, dtype=torch.float64, device=dev) if residual is None else residual.double().clone()
    ref[:, out_idx] += x.double()[:, in_idx] @ w.double().t() + b.double()
    with use_backend("cuda"):
        out = compact_linear(x, w, b, in_idx=in_idx, out_idx=out_idx, out_features=n_full, residual=residual)
    assert_close_rel(out, ref, dtype, "compact_linear")
    untouched = torch.ones(n_full, dtype=torch.bool, device=dev)
    untouched[out_idx] = False
    expected_rest = torch.zeros_like(out[:, untouched]) if residual is None else residual[:, untouched]
    assert torch.equal(out[:, untouched], expected_rest)
