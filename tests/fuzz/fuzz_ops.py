"""Property-based checks of every op on every CPU backend (hypothesis): random shapes (1, odd, r > K,
r > N, empty batches), strides (transposed, stepped with NaN-poisoned gaps, stride-0 rows), dtypes, special
rows (NaN, inf, zero, cancelled) and bad inputs (indices, constructor arguments).

Run in a child process by tests/test_fuzz.py (a crash fails that test instead of killing the run), with
the bounded ``ci`` profile; ``make fuzz`` runs the ``long`` profile with fresh seeds until its time is up.
Files here are not collected by a plain ``pytest tests`` (their names do not start with ``test_``).
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from masked_dora.ops import (compact_linear, compact_linear_, dora_linear, registered, row_norm, use_backend,
                             validate_indices)
from masked_dora.ops.row_norm import default_eps

settings.register_profile("ci", max_examples=12, deadline=None, derandomize=False,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=400, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CPU = torch.device("cpu")
TOL = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 2e-2}


def backends(op, dtype):
    out = []
    for name, impl in registered(op).items():
        if not impl.supports(CPU, dtype):
            continue
        if name == "triton" and dtype == torch.bfloat16:
            continue  # the interpreter's bf16 tl.dot is wrong (triton #11584)
        out.append(name)
    return out


def close(out: torch.Tensor, ref: torch.Tensor, magnitude: torch.Tensor, dtype) -> bool:
    """``||out - ref|| <= tol * ||magnitude||``, with ``magnitude`` the same computation on |inputs|.

    The floating-point bound of a sum of products is relative to the sum of |products|, not to the result:
    random tiny cases cancel (one bf16 dA element came out 6% off a result 12x smaller than its terms).
    Against the magnitude, the correctness policy's tolerances hold, except that a handful of bf16
    roundings of inputs and half-precision intermediates (dP, dP B; 2^-8 each) can add to just over 1e-2
    on a single element: half precision gets 2e-2 here.
    """
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return False
    return (out - ref).norm().item() <= TOL[dtype] * magnitude.detach().double().norm().item()


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values in another memory layout: contiguous, transposed storage, every other column, or
    (``broadcast``: the caller made every row equal) one row expanded with row stride 0."""
    if kind == "transposed" and t.dim() == 2:
        return t.t().contiguous().t()
    if kind == "broadcast" and t.dim() == 2 and t.shape[0] > 0:
        return t[:1].expand_as(t)
    if kind == "stepped":
        wide = torch.stack([t, torch.full_like(t, float("nan"))], dim=-1)  # poison between the elements
        return wide.flatten(-2)[..., ::2]
    return t


dtypes = st.sampled_from([torch.float32, torch.float16, torch.bfloat16])
layouts = st.sampled_from(["contiguous", "transposed", "stepped", "broadcast"])


@settings(max_examples=settings().max_examples)
@given(m=st.integers(0, 33), k=st.integers(1, 40), n=st.integers(1, 40), r=st.integers(1, 45),
       dtype=dtypes, x_layout=layouts, zero_rows=st.integers(0, 3), bias=st.booleans(), data=st.data())
