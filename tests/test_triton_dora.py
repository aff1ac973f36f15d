"""Triton kernels for masked DoRA (row_norm, dora_linear forward and backward).

On a CPU they run under the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1) at small sizes, in float32 and float16 only (the
interpreter's bf16 tl.dot is wrong, triton #11584); bf16 and real sizes are
GPU-only (``cuda`` marker). Everything is compared with the float64 dense
reference of tests/helpers.py, including every gradient. The CPU-tensor tests
(``interpreter_only``) skip where the kernels are compiled for a GPU instead
(tests/test_gpu_test_hygiene.py runs this file that way).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from masked_dora.masks.gates import make_gate
from masked_dora.nn.functional import masked_dora_linear
from masked_dora.nn.masked_dora_linear import MaskedDoRALinear
from masked_dora.ops import _registry, row_norm, select, use_backend
from tests.helpers import TOLERANCE, assert_close_rel, dense_masked_dora_f64, kernel_tolerance, leaf, rel_err

kernels = pytest.importorskip("masked_dora.kernels")
from masked_dora.kernels import dora_linear as fwd_mod  # noqa: E402
from masked_dora.kernels import dora_linear_backward as bwd_mod  # noqa: E402
from masked_dora.kernels import row_norm as norm_mod  # noqa: E402

pytestmark = pytest.mark.triton
ON_GPU = torch.cuda.is_available()
DEV = "cuda" if ON_GPU else "cpu"
INTERP_DTYPES = [torch.float32, torch.float16]
# Triton on CPU tensors: only under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1 without a GPU).
# On a GPU machine the kernels are compiled and refuse CPU tensors, so the CPU-tensor tests skip there.
TRITON_CPU = _registry.registered("dora_linear")["triton"].supports(torch.device("cpu"), torch.float32)
interpreter_only = pytest.mark.skipif(
    not TRITON_CPU, reason="runs Triton kernels on CPU tensors: needs the Triton interpreter (TRITON_INTERPRET=1, "
    "set by tests/conftest.py without a GPU); here: "
    + _registry.registered("dora_linear")["triton"].why_not(torch.device("cpu"), torch.float32))

# (x shape, N, r): odd sizes, 3-D input, r = 1, non-power-of-two r, r above the fused limit
CASES = [((2, 7, 70), 45, 1), ((37, 90), 130, 5), ((19, 33), 20, 16), ((9, 150), 140, 130)]


@pytest.fixture
def triton_calls(monkeypatch):
    """Counts calls of each op's triton implementation (so a test knows the kernels really ran)."""
    counts = {}
    for op in ("row_norm", "dora_linear", "dora_linear_backward"):
        impl = _registry._REGISTRY[op]["triton"]

        def counted(*args, _fn=impl.fn, _op=op, **kwargs):
            counts[_op] = counts.get(_op, 0) + 1
            return _fn(*args, **kwargs)

        monkeypatch.setitem(_registry._REGISTRY[op], "triton", dataclasses.replace(impl, fn=counted))
    return counts


def _layer_tensors(x_shape, n, r, dtype, zero_rows=(), noncontig=False):
    k = x_shape[-1]
    x = torch.randn(*x_shape[:-1], 2 * k if noncontig else k, dtype=torch.float64)
    w = torch.randn(n, k, dtype=torch.float64) / k ** 0.5
    b_lora = torch.randn(n, r, dtype=torch.float64) * 0.3
    magnitude = torch.rand(n, dtype=torch.float64) + 0.5
    for j in zero_rows:  # an exactly-zero row of W0 + s B A; m starts at ||W0_j|| = 0 as in the module
        w[j] = 0.0
        b_lora[j] = 0.0
        magnitude[j] = 0.0
    return dict(x=x, noncontig=noncontig, weight=w, bias=torch.randn(n, dtype=torch.float64) * 0.1,
                lora_A=torch.randn(r, k, dtype=torch.float64) / k ** 0.5, lora_B=b_lora,
                magnitude=magnitude, theta=torch.randn(n, dtype=torch.float64) * 2.0)


def _keep(n, masks):
    if masks == "all_kept":
        return torch.ones(n, dtype=torch.bool)
    if masks == "all_pruned":
        return torch.zeros(n, dtype=torch.bool)
    return torch.rand(n) < 0.75


