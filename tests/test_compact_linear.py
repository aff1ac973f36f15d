"""compact_linear: every backend against the float64 reference; index validation; autograd; compile."""

import pytest
import torch
import torch.nn.functional as F

import masked_dora
from masked_dora.nn import CompactLinear
from masked_dora.ops import compact_linear, compact_linear_, registered, select, use_backend, validate_indices

from helpers import assert_close_rel, kernel_tolerance

HAS_CPP = torch._C._dispatch_has_kernel_for_dispatch_key("masked_dora::compact_linear_kernel", "CPU")
HAS_TRITON = "triton" in registered("compact_linear")
TRITON_CPU = HAS_TRITON and registered("compact_linear")["triton"].supports(torch.device("cpu"), torch.float32)

# (backend, dtype) pairs that run on this machine's CPU; bf16 Triton is GPU-only (interpreter tl.dot, triton #11584)
CPU_CASES = [("torch", torch.float32), ("torch", torch.bfloat16), ("cpp", torch.float32),
             ("cpp", torch.bfloat16), ("triton", torch.float32), ("triton", torch.float16)]


def skip_unavailable(backend):
    if backend == "cpp" and not HAS_CPP:
        pytest.skip("cpp backend: masked_dora._C has no CPU kernel for compact_linear (extension not built; "
                    "run pip install --no-build-isolation -e .); status: "
                    f"{masked_dora.backend_status().get('extension')}")
    if backend == "triton" and not TRITON_CPU:
        pytest.skip("triton backend on CPU needs triton and TRITON_INTERPRET=1 (set by conftest without a GPU); "
                    f"status: {masked_dora.backend_status().get('triton')}")


def sorted_subset(n, k, gen=None):
    return torch.sort(torch.randperm(n, generator=gen)[:k]).values


def reference_f64(x, w, b, in_idx, out_idx, out_features, residual):
    xg = x.double() if in_idx is None else x.double()[..., in_idx]
    y = xg @ w.double().t()
    if b is not None:
        y = y + b.double()
    if out_idx is None:
        return y if residual is None else y + residual.double()
    out = residual.double().clone() if residual is not None else y.new_zeros(*y.shape[:-1], out_features)
    out[..., out_idx] += y
    return out


def make_case(dtype, lead=(37,), k_full=96, k_kept=70, n_full=80, n_kept=50, gather=True, scatter=True,
              residual=False, bias=True):
    x = torch.randn(*lead, k_full if gather else k_kept).to(dtype)
    w = (torch.randn(n_kept, k_kept) / k_kept ** 0.5).to(dtype)
    b = torch.randn(n_kept).to(dtype) if bias else None
    in_idx = sorted_subset(k_full, k_kept) if gather else None
    out_idx = sorted_subset(n_full, n_kept) if scatter else None
    width = n_full if scatter else n_kept
    res = torch.randn(*lead, width).to(dtype) if residual else None
    return x, w, b, in_idx, out_idx, width, res


def tol(backend, dtype):
    """None (the policy's) for CPU kernels; Triton on a GPU: the fp32 bound follows the TF32 setting."""
    return kernel_tolerance(dtype, "cuda") if (backend == "triton" and torch.cuda.is_available()) else None


# ---------------------------------------------------------------- numerics, every backend

@pytest.mark.parametrize("backend,dtype", CPU_CASES)
@pytest.mark.parametrize("gather,scatter,residual", [(g, s, r) for g in (0, 1) for s in (0, 1) for r in (0, 1)])
def test_matches_float64_reference(backend, dtype, gather, scatter, residual):
    skip_unavailable(backend)
    x, w, b, ii, oi, width, res = make_case(dtype, gather=gather, scatter=scatter, residual=residual,
                                            bias=bool(gather or scatter))
    with use_backend(backend):
        assert select("compact_linear", x.device, dtype).name == backend
        y = compact_linear(x, w, b, ii, oi, width if scatter else None, res)
    ref = reference_f64(x, w, b, ii, oi, width, res)
    assert y.dtype == dtype
    assert_close_rel(y, ref, dtype, f"{backend} gather={gather} scatter={scatter} residual={residual}",
                     tol=tol(backend, dtype))
    if scatter and not residual:  # pruned output channels are exactly zero
        pruned = torch.ones(width, dtype=torch.bool)
        pruned[oi] = False
        assert (y[:, pruned] == 0).all()


