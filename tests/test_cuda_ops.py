"""The kernel backends against the float64 reference, each one forced: the same test bodies run

* on the CPU (every machine), with the ``cpp`` (C++ extension) and ``torch`` backends, small sizes;
* on a GPU (``cuda`` marker, skipped without one), with the ``cuda`` (extension) and ``triton``
  backends, real sizes.

Every test forces its backend through ``use_backend(...)``, so a kernel missing from the build
fails loudly instead of silently falling back; a backend that cannot run on this machine at all
(extension built without that device's kernels, Triton not loaded or interpreter-only) is skipped
with the reason. Tolerances follow DESIGN.md (``helpers.kernel_tolerance``: float32 on a GPU is
held to 1e-5 unless TF32 matmuls are allowed).
"""

import pytest
import torch
from torch.library import opcheck

import masked_dora
from masked_dora.ops import compact_linear, compact_linear_, dora_linear, registered, row_norm, select, use_backend
from masked_dora.ops.row_norm import default_eps

from helpers import assert_close_rel, dense_masked_dora_f64, kernel_tolerance, leaf

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
HALF = [torch.bfloat16, torch.float16]
# (device, backend): the CPU pairs run everywhere, the GPU pairs carry the cuda marker
TARGETS = [("cpu", "cpp"), ("cpu", "torch"), ("cuda", "cuda"), ("cuda", "triton")]
# (M, K, N, r): odd sizes, r = 1, non-power-of-two r, K >> N
SHAPES = {"cpu": [(37, 90, 65, 1), (20, 200, 48, 6)],
          "cuda": [(257, 1000, 515, 1), (1024, 4096, 1536, 16), (77, 320, 4096, 6), (8, 4096, 4096, 64)]}
# (M, K_full, N_full, keep_in, keep_out) for compact_linear
COMPACT_SIZES = {"cpu": [(1, 96, 80, 0.5, 0.75), (45, 130, 70, 0.9, 0.5)],
                 "cuda": [(1, 4096, 4096, 0.5, 0.75), (77, 1000, 515, 0.9, 0.5), (1024, 4096, 11008, 0.75, 1.0),
                          (300, 256, 256, 1.0, 0.3)]}
# the in-place and strided-x cases: the two smaller GPU sizes (each new shape re-tunes Triton on a GPU)
COMPACT_SIZES_SMALL = {"cpu": COMPACT_SIZES["cpu"], "cuda": COMPACT_SIZES["cuda"][:2]}
# dtypes each backend's compact_linear kernel takes (masked_dora/ops/compact_linear.py: the CUDA one is WMMA, half only)
COMPACT_DTYPES = {"cuda": HALF}


def params(*, dtypes=None, sizes=None, op_dtypes=None):
    """pytest params over TARGETS x dtypes (x sizes per device); GPU ones carry the cuda marker."""
    out = []
    for device, backend in TARGETS:
        marks = [pytest.mark.cuda] if device == "cuda" else []
        for dtype in (op_dtypes or {}).get(backend, dtypes or DTYPES):
            dname = str(dtype).replace("torch.", "")
            for size in (sizes[device] if sizes else [None]):
                values = (device, backend, dtype) + ((size,) if sizes else ())
                sid = f"-{size}" if sizes else ""
                out.append(pytest.param(*values, marks=marks, id=f"{device}-{backend}-{dname}{sid}"))
    return out


def skip_unavailable(device, backend, op="dora_linear"):
    """Skip (with the reason) when ``backend`` cannot run ``op`` on ``device`` on this machine at all."""
    impls = registered(op)
    if backend not in impls:
        pytest.skip(f"backend {backend!r} implements no {op!r} kernel (registered: {sorted(impls)}); "
                    f"status: {masked_dora.backend_status()}")
    if backend in ("cpp", "cuda"):
        key = "CPU" if backend == "cpp" else "CUDA"
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"masked_dora::{op}_kernel", key):
            pytest.skip(f"backend {backend!r}: masked_dora._C has no {key} kernel for {op} (extension built "
                        f"without it); status: {masked_dora.backend_status()}")
    if backend == "triton" and not impls["triton"].supports(torch.device(device), torch.float32):
        pytest.skip(impls["triton"].why_not(torch.device(device), torch.float32))