def _forward_backward(t, keep, dtype, scaling, backend):
    """y and the grads of x, A, B, m, theta (through the gate) and bias, in ``dtype`` (or float64 dense)."""
    gate = make_gate("hard_concrete")
    cast = dtype if dtype != "f64" else torch.float64
    x = t["x"].to(cast, copy=True)
    if t["noncontig"]:  # every other column of a wider buffer: last stride 2
        x = x[..., ::2]
        assert not x.is_contiguous()
    x = x.requires_grad_(True)
    params = {name: leaf(t[name], cast) for name in ("bias", "lora_A", "lora_B", "magnitude", "theta")}
    z = keep.to(cast) * gate.expected_keep(params["theta"])
    w = t["weight"].to(cast)
    if dtype == "f64":
        y = dense_masked_dora_f64(x, w, params["bias"], params["lora_A"], params["lora_B"], scaling,
                                  params["magnitude"], z)
    else:
        with use_backend(backend):
            y = masked_dora_linear(x, w, params["bias"], params["lora_A"], params["lora_B"], scaling,
                                   params["magnitude"], z)
    dy = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(y.device)
    with use_backend(backend):
        y.backward(dy.to(y.dtype))
    grads = {"x": x.grad, **{k: p.grad for k, p in params.items()}}
    return y, grads


@interpreter_only
@pytest.mark.parametrize("dtype", INTERP_DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"x{c[0]}-N{c[1]}-r{c[2]}")
@pytest.mark.parametrize("masks", ["mixed", "all_kept", "all_pruned"])
def test_forward_backward_match_f64(dtype, case, masks, triton_calls):
    x_shape, n, r = case
    t = _layer_tensors(x_shape, n, r, torch.float64, zero_rows=(3,))
    keep = _keep(n, masks)
    y, grads = _forward_backward(t, keep, dtype, 0.7, "triton")
    y_ref, grads_ref = _forward_backward(t, keep, "f64", 0.7, None)
    assert triton_calls.get("dora_linear") == 1 and triton_calls.get("dora_linear_backward") == 1
    assert triton_calls.get("row_norm") == 1
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert_close_rel(y, y_ref, dtype, "y")
    for name, g in grads.items():
        assert g is not None, name
        assert_close_rel(g, grads_ref[name], dtype, f"grad {name}")
    if masks == "all_pruned":
        assert (y == 0).all()


@interpreter_only
@pytest.mark.parametrize("dtype", INTERP_DTYPES, ids=str)
@pytest.mark.parametrize("dpb", ["fused", "separate"])
def test_noncontiguous_input(dtype, dpb, triton_calls, monkeypatch):
    if dpb == "separate":  # dP B from its own kernel (the many-token path), not inside the dgrad loop
        monkeypatch.setattr(bwd_mod, "FUSE_DPB_MAX_TOKENS", 0)
    for x_shape in ((21, 40), (3, 5, 40)):
        t = _layer_tensors(x_shape, 29, 3, torch.float64, noncontig=True)
        keep = _keep(29, "mixed")
        y, grads = _forward_backward(t, keep, dtype, 2.0, "triton")
        y_ref, grads_ref = _forward_backward(t, keep, "f64", 2.0, None)
        assert_close_rel(y, y_ref, dtype, "y")
        for name, g in grads.items():
            assert_close_rel(g, grads_ref[name], dtype, f"grad {name}")
    assert triton_calls["dora_linear"] == 2


@interpreter_only
def test_transposed_operands_direct():
    """The launchers take any strides: x and W0 as transposed views, checked against the reference op."""
    from masked_dora.ops.dora_linear import dora_linear_forward_reference as ref
    x = torch.randn(50, 31).t()            # (31, 50) with strides (1, 31)
    w = torch.randn(50, 43).t()            # (43, 50) with strides (1, 43)
    a, b = torch.randn(4, 50), torch.randn(43, 4)
    c, zb = torch.rand(43), torch.randn(43)
    outs = fwd_mod.dora_linear_triton(x, w, a, b, 0.3, c, zb)
    for o, q in zip(outs, ref(x.double(), w.double(), a.double(), b.double(), 0.3, c.double(), zb.double())):
        assert rel_err(o, q) < 1e-5


