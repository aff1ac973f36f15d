"""The eager fast path: the ops' bodies run directly in plain eager mode, the custom ops everywhere else.

Both paths run the same functions through the same dispatcher, so they must agree bit for bit; the
custom op must still be what torch.compile, FakeTensor, meta tensors and dispatch/function modes see.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.profiler import ProfilerActivity, profile
from torch._subclasses.fake_tensor import FakeTensorMode

from masked_dora.ops import _eager, dora_linear, row_norm, use_backend

from helpers import leaf


def _inputs(seed=0, m=6, k=12, n=10, r=3, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = leaf(torch.randn(m, k, generator=gen, dtype=dtype))
    w = torch.randn(n, k, generator=gen, dtype=dtype)
    a = leaf(torch.randn(r, k, generator=gen, dtype=dtype) * 0.3)
    b = leaf(torch.randn(n, r, generator=gen, dtype=dtype) * 0.3)
    scale = leaf(torch.rand(n, generator=gen) + 0.5)
    bias = leaf(torch.randn(n, generator=gen))
    return x, w, a, b, scale, bias


def _run(force_custom_op: bool, monkeypatch, backend):
    x, w, a, b, scale, bias = _inputs()
    if force_custom_op:
        for module in ("masked_dora.ops.dora_linear", "masked_dora.ops.row_norm"):
            monkeypatch.setattr(sys.modules[module], "plain_eager", lambda *t: False)
    with use_backend(backend):
        norm = row_norm(w, a, b, 0.7)
        y = dora_linear(x, w, a, b, 0.7, scale / norm, bias)
        y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape))
    monkeypatch.undo()
    return norm, y, x.grad, a.grad, b.grad, scale.grad, bias.grad


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_eager_path_and_custom_op_agree_bit_for_bit(monkeypatch, backend):
    from masked_dora.ops import registered
    if backend not in registered("dora_linear"):
        pytest.skip("C++ extension not built")
    eager = _run(False, monkeypatch, backend)
    custom = _run(True, monkeypatch, backend)
    for name, e, c in zip(("norm", "y", "dx", "dA", "dB", "dscale", "dbias"), eager, custom):
        assert torch.equal(e, c), name


def _op_names(fn):
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events()}


def test_plain_eager_skips_the_custom_ops_and_compiled_paths_keep_them():
    x, w, a, b, scale, bias = _inputs()

    def step():
        norm = row_norm(w, a, b, 0.7)
        dora_linear(x, w, a, b, 0.7, scale / norm, bias).sum().backward()

    eager = _op_names(step)
    assert not {"masked_dora::dora_linear", "masked_dora::row_norm", "masked_dora::dora_linear_backward"} & eager

    class Passthrough(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Passthrough():  # a function mode (as torch.device(...) as a context is) -> the custom ops
        moded = _op_names(step)
    # (the backward runs in the autograd engine, outside the mode: plain eager again there)
    assert {"masked_dora::dora_linear", "masked_dora::row_norm"} <= moded


def test_plain_eager_is_false_wherever_the_custom_op_is_needed():
    t = torch.ones(2)
    assert _eager.plain_eager(t, None, torch.nn.Parameter(t))
    assert not _eager.plain_eager(torch.ones(2, device="meta"))
    with FakeTensorMode():
        assert not _eager.plain_eager(t)
    with torch.device("cpu"):
        assert not _eager.plain_eager(t)
    assert not torch.func.vmap(lambda v: torch.tensor(float(_eager.plain_eager(v))))(torch.ones(3, 2)).any()


def test_fake_and_meta_tensors_go_through_the_registered_fake_kernels():
    with FakeTensorMode():
        x, w, a, b, scale, bias = (torch.empty(s) for s in ((6, 12), (10, 12), (3, 12), (10, 3), (10,), (10,)))
        assert dora_linear(x, w, a, b, 0.5, scale, bias).shape == (6, 10)
        assert row_norm(w, a, b, 0.5).shape == (10,)
    x, w, a, b, scale = (torch.empty(s, device="meta") for s in ((6, 12), (10, 12), (3, 12), (10, 3), (10,)))
    assert dora_linear(x, w, a, b, 0.5, scale).device.type == "meta"


def test_torch_compile_still_sees_the_custom_op():
    x, w, a, b, scale, bias = _inputs()
    compiled = torch.compile(lambda *t: dora_linear(*t[:4], 0.7, *t[4:]), backend="eager", fullgraph=True)
    expected = dora_linear(x, w, a, b, 0.7, scale, bias)
    assert torch.equal(compiled(x, w, a, b, scale, bias), expected)


def test_compact_linear_eager_and_custom_op_agree_and_the_inplace_form_bumps_the_version(monkeypatch):
    from masked_dora.ops import compact_linear, compact_linear_, validate_indices

    gen = torch.Generator().manual_seed(1)
    in_idx = validate_indices("in_idx", [0, 2, 3, 7], 9)
    out_idx = validate_indices("out_idx", [1, 4, 5], 6)

    def run():
        x = leaf(torch.randn(5, 9, generator=gen))
        w = leaf(torch.randn(3, 4, generator=gen))
        bias = leaf(torch.randn(3, generator=gen))
        res = leaf(torch.randn(5, 6, generator=gen))
        y = compact_linear(x, w, bias, in_idx, out_idx, 6, res)
        y.backward(torch.linspace(-1, 1, 30).reshape(5, 6))
        return y, x.grad, w.grad, bias.grad, res.grad

    gen.manual_seed(1)
    eager = run()
    monkeypatch.setattr(sys.modules["masked_dora.ops.compact_linear"], "plain_eager", lambda *t: False)
    gen.manual_seed(1)
    custom = run()
    for name, e, c in zip(("y", "dx", "dw", "dbias", "dres"), eager, custom):
        assert torch.equal(e, c), name
    monkeypatch.undo()
    residual = torch.zeros(5, 6)
    version = residual._version
    compact_linear_(residual, torch.randn(5, 9), torch.randn(3, 4), None, in_idx, out_idx)
    assert residual._version > version and residual[:, [1, 4, 5]].abs().sum() > 0
    assert residual[:, [0, 2, 3]].abs().sum() == 0