def test_dora_linear_matches_float64(m, k, n, r, dtype, x_layout, zero_rows, bias, data):
    names = backends("dora_linear", dtype)
    backend = data.draw(st.sampled_from(names))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    w, a, b = rnd(n, k) / k ** 0.5, rnd(r, k) / k ** 0.5, rnd(n, r) * 0.3
    zero_rows = min(zero_rows, n)
    w[:zero_rows], b[:zero_rows] = 0.0, 0.0
    x, dy = rnd(m, k), rnd(m, n)
    if x_layout == "broadcast":  # stride-0 rows: every row the same values
        x = x[:1].expand_as(x).clone()
    norm = (w + 0.5 * b @ a).norm(dim=1).clamp_min(default_eps(dtype))
    mag = (w + 0.5 * b @ a).norm(dim=1)  # m = ||W0_j + sBA_j|| as initialised: zero rows get m = 0
    scale = (mag * (torch.rand(n, generator=gen, dtype=torch.float64) + 0.5) / norm)
    zb = rnd(n) if bias else None

    # the reference sees the very values the kernel sees: inputs rounded to dtype (vectors to fp32) first
    x, w, a, b, dy = (t.to(dtype).double() for t in (x, w, a, b, dy))
    scale, zb = scale.float().double(), None if zb is None else zb.float().double()

    def run(be, cast, vec, f=lambda t: t):
        leaf = lambda t, d: f(t).detach().to(d, copy=True).requires_grad_(True)  # noqa: E731
        xx = layout(f(x).to(cast, copy=True), x_layout).requires_grad_(True)
        aa, bb, sc = leaf(a, cast), leaf(b, cast), leaf(scale, vec)
        bi = None if zb is None else leaf(zb, vec)
        with use_backend(be):
            y = dora_linear(xx, f(w).to(cast), aa, bb, 0.5, sc, bi)
            y.backward(f(dy).to(cast))
        return [y, xx.grad, aa.grad, bb.grad, sc.grad] + ([] if bi is None else [bi.grad])

    ours = run(backend, dtype, torch.float32)
    ref = run("torch", torch.float64, torch.float64)
    magnitude = run("torch", torch.float64, torch.float64, torch.abs)
    for name, o, q, mag in zip(("y", "dx", "dA", "dB", "dscale", "dbias"), ours, ref, magnitude):
        assert close(o, q, mag, dtype), (backend, name, (o.double() - q).norm().item(), mag.norm().item())


@given(n=st.integers(1, 40), k=st.integers(1, 40), r=st.integers(1, 70), dtype=dtypes,
       cached=st.booleans(), special=st.sampled_from(["none", "nan", "inf", "zero_row", "cancel"]), data=st.data())
def test_row_norm_matches_direct_float64(n, k, r, dtype, cached, special, data):
    names = backends("row_norm", dtype)
    backend = data.draw(st.sampled_from(names))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    w = torch.randn(n, k, generator=gen, dtype=torch.float64)
    a, b = torch.randn(r, k, generator=gen, dtype=torch.float64), torch.randn(n, r, generator=gen, dtype=torch.float64)
    if special == "zero_row":
        w[0], b[0] = 0.0, 0.0
    elif special == "cancel":
        w[0] = -(0.5 * b[0] @ a) + 1e-3 * torch.randn(k, generator=gen, dtype=torch.float64)
    elif special in ("nan", "inf"):
        w[0, 0] = float(special)
    wd, ad, bd = w.to(dtype), a.to(dtype), b.to(dtype)
    ws = None
    if cached:
        ws = torch.linalg.vector_norm(wd, dim=1, dtype=torch.float32).square()
    eps = default_eps(dtype)
    ref = (wd.double() + 0.5 * bd.double() @ ad.double()).norm(dim=1).clamp_min(eps)
    with use_backend(backend):
        out = row_norm(wd, ad, bd, 0.5, weight_sq=ws)
    if special in ("nan", "inf"):
        assert not torch.isfinite(out[0]), (backend, out[0])  # NaN stays NaN, inf stays non-finite
        out, ref = out[1:], ref[1:]
    # the magnitude of a norm of a sum: the norm of the sum of |terms| (a cancelled row is formed directly
    # by the op, but in fp32: its inputs' own rounding is relative to |W0_j| + s|B_j||A|, not to n_j)
    magnitude = (wd.double().abs() + 0.5 * bd.double().abs() @ ad.double().abs()).norm(dim=1).clamp_min(eps)
    if special in ("nan", "inf"):
        magnitude = magnitude[1:]
    if out.numel():
        assert close(out, ref, magnitude, dtype), (backend, (out.double() - ref).norm().item(), magnitude.norm().item())


@given(m=st.integers(0, 20), k_full=st.integers(1, 40), n_full=st.integers(1, 40), dtype=dtypes,
       gather=st.booleans(), scatter=st.booleans(), residual=st.booleans(), in_place=st.booleans(),
       x_layout=layouts, data=st.data())