@interpreter_only
@pytest.mark.parametrize("dtype", INTERP_DTYPES, ids=str)
@pytest.mark.parametrize("r", [1, 6, 16, 33, 129])
def test_row_norm_matches_f64(dtype, r):
    n, k = 45, 70
    w = torch.randn(n, k, dtype=torch.float64)
    a, b = torch.randn(r, k, dtype=torch.float64) * 0.2, torch.randn(n, r, dtype=torch.float64) * 0.2
    w[[0, 17, 44]] = 0.0
    b[[0, 17]] = 0.0                                    # rows 0, 17: exactly zero -> eps
    wd, ad, bd = w.to(dtype), a.to(dtype), b.to(dtype)
    ref = (wd.double() + 0.5 * bd.double() @ ad.double()).norm(dim=1).clamp_min(1e-8)
    wsq = wd.double().square().sum(1).float()
    for cached in (None, wsq):
        out = torch.full((n,), float("nan"))
        got = norm_mod.row_norm_triton(wd, ad, bd, 0.5, cached, 1e-8, out=out)
        assert got.dtype == torch.float32 and got.data_ptr() == out.data_ptr()
        assert torch.isfinite(got).all()
        assert got[0].item() == pytest.approx(1e-8) and got[17].item() == pytest.approx(1e-8)
        assert rel_err(got, ref) < TOLERANCE[torch.float32]
    with use_backend("triton"):
        assert rel_err(row_norm(wd, ad, bd, 0.5), ref) < TOLERANCE[torch.float32]


@interpreter_only
def test_poisoned_forward_buffers_are_fully_written():
    m, n, k, r = 70, 67, 45, 3
    x, w = torch.randn(m, k), torch.randn(n, k)
    a, b, c, zb = torch.randn(r, k), torch.randn(n, r), torch.rand(n), torch.randn(n)
    y, pre, xa = (torch.full(s, float("nan")) for s in ((m, n), (m, n), (m, r)))
    fwd_mod.launch_forward(x, w, a, b, 0.5, c, zb, y, pre, xa)
    from masked_dora.ops.dora_linear import dora_linear_forward_reference as ref
    for o, q in zip((y, pre, xa), ref(x.double(), w.double(), a.double(), b.double(), 0.5, c.double(),
                                      zb.double())):
        assert torch.isfinite(o).all()
        assert rel_err(o, q) < 1e-5


@interpreter_only
@pytest.mark.parametrize("r", [2, 130])
@pytest.mark.parametrize("fuse_max_tokens", [512, 0])
def test_poisoned_backward_buffers_are_fully_written(r, fuse_max_tokens, monkeypatch):
    monkeypatch.setattr(bwd_mod, "FUSE_DPB_MAX_TOKENS", fuse_max_tokens)
    from masked_dora.ops.dora_linear import dora_linear_backward_reference as ref
    m, n, k = 300, 67, 131          # 300 tokens: two row splits of 256
    x, w = torch.randn(m, k), torch.randn(n, k) / k ** 0.5
    a, b, c = torch.randn(r, k) / k ** 0.5, torch.randn(n, r), torch.rand(n)
    pre, xa, dy = torch.randn(m, n), torch.randn(m, r), torch.randn(m, n)
    nan = float("nan")
    dx, dpb = torch.full((m, k), nan), torch.full((m, r), nan)
    parts = bwd_mod._launch(dy, x, w, a, b, 0.5, c, pre, xa, dx, dpb,
                            alloc=lambda *shape, **kw: torch.full(shape, nan, **kw))
    s_cols, dc_p, dzb_p, db_p, da_p = parts
    got = (dx, da_p.sum(0), db_p.sum(0), dc_p.sum(0), dzb_p.sum(0))
    want = ref(dy.double(), x.double(), w.double(), a.double(), b.double(), 0.5, c.double(), pre.double(),
               xa.double())
    assert s_cols == 2
    for name, o, q in zip(("dx", "dA", "dB", "dc", "dzb"), got, want):
        assert torch.isfinite(o).all(), name
        assert rel_err(o, q) < 1e-5, name
    assert torch.isfinite(dpb).all()


