"""Bad input never crashes the process or silently writes out of bounds (issue 13, the compact_linear family).

Out-of-range indices used to segfault the cpp and Triton backends (or, just past the end, read and write
neighbouring memory): those cases run in a subprocess, so a crash is a test failure, not a dead run.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from masked_dora.nn import CompactLinear
from masked_dora.ops import compact_linear, compact_linear_, registered, use_backend, validate_indices

from helpers import assert_close_rel

CPU = torch.device("cpu")
CPU_BACKENDS = [b for b, impl in registered("compact_linear").items()
                if impl.supports(CPU, torch.float32) and impl.priority_on(CPU) > -100]


def _runnable(backend):
    return registered("compact_linear")[backend].supports(CPU, torch.float32)


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
def test_out_of_range_indices_raise_in_every_backend(backend):
    if backend not in registered("compact_linear") or not _runnable(backend):
        pytest.skip(f"backend {backend!r} does not run CPU float32 here")
    code = f"""
import torch
from masked_dora.ops import compact_linear, compact_linear_, use_backend
x, w = torch.randn(5, 16), torch.randn(3, 4)
cases = {{
    "out_idx far": dict(in_idx=torch.tensor([0, 1, 2, 3]), out_idx=torch.tensor([0, 1, 10**9]), out_features=8),
    "out_idx just past": dict(in_idx=torch.tensor([0, 1, 2, 3]), out_idx=torch.tensor([0, 1, 8]), out_features=8),
    "in_idx past K": dict(in_idx=torch.tensor([0, 1, 2, 16]), out_idx=None, out_features=None),
    "negative": dict(in_idx=torch.tensor([-1, 1, 2, 3]), out_idx=None, out_features=None),
    "duplicate": dict(in_idx=None, out_idx=torch.tensor([1, 1, 2]), out_features=8, x=torch.randn(5, 4)),
}}
with use_backend({backend!r}):
    for name, kw in cases.items():
        xx = kw.pop("x", x)
        for fn in ("functional", "in place"):
            try:
                if fn == "functional":
                    compact_linear(xx, w, None, **kw)
                else:
                    res = torch.zeros(5, kw["out_features"] or 3)
                    compact_linear_(res, xx, w, None, in_idx=kw["in_idx"], out_idx=kw["out_idx"])
            except ValueError as exc:
                which = "out_idx" if kw["out_idx"] is not None and kw["in_idx"] is None or "out" in name else "in_idx"
                assert which in str(exc), (name, str(exc))
                print("raised", name, fn)
            else:
                raise SystemExit(f"no error for {{name}} ({{fn}})")
