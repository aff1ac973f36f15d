"""gated_dora_linear: the per-channel algebra inside the op (issue 16: a layer keeps z and n, not c and z b too).

Its values and gradients are the composition's (dora_linear on c = m z / n, zb = z b through autograd) to the
bit, in every dtype and backend; against the float64 definition by relative error; opcheck; what a layer keeps.
"""

import os

import pytest
import torch
from torch import nn
from torch.library import opcheck

from masked_dora.masks.gates import HardConcreteGate, _logistic_noise
from masked_dora.nn import MaskedDoRALinear
from masked_dora.ops import dora_linear, gated_dora_linear, row_norm

from helpers import assert_close_rel, dense_masked_dora_f64, leaf

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def backend(torch_and_cpp_backend):  # every test: torch reference and C++ backends (conftest.py)
    return torch_and_cpp_backend


def _inputs(m=24, k=20, n=16, r=4, seed=0, with_bias=True):
    g = torch.Generator().manual_seed(seed)
    gate = torch.rand(n, generator=g)
    gate[::4] = 0.0  # closed gates: their gradient to z is dc m / n, read off recomputed rows
    magnitude = torch.rand(n, generator=g) + 0.5
    magnitude[1] = 0.0  # a zero magnitude with the gate open
    return dict(x=torch.randn(m, k, generator=g), weight=torch.randn(n, k, generator=g) / k ** 0.5,
                bias=torch.randn(n, generator=g) * 0.5 if with_bias else None,
                lora_A=torch.randn(r, k, generator=g) / k ** 0.5, lora_B=torch.randn(n, r, generator=g) * 0.1,
                magnitude=magnitude, gate=gate, scaling=1.3)


def _leaves(inp, dtype, vec):
    x, A, B = leaf(inp["x"], dtype), leaf(inp["lora_A"], dtype), leaf(inp["lora_B"], dtype)
    mag, z = leaf(inp["magnitude"], vec), leaf(inp["gate"], vec)
    bias = None if inp["bias"] is None else leaf(inp["bias"], vec)
    w = inp["weight"].to(dtype)
    norm = row_norm(w, A.detach(), B.detach(), inp["scaling"]).to(vec).requires_grad_()
    return x, w, A, B, mag, z, norm, bias


def _grads(out, leaves, seed=3):
    dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    (out * dy).sum().backward()
    return [None if t is None else t.grad for t in leaves]


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_values_and_gradients_are_the_compositions_to_the_bit(dtype, with_bias):
    inp = _inputs(with_bias=with_bias)
    vec = torch.float64 if dtype == torch.float64 else torch.float32
    x, w, A, B, mag, z, norm, bias = _leaves(inp, dtype, vec)
    y = gated_dora_linear(x, w, A, B, inp["scaling"], mag, z, norm, bias)
    got = _grads(y, (x, A, B, mag, z, norm, bias))

    x2, w2, A2, B2, mag2, z2, norm2, bias2 = _leaves(inp, dtype, vec)
    scale = mag2.to(vec) * z2 / norm2
    y2 = dora_linear(x2, w2, A2, B2, inp["scaling"], scale, None if bias2 is None else z2 * bias2)
    want = _grads(y2, (x2, A2, B2, mag2, z2, norm2, bias2))
    assert torch.equal(y, y2)
    for name, a, b in zip(("x", "lora_A", "lora_B", "magnitude", "gate", "norm", "bias"), got, want):
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and torch.equal(a, b), name


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_the_float64_definition(dtype):
    inp = _inputs(m=40, k=32, n=24, r=4, seed=1)
    vec = torch.float64 if dtype == torch.float64 else torch.float32
    x, w, A, B, mag, z, norm, bias = _leaves(inp, dtype, vec)
    y = gated_dora_linear(x, w, A, B, inp["scaling"], mag, z, norm.detach(), bias)
    got = _grads(y, (x, A, B, mag, z))
    leaves = [leaf(inp[k], torch.float64) for k in ("x", "lora_A", "lora_B", "magnitude", "gate")]
    ref = dense_masked_dora_f64(leaves[0], inp["weight"], inp["bias"], *leaves[1:3], inp["scaling"], *leaves[3:])
    want = _grads(ref, leaves)
    assert_close_rel(y, ref, dtype, "y")
    for name, a, b in zip(("x", "lora_A", "lora_B", "magnitude", "gate"), got, want):
        assert_close_rel(a, b, dtype, name)