@pytest.mark.parametrize("backend,dtype", CPU_CASES)
def test_3d_noncontiguous_inputs_and_single_channel(backend, dtype):
    skip_unavailable(backend)
    # 3-D x as a strided view (every other feature of a wider tensor), residual transposed in memory
    base = torch.randn(3, 11, 2 * 90).to(dtype)
    x = base[..., ::2]
    assert not x.is_contiguous()
    w = (torch.randn(33, 40) / 40 ** 0.5).to(dtype)
    b = torch.randn(33).to(dtype)
    ii, oi = sorted_subset(90, 40), sorted_subset(64, 33)
    res = torch.randn(64, 11, 3).to(dtype).permute(2, 1, 0)
    with use_backend(backend):
        y = compact_linear(x, w, b, ii, oi, 64, res)
        y1 = compact_linear(x, w[:1, :1].contiguous(), b[:1], ii[5:6], oi[3:4], 64)  # one kept channel each way
    assert y.shape == (3, 11, 64) and y1.shape == (3, 11, 64)
    assert_close_rel(y, reference_f64(x, w, b, ii, oi, 64, res), dtype, f"{backend} 3-D strided", tol=tol(backend, dtype))
    ref1 = reference_f64(x, w[:1, :1], b[:1], ii[5:6], oi[3:4], 64, None)
    assert_close_rel(y1, ref1, dtype, f"{backend} single channel", tol=tol(backend, dtype))


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_large_m_blocked_path_and_float64(backend):
    """M large enough for the cpp kernel's parallel row blocks (uneven last block), and float64."""
    skip_unavailable(backend)
    for dtype in (torch.float32, torch.float64):
        x, w, b, ii, oi, width, res = make_case(dtype, lead=(523,), residual=True)
        with use_backend(backend):
            y = compact_linear(x, w, b, ii, oi, width, res)
            y2 = compact_linear(x, w, b, ii, None)
        assert_close_rel(y, reference_f64(x, w, b, ii, oi, width, res), dtype, f"{backend} blocked")
        assert_close_rel(y2, reference_f64(x, w, b, ii, None, None, None), dtype, f"{backend} blocked, gather only")


@pytest.mark.parametrize("backend,dtype", CPU_CASES)
@pytest.mark.parametrize("scatter,residual", [(0, 0), (1, 0), (1, 1), (0, 1)])
def test_poisoned_output_is_fully_written(backend, dtype, scatter, residual):
    """Every element of a NaN-filled out is written (pruned columns: 0 or the residual)."""
    skip_unavailable(backend)
    x, w, b, ii, oi, width, res = make_case(dtype, scatter=scatter, residual=residual, lead=(45,))
    out = torch.full((45, width), float("nan"), dtype=dtype)
    registered("compact_linear")[backend].fn(x, w, b, ii, oi, res, out)
    assert_close_rel(out, reference_f64(x, w, b, ii, oi, width, res), dtype, f"{backend} poisoned",
                     tol=tol(backend, dtype))
    if scatter:
        pruned = torch.ones(width, dtype=torch.bool)
        pruned[oi] = False
        expect = torch.zeros_like(out[:, pruned]) if res is None else res[:, pruned]
        assert torch.equal(out[:, pruned], expect)


@pytest.mark.parametrize("backend,dtype", CPU_CASES)
@pytest.mark.parametrize("scatter", [False, True])
def test_in_place_residual_accumulation(backend, dtype, scatter):
    """residual is out: the kernel adds into the kept columns and leaves the others alone."""
    skip_unavailable(backend)
    x, w, b, ii, oi, width, res = make_case(dtype, scatter=scatter, residual=True, lead=(40,))
    out = res.clone()
    registered("compact_linear")[backend].fn(x, w, b, ii, oi, out, out)
    assert_close_rel(out, reference_f64(x, w, b, ii, oi, width, res), dtype, backend, tol=tol(backend, dtype))
    if scatter:
        pruned = torch.ones(width, dtype=torch.bool)
        pruned[oi] = False
        assert torch.equal(out[:, pruned], res[:, pruned])