print("alive")
"""
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0 and out.stdout.strip().endswith("alive"), (out.returncode, out.stdout[-2000:],
                                                                          out.stderr[-3000:])
    assert out.stdout.count("raised") == 10


def test_compact_linear_load_state_dict_keeps_nothing_bad():
    layer = CompactLinear.from_linear(torch.nn.Linear(8, 6), keep_in=torch.tensor([0, 2, 5]),
                                      keep_out=torch.tensor([1, 4]))
    good = {k: v.clone() for k, v in layer.state_dict().items()}
    bad = dict(good, out_idx=torch.tensor([1, 10**9]))
    with pytest.raises(RuntimeError, match=r"out_idx: index 1000000000 is out of range \[0, 6\)"):
        layer.load_state_dict(bad)
    assert torch.equal(layer.out_idx, good["out_idx"])   # the module kept its own (valid) indices
    layer(torch.randn(2, 8))                               # and still runs
    with pytest.raises(RuntimeError, match="in_idx: expected 3 indices"):
        layer.load_state_dict(dict(good, in_idx=torch.tensor([0, 1])))
    layer.load_state_dict(good)                            # a valid state dict still loads, bit-exactly
    assert all(torch.equal(v, good[k]) for k, v in layer.state_dict().items())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_strided_index_tensors_are_read_by_value(backend):
    x, w = torch.randn(7, 20), torch.randn(6, 5)
    wide_in, wide_out = torch.tensor([1, 0, 4, 0, 9, 0, 12, 0, 19, 0]), torch.tensor([0, 9, 3, 9, 5, 9, 8, 9, 10, 9, 11, 9])
    in_idx, out_idx = wide_in[::2], wide_out[::2]              # stride 2
    assert not in_idx.is_contiguous()
    with use_backend(backend):
        got = compact_linear(x, w, None, in_idx=in_idx, out_idx=out_idx, out_features=12)
    ref = torch.zeros(7, 12, dtype=torch.float64)
    ref[:, out_idx] = x.double()[:, in_idx] @ w.double().t()
    assert_close_rel(got, ref, torch.float32, f"{backend}: strided indices")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("with_indices", [False, True])
def test_in_place_update_of_its_own_input(backend, with_indices):
    """compact_linear_(h, h, W): the residual stream updated with a function of itself (was wrong on cpp/triton)."""
    h = torch.randn(300, 256)          # several row blocks, a real GEMM
    w = torch.randn(256, 256) / 16 if not with_indices else torch.randn(100, 120) / 11
    kw = {} if not with_indices else dict(in_idx=torch.arange(0, 240, 2), out_idx=torch.arange(5, 255, 2)[:100])
    xg = h.double() if not with_indices else h.double()[:, kw["in_idx"]]
    ref = h.double().clone()
    if with_indices:
        ref[:, kw["out_idx"]] += xg @ w.double().t()
    else:
        ref += xg @ w.double().t()
    with use_backend(backend), torch.no_grad():
        compact_linear_(h, h, w, None, **kw)
    assert_close_rel(h, ref, torch.float32, f"{backend}: h += f(h)")


@pytest.mark.parametrize("bad, error", [
    ([0.5, 2.7], "dtype torch.float32"), (np.array([0.0, 2.0]), "dtype torch.float64"),
    ([True, False], "dtype torch.bool"), (["a"], "sequence of ints"),
])
def test_validate_indices_never_truncates_or_casts(bad, error):
    with pytest.raises(TypeError, match=error):
        validate_indices("keep", bad, 5)
    assert validate_indices("keep", [0, 3], 5).tolist() == [0, 3]
    assert validate_indices("keep", np.array([1, 4]), 5).tolist() == [1, 4]


# ---------------------------------------------------------------- the layer and the functional form

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(alpha=None), TypeError, "alpha: expected a finite real number, got NoneType"),
    (dict(alpha="16"), TypeError, "alpha: expected a finite real number, got str"),
    (dict(alpha=float("inf")), ValueError, "alpha: expected a finite real number"),
    (dict(alpha=0.0), ValueError, "alpha: expected a positive float"),
    (dict(mask_init=float("nan")), ValueError, "mask_init: expected a finite real number"),
    (dict(norm_eps=-1.0), ValueError, "norm_eps: expected a non-negative float"),
    (dict(norm_eps=float("nan")), ValueError, "norm_eps: expected a finite real number"),
])
def test_layer_constructor_names_the_bad_argument(kwargs, error, match):
    from masked_dora import MaskedDoRALinear

    with pytest.raises(error, match=match):
        MaskedDoRALinear(8, 4, rank=2, **kwargs)
    MaskedDoRALinear(8, 4, rank=2, alpha=np.float32(16.0), mask_init=np.float64(2.0))  # numpy scalars are numbers


def test_layer_runs_on_meta_tensors():
    from masked_dora import MaskedDoRALinear

    layer = MaskedDoRALinear(8, 4, rank=2, device="meta")
    assert layer(torch.empty(3, 5, 8, device="meta")).shape == (3, 5, 4)


def test_dora_linear_with_zero_in_features():
    from masked_dora.ops import dora_linear

    y = dora_linear(torch.randn(2, 3, 0), torch.randn(4, 0), torch.randn(2, 0), torch.randn(4, 2), 0.5,
                    torch.ones(4), torch.full((4,), 0.25))
    assert y.shape == (2, 3, 4) and torch.equal(y, torch.full((2, 3, 4), 0.25))


@pytest.mark.parametrize("name", ["magnitude", "gate_values", "norm"])
def test_functional_form_refuses_broadcastable_vectors(name):
    from masked_dora.nn import masked_dora_linear

    args = dict(magnitude=torch.ones(4), gate_values=torch.ones(4), norm=torch.ones(4))
    args[name] = torch.ones(1)  # used to broadcast silently
    with pytest.raises(ValueError, match=rf"{name}: expected shape \(4,\), got \(1,\)"):
        masked_dora_linear(torch.randn(3, 8), torch.randn(4, 8), None, torch.randn(2, 8), torch.randn(4, 2), 0.5,
                           args["magnitude"], args["gate_values"], norm=args["norm"])


# ---------------------------------------------------------------- numerics: NaN, autocast, the norm cache

ROW_NORM_CPU = [b for b, impl in registered("row_norm").items() if impl.supports(CPU, torch.float32)]


@pytest.mark.parametrize("backend", ROW_NORM_CPU)
@pytest.mark.parametrize("where", ["weight", "lora_A", "lora_B", "weight_sq"])
def test_row_norm_propagates_nan(backend, where):
    """A NaN in W0, A, B or the cached ||W0||^2 stays NaN (the Triton kernel turned it into the eps floor)."""
    from masked_dora.ops import row_norm, weight_sq_norm

    t = dict(weight=torch.randn(20, 24), lora_A=torch.randn(3, 24), lora_B=torch.randn(20, 3))
    t["weight_sq"] = weight_sq_norm(t["weight"])
    t[where] = t[where].clone()
    t[where].view(-1)[0 if where != "lora_B" else 7] = float("nan")   # row 0 of W0/||W0||^2, row 2 of B; all of A
    with use_backend(backend):
        norm = row_norm(t["weight"], t["lora_A"], t["lora_B"], 0.5, weight_sq=t["weight_sq"])
    bad_rows = {"weight": [0], "weight_sq": [0], "lora_B": [2], "lora_A": list(range(20))}[where]
    assert torch.isnan(norm[bad_rows]).all(), norm
    rest = [j for j in range(20) if j not in bad_rows]
    assert torch.isfinite(norm[rest]).all()


@pytest.mark.parametrize("backend", ROW_NORM_CPU)
def test_row_norm_under_autocast_stays_fp32(backend):
    """Inside torch.autocast(bfloat16) the op body's own matmuls ran in bf16 (reference, Triton host Gram)."""
    from masked_dora.ops import row_norm

    w, a, b = torch.randn(64, 256), torch.randn(4, 256) * 0.1, torch.randn(64, 4)
    ref = (w.double() + 0.5 * b.double() @ a.double()).norm(dim=1)
    with use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
        norm = row_norm(w, a, b, 0.5)
    assert norm.dtype == torch.float32
    assert_close_rel(norm, ref, torch.float32, f"{backend}: row norm under autocast")


