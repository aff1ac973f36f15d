"""What dora_linear keeps for its backward (issue 16): x, x A^T and its own output, never the M x N P.

The scale gradient is read off the output where |c| >= tau and recomputed from P's rows elsewhere
(masked_dora.ops.dora_linear's docstring); these tests pin both paths against the float64 definition,
in every dtype, for the reference and the C++ backend.
"""

import importlib
import os

import pytest
import torch

from masked_dora.ops import dora_linear, row_norm, use_backend
from masked_dora.ops.dora_linear import recoverable_scale

from helpers import assert_close_rel, dense_masked_dora_f64, leaf

dora_mod = importlib.import_module("masked_dora.ops.dora_linear")  # the module (the package exports the function)


@pytest.fixture(autouse=True)
def backend(torch_and_cpp_backend):  # every test: torch reference and C++ backends (conftest.py)
    return torch_and_cpp_backend


def _inputs(m, k, n, r, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(m, k, generator=g), weight=torch.randn(n, k, generator=g) / k ** 0.5,
                bias=torch.randn(n, generator=g) * 0.5, lora_A=torch.randn(r, k, generator=g) / k ** 0.5,
                lora_B=torch.randn(n, r, generator=g) * 0.1, magnitude=torch.rand(n, generator=g) + 0.5,
                gate=torch.rand(n, generator=g), scaling=1.3)


def _layer(inp, dtype, skip_rows=None):
    x, A, B = leaf(inp["x"], dtype), leaf(inp["lora_A"], dtype), leaf(inp["lora_B"], dtype)
    vec = torch.float64 if dtype == torch.float64 else torch.float32
    mag, z = leaf(inp["magnitude"], vec), leaf(inp["gate"], vec)
    w = inp["weight"].to(dtype)
    scale = mag * z / row_norm(w, A, B, inp["scaling"])
    bias = None if inp["bias"] is None else z * inp["bias"].to(vec)
    return dora_linear(x, w, A, B, inp["scaling"], scale, bias, skip_rows=skip_rows), (x, A, B, mag, z)


def _dense(inp):
    leaves = [leaf(inp[k], torch.float64) for k in ("x", "lora_A", "lora_B", "magnitude", "gate")]
    x, A, B, mag, z = leaves
    return dense_masked_dora_f64(x, inp["weight"], inp["bias"], A, B, inp["scaling"], mag, z), leaves


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_zero_tiny_and_zero_magnitude_channels_match_float64(dtype):
    """Gate exactly 0 (its gradient to z is dc m / n, needed by straight-through gates), gates below and
    just above tau, a zero magnitude with the gate open: every gradient equals the float64 definition."""
    inp = _inputs(37, 24, 20, 3)
    tau = recoverable_scale(dtype)
    inp["gate"][[0, 5, 11]] = 0.0
    inp["gate"][[2, 7]] = tau * 1e-3  # c below tau: recomputed
    inp["gate"][[3]] = tau * 8.0  # c above tau: read off y (n ~ 1, m ~ 1)
    inp["magnitude"][[9, 13]] = 0.0  # c = 0 with z != 0: dm = dc z / n needs P there
    inp["magnitude"][15], inp["bias"][15] = 1e-5, 3.0  # the bias drowns c P: read off y, dm would be noise
    y, leaves = _layer(inp, dtype)
    y_ref, ref_leaves = _dense(inp)
    grad = torch.randn_like(y_ref)
    y.backward(grad.to(dtype))
    y_ref.backward(grad)
    for name, a, b in zip(("x", "lora_A", "lora_B", "magnitude", "gate"), leaves, ref_leaves):
        assert_close_rel(a.grad, b.grad, dtype, f"grad {name}")
    # the rows that need P, one by one (a norm-wise check could hide a wrong row among 20)
    rows = [0, 5, 11, 2, 7, 9, 13, 15]
    tol = {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, 2e-2)
    for got, ref in ((leaves[4].grad, ref_leaves[4].grad), (leaves[3].grad, ref_leaves[3].grad)):
        for j in rows:
            if ref[j] != 0:
                assert abs(got[j].double() - ref[j]) <= tol * ref.abs().max() + 1e-300, j