def test_opcheck():
    inp = _inputs(m=7, k=16, n=12, r=3)
    x, w, A, B, mag, z, norm, bias = _leaves(inp, torch.float32, torch.float32)
    op = torch.ops.masked_dora.gated_dora_linear.default
    opcheck(op, (x, w, A, B, 0.5, mag, z, norm.detach(), bias))
    opcheck(op, (x, w, A, B, 0.5, mag, z, norm, None))
    opcheck(op, (x, w, A, B, 0.5, mag, z.detach(), norm.detach(), bias, torch.arange(12) % 3 == 0))


def test_bad_input_names_the_argument():
    inp = _inputs(m=5, k=8, n=6, r=2)
    x, w, A, B, mag, z, norm, bias = _leaves(inp, torch.float32, torch.float32)
    with pytest.raises(ValueError, match="magnitude"):
        gated_dora_linear(x, w, A, B, 1.0, mag[:5], z, norm, bias)
    with pytest.raises(ValueError, match="gate"):
        gated_dora_linear(x, w, A, B, 1.0, mag, z[:1], norm, bias)
    with pytest.raises(TypeError, match="norm"):
        gated_dora_linear(x, w, A, B, 1.0, mag, z, norm.detach().bfloat16(), bias)
    with pytest.raises(TypeError, match="gate"):
        gated_dora_linear(x, w, A, B, 1.0, mag, torch.ones(6, dtype=torch.long), norm, bias)
    with pytest.raises(TypeError, match="skip_rows"):
        gated_dora_linear(x, w, A, B, 1.0, mag, z, norm, bias, skip_rows=torch.zeros(6))