def inputs(device, m, k, n, r, dtype, zero_rows=0):
    """One layer's tensors on ``device``; the first ``zero_rows`` rows of W0 + s B A are exactly zero.

    Their magnitude is of the order of the op's norm floor ``default_eps(dtype)``: m / eps stays O(1)
    (as m / ||row|| elsewhere), so the scale c = m z / n on a zero row depends on the floor (a reference
    with another floor is off by orders of magnitude) without making dB = s dP^T (x A^T) overflow float16.
    """
    w = torch.randn(n, k, device=device) / k**0.5
    w[:zero_rows] = 0.0
    B = torch.randn(n, r, device=device) * 0.05
    B[:zero_rows] = 0.0
    magnitude = torch.rand(n, device=device) + 0.5
    magnitude[:zero_rows] *= default_eps(dtype)
    return dict(x=torch.randn(m, k, device=device).to(dtype), weight=w.to(dtype),
                lora_A=(torch.randn(r, k, device=device) / k**0.5).to(dtype), lora_B=B.to(dtype),
                magnitude=magnitude, gate=(torch.rand(n, device=device) > 0.25).float(),
                bias=torch.randn(n, device=device).to(dtype))


# ---------------------------------------------------------------- row_norm, dora_linear

@pytest.mark.parametrize("device,backend,dtype,shape", params(sizes=SHAPES))
def test_row_norm(device, backend, dtype, shape):
    skip_unavailable(device, backend, "row_norm")
    m, k, n, r = shape
    t = inputs(device, m, k, n, r, dtype, zero_rows=3)
    dense = (t["weight"].double() + 1.5 * t["lora_B"].double() @ t["lora_A"].double()).norm(dim=1)
    with use_backend(backend):
        assert select("row_norm", t["weight"].device, dtype).name == backend
        out = row_norm(t["weight"], t["lora_A"], t["lora_B"], 1.5, eps=1e-6)
    assert out.dtype == torch.float32
    assert (out[:3] == 1e-6).all()
    assert_close_rel(out[3:], dense[3:], dtype, "row norm", tol=kernel_tolerance(dtype, device))


@pytest.mark.parametrize("device,backend,dtype,shape", params(sizes=SHAPES))
def test_masked_dora_layer_forward_backward(device, backend, dtype, shape):
    """Row norm + dora_linear vs the dense float64 definition (same norm floor as the op), every gradient."""
    skip_unavailable(device, backend)
    m, k, n, r = shape
    t = inputs(device, m, k, n, r, dtype, zero_rows=2)
    x, A, B = leaf(t["x"]), leaf(t["lora_A"]), leaf(t["lora_B"])
    mag, z = leaf(t["magnitude"]), leaf(t["gate"])
    with use_backend(backend if backend in registered("row_norm") else None):  # cpp has no row_norm kernel
        norm = row_norm(t["weight"], A, B, 2.0)
    scale = mag * z / norm
    with use_backend(backend):
        assert select("dora_linear", x.device, dtype).name == backend
        y = dora_linear(x, t["weight"], A, B, 2.0, scale, z * t["bias"].float())
    x64, A64, B64 = leaf(t["x"], torch.float64), leaf(t["lora_A"], torch.float64), leaf(t["lora_B"], torch.float64)
    mag64, z64 = leaf(t["magnitude"], torch.float64), leaf(t["gate"], torch.float64)
    y_ref = dense_masked_dora_f64(x64, t["weight"], t["bias"], A64, B64, 2.0, mag64, z64, eps=default_eps(dtype))
    tol = kernel_tolerance(dtype, device)
    assert_close_rel(y, y_ref, dtype, "y", tol=tol)
    assert (y[:, t["gate"] == 0] == 0).all()
    g = torch.randn_like(y_ref)
    with use_backend(backend):
        assert select("dora_linear_backward", x.device, dtype).name == backend
        y.backward(g.to(dtype))
    y_ref.backward(g)
    for name, ours, ref in (("x", x, x64), ("A", A, A64), ("B", B, B64), ("m", mag, mag64), ("z", z, z64)):
        assert_close_rel(ours.grad, ref.grad, dtype, f"grad {name}", tol=tol)


def dora_linear_f64(x, w, a, b, s, c, zb):
    """``(x W^T + s (x A^T) B^T) * c + zb`` in float64, differentiable in every argument that requires grad."""
    return (x @ w.t() + s * (x @ a.t()) @ b.t()) * c + zb