@interpreter_only
def test_empty_batch():
    from masked_dora.ops.dora_linear import dora_linear_backward_reference as ref
    x, w, a, b, c = torch.randn(0, 12), torch.randn(9, 12), torch.randn(3, 12), torch.randn(9, 3), torch.rand(9)
    y, pre, xa = fwd_mod.dora_linear_triton(x, w, a, b, 0.5, c, None)
    assert y.shape == (0, 9) and pre.shape == (0, 9) and xa.shape == (0, 3)
    got = bwd_mod.dora_linear_backward_triton(torch.randn(0, 9), x, w, a, b, 0.5, c, pre, xa)
    want = ref(torch.randn(0, 9), x, w, a, b, 0.5, c, pre, xa)
    for g, wt in zip(got, want):
        assert g.shape == wt.shape and g.dtype == wt.dtype and torch.equal(g, wt)


@interpreter_only
def test_backward_returns_reference_dtypes():
    from masked_dora.ops.dora_linear import dora_linear_backward_reference as ref
    m, n, k, r = 13, 17, 19, 2
    h = torch.float16
    args = (torch.randn(m, n, dtype=h), torch.randn(m, k, dtype=h), torch.randn(n, k, dtype=h),
            torch.randn(r, k, dtype=h), torch.randn(n, r, dtype=h), 1.5, torch.rand(n, dtype=torch.float32),
            torch.randn(m, n, dtype=h), torch.randn(m, r, dtype=h))
    got = bwd_mod.dora_linear_backward_triton(*args)
    want = ref(*args)
    assert [g.dtype for g in got] == [w.dtype for w in want]
    assert [g.shape for g in got] == [w.shape for w in want]


@interpreter_only
def test_dispatch_priority_and_errors():
    cpu = torch.device("cpu")
    assert select("dora_linear", cpu, torch.float32).name != "triton"  # negative priority on cpu
    assert select("row_norm", cpu, torch.float32).name == "torch"
    with use_backend("triton"):
        assert select("dora_linear", cpu, torch.float32).name == "triton"
        assert select("dora_linear_backward", cpu, torch.float16).name == "triton"
        with pytest.raises(RuntimeError, match="supports dtypes"):
            select("row_norm", cpu, torch.float64)
    impl = _registry.registered("dora_linear")["triton"]
    assert impl.priority_on(torch.device("cuda")) > 0 > impl.priority_on(cpu)
    x, w = torch.randn(4, 8), torch.randn(6, 8)
    a, b, c = torch.randn(2, 8), torch.randn(6, 2), torch.rand(6)
    with pytest.raises(ValueError, match="lora_B"):
        fwd_mod.dora_linear_triton(x, w, a, torch.randn(5, 2), 1.0, c, None)
    with pytest.raises(ValueError, match="x: expected last dimension in_features=8"):
        fwd_mod.dora_linear_triton(torch.randn(4, 7), w, a, b, 1.0, c, None)
    with pytest.raises(TypeError, match="x: the triton dora_linear kernels support"):
        fwd_mod.dora_linear_triton(x.double(), w.double(), a.double(), b.double(), 1.0, c, None)
    with pytest.raises(ValueError, match="grad_y"):
        bwd_mod.dora_linear_backward_triton(torch.randn(3, 6), x, w, a, b, 1.0, c, torch.randn(4, 6),
                                            torch.randn(4, 2))


@interpreter_only
def test_opcheck_with_triton_backend():
    x = torch.randn(11, 24, requires_grad=True)
    w = torch.randn(19, 24)
    a, b = torch.randn(3, 24, requires_grad=True), torch.randn(19, 3, requires_grad=True)
    c, zb = torch.rand(19, requires_grad=True), torch.randn(19, requires_grad=True)
    with use_backend("triton"):
        torch.library.opcheck(torch.ops.masked_dora.dora_linear.default, (x, w, a, b, 0.5, c, zb))
        torch.library.opcheck(torch.ops.masked_dora.dora_linear.default, (x, w, a, b, 0.5, c, None))
        y, _, xa = torch.ops.masked_dora.dora_linear(x.detach(), w, a.detach(), b.detach(), 0.5, c.detach(), None)
        zeroed = c.detach().clone()
        zeroed[::5] = 0.0
        torch.library.opcheck(torch.ops.masked_dora.dora_linear_backward.default,
                              (torch.randn(11, 19), x.detach(), w, a.detach(), b.detach(), 0.5, zeroed, None,
                               y, False, xa, zeroed != 0, zeroed == 0, None, True))
        torch.library.opcheck(torch.ops.masked_dora.row_norm.default, (w, a.detach(), b.detach(), 0.5, None, 1e-8))