@pytest.mark.parametrize("backend,dtype", CPU_CASES)
@pytest.mark.parametrize("gather,scatter", [(1, 1), (0, 1), (1, 0)])
def test_public_in_place_op(backend, dtype, gather, scatter):
    skip_unavailable(backend)
    x, w, b, ii, oi, width, res = make_case(dtype, lead=(2, 9), gather=gather, scatter=scatter, residual=True)
    stream = res.clone()
    ptr = stream.data_ptr()
    with use_backend(backend), torch.no_grad():
        out = compact_linear_(stream, x, w, b, ii, oi)
    assert out is stream and stream.data_ptr() == ptr
    assert_close_rel(stream, reference_f64(x, w, b, ii, oi, width, res), dtype, f"{backend} in place",
                     tol=tol(backend, dtype))


def test_in_place_op_refuses_autograd_and_strided_residual():
    x, w, b, ii, oi, width, res = make_case(torch.float32, residual=True)
    with pytest.raises(RuntimeError, match="compact_linear_: the in-place residual update has no autograd"):
        compact_linear_(res, x.requires_grad_(True), w, b, ii, oi)
    with pytest.raises(ValueError, match="residual: the in-place op needs a contiguous residual"):
        compact_linear_(res.t().contiguous().t(), x.detach(), w, b, ii, oi)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_in_place_op_refuses_an_inference_tensor_outside_inference_mode(backend):
    skip_unavailable(backend)
    with torch.inference_mode():
        residual = torch.randn(4, 10)
        x, w = torch.randn(4, 6), torch.randn(3, 6)
    idx = torch.tensor([1, 4, 7])
    before = residual.clone()
    with use_backend(backend), pytest.raises(RuntimeError, match="residual: an inference tensor"):
        compact_linear_(residual, x, w, out_idx=idx)
    assert torch.equal(residual, before)
    with use_backend(backend), torch.inference_mode():  # inside inference_mode it updates in place
        compact_linear_(residual, x, w, out_idx=idx)
    assert torch.equal(residual[:, idx], before[:, idx] + x @ w.t())