def test_compact_linear_matches_float64(m, k_full, n_full, dtype, gather, scatter, residual, in_place, x_layout,
                                        data):
    names = backends("compact_linear", dtype)
    backend = data.draw(st.sampled_from(names))
    k_kept = data.draw(st.integers(1, k_full)) if gather else k_full
    n_kept = data.draw(st.integers(1, n_full)) if scatter else n_full
    in_idx = torch.tensor(sorted(data.draw(st.sets(st.integers(0, k_full - 1), min_size=k_kept,
                                                    max_size=k_kept)))) if gather else None
    out_idx = torch.tensor(sorted(data.draw(st.sets(st.integers(0, n_full - 1), min_size=n_kept,
                                                     max_size=n_kept)))) if scatter else None
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(m, k_full, generator=gen, dtype=torch.float64)
    if x_layout == "broadcast":  # stride-0 rows: every row the same values
        x = x[:1].expand_as(x).clone()
    w = torch.randn(n_kept, k_kept, generator=gen, dtype=torch.float64) / k_kept ** 0.5
    bias = torch.randn(n_kept, generator=gen, dtype=torch.float64)
    res = torch.randn(m, n_full, generator=gen, dtype=torch.float64) if (residual or in_place) else None
    x, w, bias = (t.to(dtype).double() for t in (x, w, bias))  # the reference sees the rounded inputs
    res = None if res is None else res.to(dtype).double()
    def reference(f):
        out = f(res).clone() if res is not None else torch.zeros(m, n_full, dtype=torch.float64)
        y = (f(x) if in_idx is None else f(x)[:, in_idx]) @ f(w).t() + f(bias)
        if out_idx is None:
            out += y
        else:
            out[:, out_idx] += y
        return out

    ref, magnitude = reference(lambda t: t), reference(torch.abs)
    xc = layout(x.to(dtype), x_layout)
    with use_backend(backend), torch.no_grad():
        if in_place:
            out = res.to(dtype, copy=True)
            compact_linear_(out, xc, w.to(dtype), bias.to(dtype), in_idx=in_idx, out_idx=out_idx)
        else:
            out = compact_linear(xc, w.to(dtype), bias.to(dtype), in_idx=in_idx, out_idx=out_idx,
                                 out_features=n_full, residual=None if res is None else res.to(dtype))
    assert close(out, ref, magnitude, dtype), (backend, (out.double() - ref).norm().item(), magnitude.norm().item())


@given(size=st.integers(1, 30), idx=st.lists(st.integers(-5, 40), min_size=1, max_size=8), data=st.data())
def test_compact_linear_bad_indices_raise_never_crash(size, idx, data):
    dtype = torch.float32
    backend = data.draw(st.sampled_from(backends("compact_linear", dtype)))
    t = torch.tensor(idx)
    valid = all(0 <= i < size for i in idx) and all(i < j for i, j in zip(idx, idx[1:]))
    x, w = torch.randn(3, size), torch.randn(2, len(idx))
    with use_backend(backend):
        if valid:
            compact_linear(x, w, None, in_idx=t)
            validate_indices("idx", t, size)
        else:
            with pytest.raises(ValueError, match="in_idx"):
                compact_linear(x, w, None, in_idx=t)
            with pytest.raises(ValueError, match="idx"):
                validate_indices("idx", t, size)


@given(value=st.one_of(st.none(), st.text(max_size=3), st.floats(allow_nan=True, allow_infinity=True),
                       st.integers(-3, 3), st.booleans(), st.lists(st.integers(0, 3), max_size=3)),
       arg=st.sampled_from(["alpha", "mask_init", "norm_eps", "rank"]))
def test_layer_constructor_raises_clear_errors(value, arg):
    from masked_dora import MaskedDoRALinear

    try:
        MaskedDoRALinear(6, 5, rank=2, **{arg: value})
    except (TypeError, ValueError) as exc:
        assert arg in str(exc), (arg, value, str(exc))