@interpreter_only
def test_module_norm_cache_with_triton(triton_calls):
    layer = MaskedDoRALinear(40, 24, rank=5)
    with torch.no_grad():
        layer.lora_B.normal_()
    with use_backend("triton"):
        n1 = layer.weight_norm()
        assert layer.weight_norm() is n1 and triton_calls["row_norm"] == 1    # cached between micro-batches
        with torch.no_grad():
            layer.lora_B.mul_(0.5)                                            # an optimizer step bumps _version
        n2 = layer.weight_norm()
    assert triton_calls["row_norm"] == 2 and n2 is not n1
    dense = (layer.weight.double() + layer.scaling * layer.lora_B.double() @ layer.lora_A.double()).norm(dim=1)
    assert rel_err(n2, dense) < 1e-5


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=interpreter_only)])
def test_torch_compile_fullgraph_train_step(backend, triton_calls):
    torch._dynamo.reset()
    layer = MaskedDoRALinear(36, 22, rank=3)
    with torch.no_grad():
        layer.lora_B.normal_()
    layer.set_mask(torch.rand(22) < 0.7)
    x = torch.randn(2, 5, 36)
    dy = torch.randn(2, 5, 22)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    with use_backend(backend):
        y = compiled(x)
        y.backward(dy)
    got = {n: p.grad.clone() for n, p in layer.named_parameters() if p.requires_grad}
    layer.zero_grad()
    y_ref = layer(x)                       # eager, torch reference backend
    y_ref.backward(dy)
    assert rel_err(y, y_ref) < 1e-5
    for n, p in layer.named_parameters():
        if p.requires_grad:
            assert rel_err(got[n], p.grad) < 1e-5, n
    layer.train()
    layer.clear_mask()                     # sampled gate: the training-mode graph also compiles whole
    with use_backend(backend):
        compiled(x).square().mean().backward()
    assert torch.isfinite(layer.lora_A.grad).all()
    ran = triton_calls.get("dora_linear", 0)
    assert (ran >= 2) if backend == "triton" else (ran == 0)


# ---------------------------------------------------------------- forced Triton layer: small on CPU, real on GPU

def _check_forced_triton_layer(dtype, shape, device, triton_calls):
    """The layer with the triton backend forced, on ``device``: every kernel ran once, y and every grad match."""
    bsz, seq, k, n, r = shape
    t = _layer_tensors((bsz, seq, k), n, r, torch.float64, zero_rows=(5,))
    t = {name: v.to(device) if isinstance(v, torch.Tensor) else v for name, v in t.items()}
    keep = _keep(n, "mixed").to(device)
    y, grads = _forward_backward(t, keep, dtype, 0.5, "triton")
    assert triton_calls == {"row_norm": 1, "dora_linear": 1, "dora_linear_backward": 1}
    y_ref, grads_ref = _forward_backward(t, keep, "f64", 0.5, None)
    assert y.device.type == torch.device(device).type and y.dtype == dtype and y.shape == (bsz, seq, n)
    tol = kernel_tolerance(dtype, device)                            # fp32: 5e-4 only while tf32 is allowed
    assert_close_rel(y, y_ref, dtype, "y", tol)
    for name, g in grads.items():
        assert g is not None, name
        assert_close_rel(g, grads_ref[name], dtype, f"grad {name}", tol)


@interpreter_only
@pytest.mark.parametrize("dtype", INTERP_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 9, 70, 45, 5), (1, 13, 40, 70, 130)], ids=str)
def test_forced_triton_layer_small_cpu(dtype, shape, triton_calls):
    """The code path of test_gpu_real_sizes under the interpreter (fp32/fp16: interpreter bf16 tl.dot, #11584)."""
    _check_forced_triton_layer(dtype, shape, "cpu", triton_calls)


# ---------------------------------------------------------------- GPU only (not run without CUDA)

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(4, 1024, 4096, 4096, 16), (2, 1000, 4096, 11008, 64),
                                   (1, 777, 11008, 4096, 7), (1, 333, 1000, 3000, 130)])