def test_in_place_op_opcheck_and_compile():
    x, w, b, ii, oi, width, res = make_case(torch.float64, lead=(6,), k_full=20, k_kept=12, n_full=15, n_kept=7,
                                            residual=True)
    torch.library.opcheck(torch.ops.masked_dora.compact_linear_add_.default, (res.clone(), x, w, b, ii, oi))
    layer = CompactLinear(w.float(), b.float(), 20, 15, in_idx=ii, out_idx=oi)
    torch._dynamo.reset()
    compiled = torch.compile(lambda r, x: layer.add_into(r, x), backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        r1, r2 = res.float().clone(), res.float().clone()
        compiled(r1, x.float())
        layer.add_into(r2, x.float())
    torch.testing.assert_close(r1, r2)
    assert_close_rel(r2, reference_f64(x, w, b, ii, oi, 15, res), torch.float32, "add_into")


def test_output_allocation_for_kept_columns_only_backends():
    """A backend that writes only the kept columns (CUDA) gets out pre-filled and residual=out."""
    from masked_dora.ops.compact_linear import FULL_WRITE_BACKENDS, allocate_output, compact_linear_reference

    assert "cuda" not in FULL_WRITE_BACKENDS
    x, w, b, ii, oi, width, res = make_case(torch.float32, residual=True)
    out, res_k = allocate_output("cuda", x, oi, width, res)
    assert res_k is out and torch.equal(out, res) and out.data_ptr() != res.data_ptr()
    compact_linear_reference(x, w, b, ii, oi, res_k, out)  # stands in for an in-place-only kernel
    assert_close_rel(out, reference_f64(x, w, b, ii, oi, width, res), torch.float32, "pre-filled")
    zeros, none = allocate_output("cuda", x, oi, width, None)
    assert none is None and (zeros == 0).all()
    empty, same = allocate_output("cpp", x, oi, width, res)
    assert same is res and empty.shape == (37, width)


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
def test_index_runs_pattern(backend):
    """Kept indices in runs of 8 (hidden-dim groups): the cpp kernel copies runs with memcpy."""
    skip_unavailable(backend)
    groups = sorted_subset(24, 13)
    ii = (groups[:, None] * 8 + torch.arange(8)).flatten()
    x = torch.randn(70, 192)
    w = torch.randn(30, ii.numel()) / 10
    oi = sorted_subset(64, 30)
    with use_backend(backend):
        y = compact_linear(x, w, None, ii, oi, 64)
    assert_close_rel(y, reference_f64(x, w, None, ii, oi, 64, None), torch.float32, f"{backend} runs")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m,scatter,residual", [(1, 1, 1), (5, 0, 0), (16, 1, 0), (3, 0, 1)])
def test_triton_split_k_decode_path(dtype, m, scatter, residual):
    """The decode split-K kernel + epilogue (forced split_k; on a GPU the SM count picks it)."""
    skip_unavailable("triton")
    from masked_dora.kernels.compact_linear import compact_linear_triton

    x, w, b, ii, oi, width, res = make_case(dtype, lead=(m,), k_full=400, k_kept=300, scatter=scatter,
                                            residual=residual)
    out = torch.full((m, width), float("nan"), dtype=dtype)
    compact_linear_triton(x, w, b, ii, oi, res, out, split_k=3)
    assert_close_rel(out, reference_f64(x, w, b, ii, oi, width, res), dtype, f"split-K m={m}", tol=tol("triton", dtype))
    with pytest.raises(ValueError, match="split_k: the split-K path runs M <= 16"):
        compact_linear_triton(torch.randn(17, 400).to(dtype), w, b, ii, oi, None, torch.empty(17, width, dtype=dtype),
                              split_k=2)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m", [1, 7, 16, 300])
def test_triton_on_gpu(dtype, m):
    x, w, b, ii, oi, width, res = make_case(dtype, lead=(m,), k_full=1000, k_kept=520, n_full=700, n_kept=333,
                                            residual=True)
    args = [t.cuda() if isinstance(t, torch.Tensor) else t for t in (x, w, b, ii, oi, width, res)]
    with use_backend("triton"):
        y = compact_linear(*args)
        y_plain = compact_linear(args[0][:, :520].contiguous(), args[1])
    assert_close_rel(y.cpu(), reference_f64(x, w, b, ii, oi, width, res), dtype, "triton gpu", tol=tol("triton", dtype))
    assert_close_rel(y_plain.cpu(), reference_f64(x[:, :520], w, None, None, None, None, None), dtype,
                     "triton gpu plain", tol=tol("triton", dtype))
    if m <= 16:  # the split-K decode path, forced (the SM-count heuristic may pick the tile kernel here)
        from masked_dora.kernels.compact_linear import compact_linear_triton

        out = torch.full((m, width), float("nan"), dtype=dtype, device="cuda")
        compact_linear_triton(args[0], args[1], args[2], args[3], args[4], args[6], out, split_k=4)
        assert_close_rel(out.cpu(), reference_f64(x, w, b, ii, oi, width, res), dtype, "triton gpu split-K",
                         tol=tol("triton", dtype))


# ---------------------------------------------------------------- dispatch

def test_triton_backend_registered_when_triton_loads():
    """A missing import in masked_dora/kernels/__init__.py must not silently skip the Triton tests."""
    if masked_dora.backend_status().get("triton") != "loaded":
        pytest.skip(f"triton backend unavailable: {masked_dora.backend_status().get('triton')}")
    assert HAS_TRITON, "masked_dora.kernels loaded but registered no triton backend for compact_linear"


def test_backend_choice_on_cpu():
    impls = registered("compact_linear")
    cpu = torch.device("cpu")
    if HAS_TRITON:
        assert impls["triton"].priority_on(cpu) < 0
    expected = "cpp" if HAS_CPP else "torch"
    assert select("compact_linear", cpu, torch.float32).name == expected


def test_fused_kernels_rank_below_the_reference_on_a_gpu():
    """Measured on an H100 (bench/results/2026-11-27-h100.md): index_select + cuBLAS beat both fused kernels
    7-10x at M = 8192."""
    impls = registered("compact_linear")
    cuda = torch.device("cuda")
    reference = impls["torch"].priority_on(cuda)
    for name in ("triton", "cuda"):
        if name in impls:
            assert impls[name].priority_on(cuda) < reference, name


def test_index_check_is_remembered_until_the_indices_change():
    x, w = torch.randn(3, 10), torch.randn(4, 3)
    in_idx = validate_indices("in_idx", [1, 4, 7], 10)
    out_idx = validate_indices("out_idx", [0, 2, 3, 5], 6)
    compact_linear(x, w, in_idx=in_idx, out_idx=out_idx, out_features=6)
    from masked_dora.ops.compact_linear import _CHECKED

    assert _CHECKED[in_idx][1] == 7 and not hasattr(in_idx, "_masked_dora_index_check")  # nothing on the tensor
    compact_linear(x, w, in_idx=in_idx, out_idx=out_idx, out_features=6)  # remembered: no new pass
    with pytest.raises(ValueError, match="out_idx"):  # the same tensor against a narrower output: checked again
        compact_linear(x, w, in_idx=in_idx, out_idx=out_idx, out_features=5)
    in_idx[2] = 12  # in place: the version counter moves, so the next call checks again
    with pytest.raises(ValueError, match="in_idx: index 12 is out of range"):
        compact_linear(x, w, in_idx=in_idx, out_idx=out_idx, out_features=6)
    in_idx[2] = 2  # now not increasing
    with pytest.raises(ValueError, match="in_idx"):
        compact_linear(x, w, in_idx=in_idx, out_idx=out_idx, out_features=6)
    in_idx[2] = 7
    compact_linear(x, w, in_idx=in_idx, out_idx=out_idx, out_features=6)
    in_idx.untyped_storage().copy_(torch.tensor([1, 4, 12]).untyped_storage())  # bypasses the version counter
    from masked_dora.ops import forget_index_check

    forget_index_check(in_idx)  # ... so say so, and the next call checks again
    with pytest.raises(ValueError, match="in_idx: index 12 is out of range"):
        compact_linear(x, w, in_idx=in_idx, out_idx=out_idx, out_features=6)
    with torch.inference_mode():  # inference tensors have no version counter: checked on every call
        frozen = torch.tensor([1, 4, 7])
        compact_linear(x, w, in_idx=frozen)
        assert frozen not in _CHECKED


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("idx,exc,msg", [
    (torch.tensor([], dtype=torch.int64), ValueError, "empty"),
    (torch.tensor([1, 3, 3, 5]), ValueError, "duplicate index 3"),
    (torch.tensor([0, 4, 10]), ValueError, r"index 10 is out of range \[0, 10\)"),
    (torch.tensor([-1, 2]), ValueError, "index -1 is out of range"),
    (torch.tensor([4, 2, 7]), ValueError, "sorted ascending"),
    (torch.tensor([0.0, 1.0]), TypeError, "integer index tensor"),
    (torch.ones(10, dtype=torch.bool), TypeError, "bool keep-mask"),
    (torch.tensor([[0, 1]]), ValueError, "1-D"),
])
def test_validate_indices_rejects(idx, exc, msg):
    with pytest.raises(exc, match=msg):
        validate_indices("in_idx", idx, 10)


def test_validate_indices_accepts_and_converts():
    out = validate_indices("out_idx", torch.tensor([0, 2, 9], dtype=torch.int32), 10)
    assert out.dtype == torch.int64 and out.tolist() == [0, 2, 9]
    assert validate_indices("out_idx", [3], 4).tolist() == [3]


def test_op_argument_errors_are_clear():
    x, w, b, ii, oi, width, res = make_case(torch.float32, residual=True)
    with pytest.raises(TypeError, match="in_idx: expected dtype torch.int64"):
        compact_linear(x, w, b, ii.int(), oi, width)
    with pytest.raises(ValueError, match="out_idx: expected a 1-D tensor of length 50"):
        compact_linear(x, w, b, ii, oi[:-1], width)
    with pytest.raises(ValueError, match="out_features: required with out_idx"):
        compact_linear(x, w, b, ii, oi)
    with pytest.raises(ValueError, match="x: expected last dimension 70"):
        compact_linear(x, w, b, None, oi, width)
    with pytest.raises(ValueError, match="residual: expected shape"):
        compact_linear(x, w, b, ii, oi, width, res[:, :-1])
    with pytest.raises(TypeError, match="weight: expected dtype torch.bfloat16"):
        compact_linear(x.bfloat16(), w, b, ii, oi, width)
    with pytest.raises(ValueError, match="bias: expected shape"):
        compact_linear(x, w, b[:-1], ii, oi, width)


# ---------------------------------------------------------------- autograd, opcheck, compile

@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_gradients_match_float64(backend):
    skip_unavailable(backend)
    x, w, b, ii, oi, width, res = make_case(torch.float32, lead=(3, 13), residual=True)
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b, res)]
    with use_backend(backend):
        y = compact_linear(leaves[0], leaves[1], leaves[2], ii, oi, width, leaves[3])
    gy = torch.randn_like(y)
    y.backward(gy)
    refs = [t.double().requires_grad_(True) for t in (x, w, b, res)]
    reference_f64(refs[0], refs[1], refs[2], ii, oi, width, refs[3]).backward(gy.double())
    for name, leaf, ref in zip(("x", "weight", "bias", "residual"), leaves, refs):
        assert_close_rel(leaf.grad, ref.grad, torch.float32, f"grad {name}")
    gx = leaves[0].grad
    dropped = torch.ones(96, dtype=torch.bool)
    dropped[ii] = False
    assert (gx[..., dropped] == 0).all()