def test_layer_norm_cache_after_autocast_and_after_data_edits():
    from masked_dora import MaskedDoRALinear

    layer = MaskedDoRALinear(64, 48, rank=4).train()
    with torch.no_grad():
        layer.lora_B.normal_()
    dense = lambda: (layer.weight.double() + layer.scaling * layer.lora_B.double() @ layer.lora_A.double()).norm(dim=1)  # noqa: E731
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.randn(2, 64))                       # computes and caches the norm inside autocast
    assert_close_rel(layer.weight_norm(), dense(), torch.float32, "norm cached under autocast")
    layer.lora_B.data.normal_()                          # invisible to the version counters
    layer.invalidate_norm_cache()
    assert_close_rel(layer.weight_norm(), dense(), torch.float32, "norm after invalidate_norm_cache")


@pytest.mark.parametrize("backend", ROW_NORM_CPU)
def test_row_norm_precision_when_rank_exceeds_k_or_the_adapter_cancels_a_row(backend):
    """K=1, r=65 (8e-5 relative before) and a row that W0 + sBA nearly cancels (a bf16 row fell to the eps
    floor, 1e-4 instead of its norm): the factored formula loses digits there; those rows are formed directly."""
    from masked_dora.ops import row_norm

    gen = torch.Generator().manual_seed(0)
    w, a, b = torch.randn(40, 1, generator=gen), torch.randn(65, 1, generator=gen), torch.randn(40, 65, generator=gen)
    ref = (w.double() + 0.7 * b.double() @ a.double()).norm(dim=1)
    before = [t.clone() for t in (w, a, b)]
    with use_backend(backend):
        assert_close_rel(row_norm(w, a, b, 0.7), ref, torch.float32, f"{backend}: K=1, r=65")
    assert all(torch.equal(t, u) for t, u in zip((w, a, b), before))  # the direct path writes into nothing
    w, a, b = torch.randn(30, 64, generator=gen), torch.randn(4, 64, generator=gen), torch.randn(30, 4, generator=gen)
    w[3] = -(0.5 * b[3] @ a) + 1e-3 * torch.randn(64, generator=gen)      # the adapter cancels row 3
    dtypes = [torch.float32] + ([torch.bfloat16] if backend != "triton" else [])  # interpreter bf16 dot: #11584
    for dtype in dtypes:
        wd, ad, bd = w.to(dtype), a.to(dtype), b.to(dtype)
        ref = (wd.double() + 0.5 * bd.double() @ ad.double()).norm(dim=1)
        with use_backend(backend):
            norm = row_norm(wd, ad, bd, 0.5)
        assert abs(norm[3].item() / ref[3].item() - 1) < 1e-5, (dtype, norm[3].item(), ref[3].item())
        assert_close_rel(norm, ref, torch.float32, f"{backend} {dtype}: a cancelled row")