def test_gpu_real_sizes(dtype, shape, triton_calls):
    impl = _registry.registered("dora_linear")["triton"]
    if not impl.supports(torch.device("cuda"), dtype):  # kernels defined under TRITON_INTERPRET=1
        pytest.skip(impl.why_not(torch.device("cuda"), dtype))
    _check_forced_triton_layer(dtype, shape, "cuda", triton_calls)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_gpu_poisoned_buffers_real_size(dtype):
    from masked_dora.ops.dora_linear import dora_linear_backward_reference as bref
    from masked_dora.ops.dora_linear import dora_linear_forward_reference as fref
    m, n, k, r = 4100, 4096, 11008, 64
    g = torch.Generator(device=DEV).manual_seed(0)
    rnd = lambda *s, scale=1.0: (torch.randn(*s, generator=g, device=DEV) * scale).to(dtype)  # noqa: E731
    x, w, a, b = rnd(m, k), rnd(n, k, scale=k ** -0.5), rnd(r, k, scale=k ** -0.5), rnd(n, r)
    c, zb = torch.rand(n, device=DEV), torch.randn(n, device=DEV)
    y, pre, xa = (torch.full(shape, float("nan"), device=DEV, dtype=dtype) for shape in ((m, n), (m, n), (m, r)))
    fwd_mod.launch_forward(x, w, a, b, 0.5, c, zb, y, pre, xa)
    tol = kernel_tolerance(dtype, DEV)
    for o, q in zip((y, pre, xa), fref(x.double(), w.double(), a.double(), b.double(), 0.5, c.double(),
                                       zb.double())):
        assert torch.isfinite(o).all() and rel_err(o, q) < tol
    dy = rnd(m, n)
    nan = float("nan")
    dx, dpb = torch.full((m, k), nan, device=DEV, dtype=dtype), torch.full((m, r), nan, device=DEV, dtype=dtype)
    _, dc_p, dzb_p, db_p, da_p = bwd_mod._launch(dy, x, w, a, b, 0.5, c, pre, xa, dx, dpb,
                                                 alloc=lambda *shape, **kw: torch.full(shape, nan, **kw))
    want = bref(dy.double(), x.double(), w.double(), a.double(), b.double(), 0.5, c.double(), pre.double(),
                xa.double())
    for o, q in zip((dx, da_p.sum(0), db_p.sum(0), dc_p.sum(0), dzb_p.sum(0)), want):
        assert torch.isfinite(o).all() and rel_err(o, q) < tol


@pytest.mark.cuda
def test_gpu_torch_compile_inductor_fullgraph():
    torch._dynamo.reset()
    layer = MaskedDoRALinear(4096, 4096, rank=16, dtype=torch.bfloat16, device=DEV)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.02)
    layer.set_mask(torch.rand(4096, device=DEV) < 0.75)
    x = torch.randn(2, 512, 4096, device=DEV, dtype=torch.bfloat16)
    dy = torch.randn(2, 512, 4096, device=DEV, dtype=torch.bfloat16)
    y = torch.compile(layer, fullgraph=True)(x)
    y.backward(dy)
    got = layer.lora_A.grad.clone()
    layer.zero_grad()
    with use_backend("torch"):
        y_ref = layer(x)
        y_ref.backward(dy)
    assert rel_err(y, y_ref) < 1e-2 and rel_err(got, layer.lora_A.grad) < 1e-2


def test_without_interpreter_cpu_is_refused_clearly():
    """A fresh process without TRITON_INTERPRET: triton says no on the CPU, with the reason, and CUDA stays cold."""
    import os
    import subprocess
    import sys
    code = """
import torch, masked_dora
from masked_dora.ops import select, use_backend
assert masked_dora.backend_status()["triton"] == "loaded"
assert select("dora_linear", torch.device("cpu"), torch.float32).name != "triton"
with use_backend("triton"):
    try:
        select("dora_linear", torch.device("cpu"), torch.float32)
    except RuntimeError as exc:
        assert "TRITON_INTERPRET=1" in str(exc), str(exc)
    else:
        raise AssertionError("forced triton on cpu without the interpreter did not raise")
assert not torch.cuda.is_initialized(), "importing masked_dora initialised CUDA"
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MASKED_DORA_BACKEND")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