@pytest.mark.parametrize("gather,scatter,residual", [(1, 1, 1), (1, 1, 0), (0, 0, 0), (0, 1, 0)])
def test_opcheck(gather, scatter, residual):
    x, w, b, ii, oi, width, res = make_case(torch.float64, lead=(9,), k_full=20, k_kept=12, n_full=15, n_kept=7,
                                            gather=gather, scatter=scatter, residual=residual)
    args = (x.requires_grad_(True), w.requires_grad_(True), b.requires_grad_(True), ii, oi, width,
            None if res is None else res.requires_grad_(True))
    torch.library.opcheck(torch.ops.masked_dora.compact_linear.default, args)


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_compact_linear_module(compile_backend):
    torch._dynamo.reset()
    lin = torch.nn.Linear(48, 40)
    layer = CompactLinear.from_linear(lin, keep_in=sorted_subset(48, 30), keep_out=torch.rand(40) < 0.6)
    x = torch.randn(2, 5, 48, requires_grad=True)
    res = torch.randn(2, 5, 40, requires_grad=True)
    compiled = torch.compile(layer, backend=compile_backend, fullgraph=True)
    y_c = compiled(x, res)
    y_e = layer(x, res)
    torch.testing.assert_close(y_c, y_e)
    y_c.sum().backward()
    gx, gres, gw = x.grad.clone(), res.grad.clone(), layer.weight.grad.clone()
    x.grad = res.grad = layer.weight.grad = None
    y_e.sum().backward()
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gres, res.grad)
    torch.testing.assert_close(gw, layer.weight.grad)