def test_hard_concrete_sample_is_autograds_composition_to_the_bit():
    """The gate's fused sample keeps one vector; values and logit gradients equal autograd's composition."""
    gate = HardConcreteGate().train()
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        logits = leaf(torch.randn(4000, generator=torch.Generator().manual_seed(0)) * 3, dtype)
        torch.manual_seed(1)
        z = gate(logits)
        dz = torch.randn(z.shape, generator=torch.Generator().manual_seed(2), dtype=z.dtype)
        (z * dz).sum().backward()
        fused, logits.grad = logits.grad, None
        torch.manual_seed(1)
        full = logits.to(torch.promote_types(dtype, torch.float32))
        s = torch.sigmoid((_logistic_noise(full) + full) / gate.temperature)
        z2 = (s * (gate.zeta - gate.gamma) + gate.gamma).clamp(0.0, 1.0)
        (z2 * dz).sum().backward()
        assert torch.equal(z, z2) and torch.equal(fused, logits.grad), dtype
        assert 0 < int((z == 0).sum()) and 0 < int((z == 1).sum())  # both clamps exercised


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed_mask", "hard_concrete"])
def test_a_layer_keeps_x_at_and_three_channel_vectors(fixed, monkeypatch):
    """The issue's measure on a layer (parameters, input and output not counted): x A^T, z, n, the gate's one
    vector and two bool masks: under LoRA's x A^T plus M r elements at the issue's shape."""
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    from activation_memory import graph_saved_bytes

    m, k, n, r = 64, 48, 40, 4
    layer = MaskedDoRALinear.from_linear(nn.Linear(k, n), rank=r, alpha=2 * r).train()
    keep = torch.arange(n) % 4 != 0
    if fixed:
        layer.set_mask(keep)
    else:
        with torch.no_grad():
            layer.mask_logits.copy_(torch.where(keep, 3.0, -3.0))
    x = torch.randn(m, k, requires_grad=True)
    y = layer(x)
    saved = graph_saved_bytes([y], exclude=[x, y, *layer.parameters(), *layer.buffers()])
    assert saved == m * r * 4 + 3 * n * 4 + 2 * n, saved
    y.sum().backward()
    assert layer.magnitude.grad is not None and layer.lora_B.grad is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_odd_shapes_3d_and_strided_inputs_are_the_compositions_to_the_bit(dtype):
    """3-D x, a strided x and magnitude, a stride-0 gate, r = 1, K >> N (the correctness policy's shapes)."""
    g = torch.Generator().manual_seed(5)
    k, n, r = 300, 10, 1
    w = (torch.randn(n, k, generator=g) / k ** 0.5).to(dtype)
    base = {"x": torch.randn(2, 3, 2 * k, generator=g)[..., ::2], "A": torch.randn(r, k, generator=g) / k ** 0.5,
            "B": torch.randn(n, r, generator=g), "m": torch.rand(2 * n, generator=g)[::2] + 0.5,
            "z": torch.full((1,), 0.7).expand(n), "b": torch.randn(n, generator=g)}
    norm = row_norm(w, base["A"].to(dtype), base["B"].to(dtype), 0.5)

    def run(gated):
        x, A, B = (leaf(base[key], dtype) for key in ("x", "A", "B"))
        x = x.detach().as_strided(x.shape, x.stride()).requires_grad_()
        m, z, b = leaf(base["m"]), base["z"].clone().requires_grad_(), leaf(base["b"])
        if gated:
            y = gated_dora_linear(x, w, A, B, 0.5, m, z, norm, b)
        else:
            y = dora_linear(x, w, A, B, 0.5, m * z / norm, z * b)
        return y, _grads(y, (x, A, B, m, z, b))

    (y1, g1), (y2, g2) = run(True), run(False)
    assert y1.shape == (2, 3, n) and torch.equal(y1, y2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


def test_a_half_precision_norm_takes_the_same_path_as_a_float32_one():
    """The functional form upcasts a bf16 norm (the per-channel terms never compute in half precision), with and
    without dropout: the no-dropout path used to refuse it while the dropout paths took it."""
    from masked_dora.nn import masked_dora_linear

    inp = _inputs(m=6, k=12, n=8, r=2)
    x, w, A, B, mag, z, norm, bias = _leaves(inp, torch.bfloat16, torch.float32)
    norm, bias = norm.detach(), leaf(inp["bias"], torch.bfloat16)  # the bias in the weight's dtype, as a layer's
    for dropped in (None, x.detach() * 0.5):
        args = (x, w, bias, A, B, 1.0, mag, z)
        want = masked_dora_linear(*args, norm=norm.bfloat16().float(), dropped=dropped)
        got = masked_dora_linear(*args, norm=norm.bfloat16(), dropped=dropped)
        assert torch.equal(got, want)


def test_bad_norm_is_named_norm():
    inp = _inputs(m=5, k=8, n=6, r=2)
    x, w, A, B, mag, z, norm, bias = _leaves(inp, torch.float32, torch.float32)
    with pytest.raises(ValueError, match="^norm"):
        gated_dora_linear(x, w, A, B, 1.0, mag, z, norm[:5], bias)


def test_double_backward_is_refused_not_silently_wrong():
    layer = MaskedDoRALinear.from_linear(nn.Linear(8, 6), rank=2).train()
    x = torch.randn(4, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(layer(x).sum(), x, create_graph=True)
    layer(x).sum().backward()  # a plain backward still runs
    assert x.grad is not None


def test_hard_concrete_sample_keeps_double_backward_and_vmap():
    """What autograd's composition supported: a gradient penalty (double backward) and torch.func.vmap, equal to
    the composition; forward-mode AD raises (a custom jvp would stop torch.compile tracing the gate)."""
    import torch.autograd.forward_ad as fwAD

    from masked_dora.masks.gates import _StretchedSigmoid

    gate = HardConcreteGate()
    t0 = torch.randn(600, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    weights = torch.linspace(-1, 1, 600, dtype=torch.float64)

    def composition(t):
        return (torch.sigmoid(t) * (gate.zeta - gate.gamma) + gate.gamma).clamp(0.0, 1.0)

    def fused(t):
        return _StretchedSigmoid.apply(t, gate.gamma, gate.zeta)

    def penalty_grad(f):
        t = t0.clone().requires_grad_()
        (g,) = torch.autograd.grad((f(t) * weights).sum(), t, create_graph=True)
        return torch.autograd.grad((g ** 2).sum(), t)[0]

    assert torch.equal(penalty_grad(fused), penalty_grad(composition))
    with pytest.raises(RuntimeError, match="jvp"), fwAD.dual_level():
        fused(fwAD.make_dual(t0, torch.ones_like(t0)))
    assert torch.equal(torch.func.vmap(fused)(t0.reshape(6, 100)), composition(t0).reshape(6, 100))