@pytest.mark.parametrize("device,backend,dtype", params())
@pytest.mark.parametrize("layout", ["3d", "2d-strided", "3d-strided", "2d-transposed"])
def test_dora_linear_3d_and_noncontiguous_x(device, backend, dtype, layout):
    """x of shape (batch, seq, K), and x as a strided view (every other feature; a transposed buffer)."""
    skip_unavailable(device, backend)
    bsz, seq, k, n, r = (2, 9, 70, 45, 3) if device == "cpu" else (2, 300, 1000, 515, 16)
    lead = (bsz, seq) if layout.startswith("3d") else (bsz * seq,)
    if layout == "2d-transposed":
        x = torch.randn(k, bsz * seq, device=device).to(dtype).t()
    else:
        wide = 2 * k if layout.endswith("strided") else k
        x = torch.randn(*lead, wide, device=device).to(dtype)[..., ::wide // k]
    x.requires_grad_(True)  # the strided view itself is the leaf (leaf() would clone it contiguous)
    assert x.shape == (*lead, k) and x.is_contiguous() == (layout == "3d")
    w = (torch.randn(n, k, device=device) / k**0.5).to(dtype)
    a = (torch.randn(r, k, device=device) / k**0.5).to(dtype)
    b = (torch.randn(n, r, device=device) * 0.3).to(dtype)
    c, zb = torch.rand(n, device=device) + 0.5, torch.randn(n, device=device)
    ours = [x] + [leaf(t) for t in (a, b, c, zb)]
    with use_backend(backend):
        y = dora_linear(ours[0], w, ours[1], ours[2], 0.7, ours[3], ours[4])
    refs = [leaf(t, torch.float64) for t in (x, a, b, c, zb)]
    y_ref = dora_linear_f64(refs[0], w.double(), refs[1], refs[2], 0.7, refs[3], refs[4])
    tol = kernel_tolerance(dtype, device)
    assert y.dtype == dtype
    assert_close_rel(y, y_ref, dtype, f"y ({layout})", tol=tol)
    g = torch.randn_like(y_ref)
    with use_backend(backend):
        y.backward(g.to(dtype))
    y_ref.backward(g)
    for name, o, q in zip(("x", "A", "B", "scale", "bias"), ours, refs):
        assert_close_rel(o.grad, q.grad, dtype, f"grad {name} ({layout})", tol=tol)


@pytest.mark.parametrize("device,backend", [pytest.param(d, b, id=f"{d}-{b}", marks=[pytest.mark.cuda] * (d == "cuda"))
                                            for d, b in TARGETS if b != "torch"])
def test_opcheck(device, backend):
    skip_unavailable(device, backend)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    t = inputs(device, 33, 96, 80, 4, dtype)
    x, A, B = leaf(t["x"]), leaf(t["lora_A"]), leaf(t["lora_B"])
    scale, bias = leaf(torch.rand(80, device=device)), leaf(torch.randn(80, device=device))
    with use_backend(backend):
        opcheck(torch.ops.masked_dora.dora_linear.default, (x, t["weight"], A, B, 0.5, scale, bias))
        if backend in registered("row_norm"):
            opcheck(torch.ops.masked_dora.row_norm.default, (t["weight"], t["lora_A"], t["lora_B"], 0.5, None, 1e-8))


# ---------------------------------------------------------------- compact_linear

def compact_case(device, dtype, m, k_full, n_full, keep_in, keep_out, gather=True, scatter=True, residual=False,
                 lead=None):
    """x, w, b, in_idx, out_idx, out width, residual (None where not asked for)."""
    in_idx = torch.sort(torch.randperm(k_full, device=device)[: max(1, int(k_full * keep_in))]).values
    out_idx = torch.sort(torch.randperm(n_full, device=device)[: max(1, int(n_full * keep_out))]).values
    lead = lead or (m,)
    x = torch.randn(*lead, k_full if gather else in_idx.numel(), device=device).to(dtype)
    w = (torch.randn(out_idx.numel(), in_idx.numel(), device=device) / in_idx.numel() ** 0.5).to(dtype)
    b = torch.randn(out_idx.numel(), device=device).to(dtype)
    width = n_full if scatter else out_idx.numel()
    res = torch.randn(*lead, width, device=device).to(dtype) if residual else None
    return x, w, b, in_idx if gather else None, out_idx if scatter else None, width, res


def compact_ref(x, w, b, in_idx, out_idx, width, residual):
    xg = x.double() if in_idx is None else x.double()[..., in_idx]
    y = xg @ w.double().t() + b.double()
    if out_idx is None:
        return y if residual is None else y + residual.double()
    out = residual.double().clone() if residual is not None else y.new_zeros(*y.shape[:-1], width)
    out[..., out_idx] += y
    return out


def untouched_columns(width, out_idx, device):
    """The output columns outside out_idx (none without out_idx)."""
    rest = torch.full((width,), out_idx is not None, dtype=torch.bool, device=device)
    if out_idx is not None:
        rest[out_idx] = False
    return rest


@pytest.mark.parametrize("device,backend,dtype,size", params(sizes=COMPACT_SIZES, op_dtypes=COMPACT_DTYPES))
@pytest.mark.parametrize("gather,scatter", [(1, 1), (1, 0), (0, 1), (0, 0)], ids=lambda v: str(v))
@pytest.mark.parametrize("with_residual", [False, True])
def test_compact_linear(device, backend, dtype, size, gather, scatter, with_residual):
    """Both index sets, either one absent (None), neither; with a residual (also without out_idx)."""
    skip_unavailable(device, backend, "compact_linear")
    x, w, b, ii, oi, width, res = compact_case(device, dtype, *size, gather=gather, scatter=scatter,
                                               residual=with_residual)
    with use_backend(backend):
        assert select("compact_linear", x.device, dtype).name == backend
        out = compact_linear(x, w, b, in_idx=ii, out_idx=oi, out_features=width if scatter else None,
                             residual=res)
    assert out.dtype == dtype and out.shape == (size[0], width)
    tol = kernel_tolerance(dtype, device)
    assert_close_rel(out, compact_ref(x, w, b, ii, oi, width, res), dtype, "compact_linear", tol=tol)
    rest = untouched_columns(width, oi, device)
    expected_rest = torch.zeros_like(out[:, rest]) if res is None else res[:, rest]
    assert torch.equal(out[:, rest], expected_rest)


@pytest.mark.parametrize("device,backend,dtype,size", params(sizes=COMPACT_SIZES_SMALL, op_dtypes=COMPACT_DTYPES))
@pytest.mark.parametrize("gather,scatter", [(1, 1), (0, 1), (1, 0)], ids=lambda v: str(v))
def test_compact_linear_in_place(device, backend, dtype, size, gather, scatter):
    """compact_linear_: residual[..., out_idx] += ... in place (3-D stream), no other column touched."""
    skip_unavailable(device, backend, "compact_linear")
    m = size[0]
    x, w, b, ii, oi, width, res = compact_case(device, dtype, *size, gather=gather, scatter=scatter,
                                               residual=True, lead=(2, m))
    stream = res.clone()
    ptr = stream.data_ptr()
    with use_backend(backend), torch.no_grad():
        assert select("compact_linear", x.device, dtype).name == backend
        got = compact_linear_(stream, x, w, b, ii, oi)
    assert got is stream and stream.data_ptr() == ptr
    assert_close_rel(stream, compact_ref(x, w, b, ii, oi, width, res), dtype, "compact_linear_",
                     tol=kernel_tolerance(dtype, device))
    rest = untouched_columns(width, oi, device)
    assert torch.equal(stream[..., rest], res[..., rest])


@pytest.mark.parametrize("device,backend,dtype,size", params(sizes=COMPACT_SIZES_SMALL, op_dtypes=COMPACT_DTYPES))
@pytest.mark.parametrize("scatter", [0, 1])
def test_compact_linear_noncontiguous_x(device, backend, dtype, size, scatter):
    """x as a 3-D strided view (every other feature of a wider buffer), residual transposed in memory."""
    skip_unavailable(device, backend, "compact_linear")
    m, k_full = size[:2]
    x, w, b, ii, oi, width, res = compact_case(device, dtype, *size, scatter=scatter, residual=True, lead=(3, m))
    x = torch.randn(3, m, 2 * k_full, device=device).to(dtype)[..., ::2]
    res = torch.randn(width, m, 3, device=device).to(dtype).permute(2, 1, 0)
    assert not x.is_contiguous() and not res.is_contiguous()
    with use_backend(backend):
        out = compact_linear(x, w, b, ii, oi, width if scatter else None, res)
    assert out.shape == (3, m, width)
    assert_close_rel(out, compact_ref(x, w, b, ii, oi, width, res), dtype, "compact_linear strided x",
                     tol=kernel_tolerance(dtype, device))