def test_plain_compact_gemm_equals_f_linear():
    x = torch.randn(17, 33)
    w, b = torch.randn(21, 33), torch.randn(21)
    torch.testing.assert_close(compact_linear(x, w, b), F.linear(x, w, b))


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_autocast_computes_as_linear_does_there(backend):
    """Inside torch.autocast: x, weight and bias in the autocast dtype, the result in it; a residual of another
    dtype added after the GEMM with type promotion (as residual + F.linear(...)), one of the same dtype fused."""
    skip_unavailable(backend)
    x, w, b, ii, oi, width, res = make_case(torch.float32, lead=(2, 9), residual=True)
    w.requires_grad_(True)
    low = [t.bfloat16() for t in (x, w.detach(), b)]
    with use_backend(backend):
        want = compact_linear(*low, ii, oi, width)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = compact_linear(x, w, b, ii, oi, width)
            promoted = compact_linear(x, w, b, ii, oi, width, res)
            fused = compact_linear(x, w, b, ii, oi, width, res.bfloat16())
        assert y.dtype == torch.bfloat16 and torch.equal(y, want)
        assert promoted.dtype == torch.float32 and torch.equal(promoted, res + want)
        assert fused.dtype == torch.bfloat16 and torch.equal(fused, compact_linear(*low, ii, oi, width, res.bfloat16()))
        y.float().sum().backward()
    assert w.grad is not None and w.grad.dtype == torch.float32
    with pytest.raises(TypeError, match="x"):  # a non-float input is still refused, not cast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            compact_linear(x.long(), w, b, ii, oi, width)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, w: compact_linear(x, w, b, ii, oi, width), fullgraph=True, backend="aot_eager")
    with use_backend(backend), torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(compiled(x, w), want)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_autocast_leaves_float64_alone_as_linear_does(backend):
    """Autocast never casts float64 tensors (F.linear stays float64 there); compact_linear cast them to bf16."""
    skip_unavailable(backend)
    x, w, b, ii, oi, width, res = make_case(torch.float64, lead=(2, 9), residual=True)
    with use_backend(backend):
        want = compact_linear(x, w, b, ii, oi, width, res)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert F.linear(x, torch.randn(3, x.shape[-1], dtype=torch.float64)).dtype == torch.float64
            got = compact_linear(x, w, b, ii, oi, width, res)
    assert got.dtype == torch.float64 and torch.equal(got, want)