def test_only_the_rows_that_need_it_recompute_p(monkeypatch):
    inp = _inputs(16, 12, 10, 2)
    inp["gate"][[1, 4, 6]] = 0.0
    inp["magnitude"][8] = 0.0  # gate open: must recompute
    skip = torch.zeros(10, dtype=torch.bool)
    skip[[1, 4]] = True  # the caller does not need dc there; row 6 it does
    y, leaves = _layer(inp, torch.float32, skip_rows=skip)
    seen = []
    real = dora_mod.pre_scale_rows
    monkeypatch.setattr(dora_mod, "pre_scale_rows", lambda x, w, *a: seen.append(w.shape[0]) or real(x, w, *a))
    y.backward(torch.ones_like(y))
    assert seen == [2]  # rows 6 and 8, in one GEMM
    y_ref, ref_leaves = _dense(inp)
    y_ref.backward(torch.ones_like(y_ref))
    mag_grad, ref = leaves[3].grad, ref_leaves[3].grad
    keep = torch.ones(10, dtype=torch.bool)
    keep[[1, 4]] = False
    assert_close_rel(mag_grad[keep], ref[keep], torch.float32)
    gate_grad, ref_g = leaves[4].grad, ref_leaves[4].grad
    assert_close_rel(gate_grad[keep], ref_g[keep], torch.float32)
    # skipped rows: dc = 0, so dz is the bias term alone (b * sum dy), dm is 0 (z = 0)
    assert (mag_grad[[1, 4]] == 0).all()
    colsum = torch.ones(16, 10).sum(0)
    assert torch.allclose(gate_grad[[1, 4]], (inp["bias"] * colsum)[[1, 4]])


def test_no_scale_gradient_means_no_recompute(monkeypatch):
    inp = _inputs(8, 12, 10, 2)
    inp["gate"][:4] = 0.0
    x, A, B = leaf(inp["x"]), leaf(inp["lora_A"]), leaf(inp["lora_B"])
    scale = (inp["magnitude"] * inp["gate"]).detach()
    y = dora_linear(x, inp["weight"], A, B, 1.0, scale, None)
    monkeypatch.setattr(dora_mod, "pre_scale_rows", lambda *a: pytest.fail("P recomputed"))
    y.sum().backward()
    assert x.grad is not None and A.grad is not None


@pytest.mark.parametrize("hooks", [False, True], ids=["plain", "saved_tensor_hooks"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_saved_for_backward_is_x_xa_and_the_output(dtype, hooks, monkeypatch):
    """The issue's measure (what the graph holds, each storage once; parameters, input and output not counted):
    x A^T and a few N-vectors. With saved-tensor hooks active (checkpointing, offloading) the op keeps P, as
    before issue 16 (the hooks own the memory then)."""
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    from activation_memory import graph_saved_bytes

    m, k, n, r = 64, 48, 40, 4
    inp = _inputs(m, k, n, r)
    x, A, B = leaf(inp["x"], dtype), leaf(inp["lora_A"], dtype), leaf(inp["lora_B"], dtype)
    mag, z = leaf(inp["magnitude"]), leaf(inp["gate"])
    w = inp["weight"].to(dtype)
    scale = mag * z / row_norm(w, A, B, 1.0)
    if hooks:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            y = dora_linear(x, w, A, B, 1.0, scale, z * inp["bias"])
    else:
        y = dora_linear(x, w, A, B, 1.0, scale, z * inp["bias"])
    extra = graph_saved_bytes([y], exclude=[x, A, B, w, mag, z, y])
    elt = torch.finfo(dtype).bits // 8
    if hooks:
        assert extra >= m * n * elt  # P
    else:
        assert extra <= m * r * elt + 8 * n * 8, extra  # x A^T plus a few N-vectors (scale, gated bias, masks)
        node = y.grad_fn  # through the reshape's view node to the op's
        while not hasattr(node, "kept_output"):
            node = node.next_functions[0][0]
        assert node.kept_output.untyped_storage().data_ptr() == y.untyped_storage().data_ptr()
    y.sum().backward()


@pytest.mark.parametrize("mode", ["plain", "checkpoint", "checkpoint_reentrant", "retain_graph"])
def test_an_output_changed_in_place_gives_exact_gradients(mode):
    """Falcon's pattern, ``mlp_output += attention_output`` on the layer's output: the backward notices (version
    counter) and recomputes P, exact with and without checkpointing (where autograd itself would raise, or,
    under non-reentrant checkpointing, silently hand back the changed y)."""
    from torch.utils.checkpoint import checkpoint

    inp = _inputs(9, 16, 12, 3)
    inp["gate"][[1, 2]] = 0.0
    other = torch.randn(9, 12, dtype=torch.float64)
    names = ("x", "lora_A", "lora_B", "magnitude", "gate")
    leaves = [leaf(inp[k], torch.float64) for k in names]
    w, b = inp["weight"].double(), inp["bias"].double()

    def block(x, A, B, mag, z):
        scale = mag * z / row_norm(w, A, B, inp["scaling"])
        y = dora_linear(x, w, A, B, inp["scaling"], scale, z * b)
        y += other
        return torch.tanh(y)

    if mode.startswith("checkpoint"):
        out = checkpoint(block, *leaves, use_reentrant=mode.endswith("reentrant"))
    else:
        out = block(*leaves)
    if mode == "retain_graph":
        out.sum().backward(retain_graph=True)
        for t in leaves:
            t.grad = None
    out.sum().backward()
    ref = [leaf(inp[k], torch.float64) for k in names]
    y_ref = dense_masked_dora_f64(ref[0], inp["weight"], inp["bias"], *ref[1:3], inp["scaling"], *ref[3:])
    torch.tanh(y_ref + other).sum().backward()
    for name, a, r in zip(names, leaves, ref):
        assert_close_rel(a.grad, r.grad, torch.float64, f"{mode}: grad {name}")


def test_skip_rows_is_checked():
    inp = _inputs(4, 8, 6, 2)
    args = (inp["x"], inp["weight"], inp["lora_A"], inp["lora_B"], 1.0, torch.rand(6))
    with pytest.raises(TypeError, match="skip_rows: expected a bool tensor"):
        dora_linear(*args, skip_rows=torch.zeros(6))
    with pytest.raises(ValueError, match=r"skip_rows: expected shape \(6,\)"):
        dora_linear(*args, skip_rows=torch.zeros(5, dtype=torch.bool))


@pytest.mark.parametrize("gate, expect_rows", [("sigmoid_ste", 4), ("hard_concrete", 0), ("fixed", 0)])
def test_the_layer_recomputes_p_only_where_a_closed_gate_has_a_gradient(gate, expect_rows, monkeypatch):
    """A straight-through gate's z = 0 channels need dc (their logits learn from it): P recomputed there, and
    the logits' gradient equals the dense float64 layer's with the same gate. Hard-concrete's clamp and a fixed
    mask give z = 0 no gradient: nothing recomputed."""
    from masked_dora.nn import MaskedDoRALinear

    torch.manual_seed(0)
    layer = MaskedDoRALinear(16, 10, rank=3, gate="hard_concrete" if gate == "fixed" else gate).double().train()
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.mask_logits.copy_(torch.tensor([3.0, -9, 2, -9, 1, -9, 4, -9, 2, 3], dtype=torch.float64) * 4)
    if gate == "fixed":
        layer.set_mask(layer.mask_logits.detach() > 0)
    x = torch.randn(7, 16, dtype=torch.float64)
    seen = []
    real = dora_mod.pre_scale_rows
    monkeypatch.setattr(dora_mod, "pre_scale_rows", lambda x_, w, *a: seen.append(w.shape[0]) or real(x_, w, *a))
    torch.manual_seed(1)
    z = layer.gate_values()
    assert (z[1::2][:4] == 0).all()
    torch.manual_seed(1)
    y = layer(x)
    seen.clear()
    g = torch.randn_like(y)
    y.backward(g)
    assert sum(seen) == expect_rows
    got = {name: p.grad.clone() for name, p in layer.named_parameters() if p.grad is not None}
    layer.zero_grad()
    torch.manual_seed(1)
    z = layer.gate_values()
    y_ref = dense_masked_dora_f64(x, layer.weight, layer.bias, layer.lora_A, layer.lora_B, layer.scaling,
                                  layer.magnitude, z)
    y_ref.backward(g)
    if gate == "sigmoid_ste":
        assert (layer.mask_logits.grad[1::2][:4] != 0).all()
    for name, p in layer.named_parameters():
        if name in got:
            assert_close_rel(got[name], p.grad, torch.float64, f"{gate}: grad {name}")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_rows_to_recompute_come_from_the_forwards_host_copy(dtype, backend, monkeypatch):
    """On a GPU the rows to recompute are copied to the host in the forward (no device sync in the backward):
    a straight-through layer with closed gates still gets the float64 gradients, and the backward finds the
    rows without ``nonzero`` on the device."""
    if backend != "torch":
        pytest.skip("the automatic GPU backend runs once")
    from masked_dora.nn import MaskedDoRALinear
    from masked_dora.ops.row_norm import default_eps

    torch.manual_seed(0)
    layer = MaskedDoRALinear(256, 192, rank=8, gate="sigmoid_ste").cuda().to(dtype).train()
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.05)
        layer.mask_logits.copy_(torch.randn(192, device="cuda"))
    x = torch.randn(300, 256, device="cuda", dtype=dtype)
    with use_backend(None):
        y = layer(x)
        g = torch.randn_like(y)
        calls = []
        real = torch.Tensor.nonzero
        monkeypatch.setattr(torch.Tensor, "nonzero",
                            lambda self, *a, **k: calls.append(self.device.type) or real(self, *a, **k))
        y.backward(g)
    assert "cuda" not in calls
    got = layer.mask_logits.grad.clone()
    layer.zero_grad()
    z = layer.gate_values()
    y_ref = dense_masked_dora_f64(x, layer.weight, layer.bias, layer.lora_A, layer.lora_B, layer.scaling,
                                  layer.magnitude, z, eps=default_eps(dtype))
    y_ref.backward(g.double())
    assert_close_rel(got, layer.mask_logits.grad, dtype, "mask logits grad")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_a_bias_next_to_an_outlier_token_costs_no_more_than_keeping_p(dtype):
    """A "massive activation" token (x 100) next to a bias as large as |c| max|P|: dc read off y would carry the
    bias's rounding, relative to the outlier's size. The typical |P| (rms over 64 tokens) decides instead, and
    dc stays as accurate as the backward that keeps P (within 1.5x of its error, channel by channel)."""
    torch.manual_seed(0)
    m, k, n, r = 1024, 64, 64, 8
    x = torch.randn(m, k, dtype=torch.float64)
    x[0] *= 100.0
    w, A, B = (torch.randn(*s, dtype=torch.float64) / 8 for s in ((n, k), (r, k), (n, r)))
    P = x @ w.t() + 2 * (x @ A.t()) @ B.t()
    c = torch.rand(n, dtype=torch.float64) + 0.5
    b = c * P.abs().amax(0) * torch.sign(torch.randn(n, dtype=torch.float64))
    dy = torch.randn(m, n, dtype=torch.float64)
    ref = (dy * P).sum(0)
    errors = {}
    for keep in ("output", "pre_scale"):
        scale, bias = c.float().requires_grad_(), b.float().requires_grad_()
        if keep == "pre_scale":  # saved-tensor hooks: the op keeps P, as before issue 16
            with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
                y = dora_linear(x.to(dtype), w.to(dtype), A.to(dtype), B.to(dtype), 2.0, scale, bias)
        else:
            y = dora_linear(x.to(dtype), w.to(dtype), A.to(dtype), B.to(dtype), 2.0, scale, bias)
        y.backward(dy.to(dtype))
        errors[keep] = ((scale.grad.double() - ref).abs() / ref.abs()).median().item()
    assert errors["output"] <= 1.5 * errors["pre_scale"], errors


def test_float16_outputs_in_the_subnormal_range_are_recomputed(monkeypatch):
    """c = 0.01 and |P| ~ 2e-4: c P is subnormal in float16 and y keeps a few bits: those rows come from P."""
    inp = _inputs(32, 16, 8, 2)
    inp["x"] *= 1e-3
    inp["gate"][:] = 0.01
    inp["bias"] = None
    seen = []
    real = dora_mod.pre_scale_rows
    y, leaves = _layer(inp, torch.float16)
    monkeypatch.setattr(dora_mod, "pre_scale_rows", lambda x_, w, *a: seen.append(w.shape[0]) or real(x_, w, *a))
    y_ref, ref_leaves = _dense(inp)
    g = torch.randn_like(y_ref)
    y.backward(g.half())
    y_ref.backward(g)
    assert sum(seen) == 8
    assert_close_rel(leaves[3].grad, ref_leaves[3].grad, torch.float16, "grad magnitude")


def test_inference_mode_and_no_grad_skip_the_backward_bookkeeping():
    inp = _inputs(4, 8, 6, 2)
    scale = torch.nn.Parameter(torch.rand(6))
    with torch.inference_mode():
        y = dora_linear(inp["x"], inp["weight"], inp["lora_A"], inp["lora_B"], 1.0, scale, inp["bias"])
    with torch.no_grad():
        y2 = dora_linear(inp["x"], inp["weight"], inp["lora_A"], inp["lora_B"], 1.0, scale, inp["bias"])
    assert torch.equal(y, y2) and y2.grad_fn is None


@pytest.mark.parametrize("graph_break", [False, True])
def test_torch_compile_with_the_output_changed_in_place(graph_break):
    """Under torch.compile the op keeps P (a compiled region hides the version counter): exact either way."""
    inp = _inputs(9, 16, 12, 3)
    other = torch.randn(9, 12, dtype=torch.float64)
    names = ("x", "lora_A", "lora_B", "magnitude", "gate")
    leaves = [leaf(inp[k], torch.float64) for k in names]
    w, b = inp["weight"].double(), inp["bias"].double()

    def block(x, A, B, mag, z):
        y = dora_linear(x, w, A, B, inp["scaling"], mag * z / row_norm(w, A, B, inp["scaling"]), z * b)
        if graph_break:
            torch._dynamo.graph_break()
        y += other
        return torch.tanh(y)

    torch._dynamo.reset()
    torch.compile(block, backend="aot_eager")(*leaves).sum().backward()
    ref = [leaf(inp[k], torch.float64) for k in names]
    y_ref = dense_masked_dora_f64(ref[0], inp["weight"], inp["bias"], *ref[1:3], inp["scaling"], *ref[3:])
    torch.tanh(y_ref + other).sum().backward()
    for name, a, r in zip(names, leaves, ref):
        assert_close_rel(a.grad, r.grad, torch.float64, f"compile: grad {name}")


def test_skip_rows_apply_only_where_the_scale_is_zero():
    """A skipped row whose scale is not 0 (its gate is open) but whose bias drowns it is recomputed, not zeroed:
    eager and compiled backwards agree (opcheck's AOT test found the zeroed row)."""
    inp = _inputs(16, 12, 6, 2)
    inp["bias"][2] = 50.0
    skip = torch.zeros(6, dtype=torch.bool)
    skip[[2, 4]] = True
    inp["gate"][4] = 0.0
    y, leaves = _layer(inp, torch.float64, skip_rows=skip)
    y_ref, ref_leaves = _dense(inp)
    g = torch.randn_like(y_ref)
    y.backward(g)
    y_ref.backward(g)
    assert torch.allclose(leaves[3].grad[2], ref_leaves[3].grad[2], rtol=1e-10)  # magnitude of the drowned row
    assert torch.allclose(leaves[4].grad[2], ref_leaves[4].grad[2], rtol=1e-10)
