"""GPU comparison of compact_linear against its baselines, as rows for the GPU report.

``compact_linear_section()`` is called by ``bench/gpu_report.py``; it returns a
list of flat dict rows (one per layer x M x keep x index pattern x impl), see
its docstring. Protocol (DESIGN.md, serving notes): bf16, Llama-7B shapes,
M in {1, 16, 128, 1024, 8192}, keep in {0.5, 0.75, 0.9}, index patterns
"random" (random sorted) and "runs8" (random sorted groups of 8 channels);
baselines: dense cuBLAS on the full weight, eager index_select -> linear ->
scatter, ``torch.compile`` of that eager code, and cuBLAS on pre-compacted
input (the ideal floor). Timed with ``triton.testing.do_bench`` (median, L2
flushed) and ``do_bench_cudagraph`` for M <= 16. Every compact_linear result
is checked against the eager result (relative error recorded in the row).

Layers (Llama-7B: hidden 4096, intermediate 11008):

* ``down_gather``: y = x[:, in_idx] @ W^T, x (M, 11008), W (4096, keep*11008);
* ``o_scatter_residual``: residual[:, out_idx] += x @ W^T, x (M, 4096),
  W (keep*4096, 4096) -- an o_proj writing a hidden-dim-pruned residual stream.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from masked_dora.ops import _registry, compact_linear, compact_linear_, registered, select, use_backend

LLAMA7B = {"hidden": 4096, "intermediate": 11008}
DEFAULT_TOKENS = (1, 16, 128, 1024, 8192)
DEFAULT_KEEPS = (0.5, 0.75, 0.9)
DEFAULT_PATTERNS = ("random", "runs8")
IMPLS = ("compact_linear", "compact_linear_", "dense", "ideal", "eager", "eager_compiled")


def kept_indices(size: int, keep: float, pattern: str, gen: torch.Generator) -> torch.Tensor:
    """Sorted int64 indices keeping ``keep`` of ``size``: "random" or "runs8" (whole groups of 8)."""
    if pattern == "random":
        return torch.sort(torch.randperm(size, generator=gen)[:max(1, int(round(keep * size)))]).values
    if pattern == "runs8":
        groups = size // 8
        g = torch.sort(torch.randperm(groups, generator=gen)[:max(1, int(round(keep * groups)))]).values
        return (g[:, None] * 8 + torch.arange(8)).flatten()
    raise ValueError(f"pattern: expected 'random' or 'runs8', got {pattern!r}")


def _eager_gather(x, w, idx):
    return F.linear(x.index_select(1, idx), w)


def _eager_scatter(x, w, idx, res):
    return res.index_add(1, idx, F.linear(x, w))


def _timer(device: str, m: int) -> Callable[[Callable], Tuple[float, str]]:
    """``(ms per call, how)``: do_bench (median, L2 flushed) on CUDA, do_bench_cudagraph for M <= 16
    (launch overhead out, as in a graph-captured decode step); a best-of-5 wall clock on the CPU (smoke
    runs only). ``how`` goes into the row: a call that cannot be captured (one that syncs) falls back to
    do_bench, and its time then includes the launch overhead its baselines' do not."""
    if device == "cuda":
        import triton.testing as tt

        def run(fn):
            if m <= 16:
                try:
                    return float(tt.do_bench_cudagraph(fn, rep=50)), "cudagraph"
                except Exception:  # graph capture can fail (e.g. a host sync); fall back
                    pass
            return float(tt.do_bench(fn, warmup=25, rep=100, return_mode="median")), "do_bench"
        return run

    def run_cpu(fn):
        fn()
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            fn()
            best = min(best, (time.perf_counter() - t) * 1e3)
        return best, "wall_clock"
    return run_cpu


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _forced(backend: str, fn: Callable) -> Callable:
    def run():
        with use_backend(backend):
            return fn()
    return run


def _gpu_backends(device: str, dtype: torch.dtype) -> List[str]:
    """The kernel backends to time one by one (besides the automatic choice): GPU only."""
    if device != "cuda":
        return []
    impls = registered("compact_linear")
    dev = torch.device(device)  # can run here: dtype, and kernels built for the GPU's compute capability
    return [b for b in ("triton", "cuda") if b in impls and _registry.unavailable(impls[b], dev, dtype) is None]


def compact_linear_section(
    device: str = "cuda", dtype: torch.dtype = torch.bfloat16,
    tokens: Sequence[int] = DEFAULT_TOKENS, keeps: Sequence[float] = DEFAULT_KEEPS,
    patterns: Sequence[str] = DEFAULT_PATTERNS, layers: Sequence[str] = ("down_gather", "o_scatter_residual"),
    shape: Optional[Dict[str, int]] = None, with_compile: bool = True, seed: int = 0,
) -> List[dict]:
    """Time compact_linear and its baselines; one row per (layer, M, keep, pattern, impl).

    Row keys: ``section`` ("compact_linear"), ``layer``, ``M``, ``N`` (kept
    output rows), ``K`` (kept inputs), ``out_features``, ``in_features``,
    ``keep``, ``pattern``, ``impl`` (one of ``IMPLS``, plus ``compact_linear[triton]`` and
    ``compact_linear[cuda]`` on a GPU: each kernel backend forced; ``compact_linear_``, the
    in-place residual update, only for ``o_scatter_residual``), ``dtype``, ``ms``,
    ``tflops`` (2*M*N*K useful FLOPs / time), ``gbps`` (bytes the op must move
    / time), ``ideal_over_t`` (t_ideal / t: DESIGN target >= 1/1.10 for
    compact_linear), ``speedup_vs_eager`` (t_eager / t: target >= 1.3),
    ``speedup_vs_dense``, ``rel_err`` (compact_linear vs eager, compact_linear
    rows only; else None), ``backend`` (the backend compact_linear chose), ``timer``
    (``cudagraph`` / ``do_bench`` / ``wall_clock``, see :func:`_timer`).
    ``shape`` overrides the Llama-7B ``{"hidden", "intermediate"}`` sizes
    (small shapes make a CPU smoke run possible: ``device="cpu"``).
    """

    dims = dict(LLAMA7B, **(shape or {}))
    gen = torch.Generator().manual_seed(seed)
    kw = dict(device=device, dtype=dtype)
    compiled = {}
    if with_compile:
        compiled = {"down_gather": torch.compile(_eager_gather, dynamic=True),
                    "o_scatter_residual": torch.compile(_eager_scatter, dynamic=True)}
    backend = select("compact_linear", torch.device(device), dtype).name
    elt = torch.tensor([], dtype=dtype).element_size()
    rows: List[dict] = []
    for layer in layers:
        if layer == "down_gather":
            k_full, n_full = dims["intermediate"], dims["hidden"]
        elif layer == "o_scatter_residual":
            k_full, n_full = dims["hidden"], dims["hidden"]
        else:
            raise ValueError(f"layers: unknown layer {layer!r}")
        for keep in keeps:
            for pattern in patterns:
                size = k_full if layer == "down_gather" else n_full
                idx = kept_indices(size, keep, pattern, gen).to(device)
                if layer == "down_gather":
                    w = (torch.randn(n_full, k_full, generator=gen) / k_full ** 0.5).to(**kw)
                    wc = w[:, idx].contiguous()
                    n, k = n_full, idx.numel()
                else:
                    w = (torch.randn(n_full, k_full, generator=gen) / k_full ** 0.5).to(**kw)
                    wc = w[idx].contiguous()
                    n, k = idx.numel(), k_full
                for m in tokens:
                    x = torch.randn(m, k_full, generator=gen).to(**kw)
                    if layer == "down_gather":
                        xc = x[:, idx].contiguous()
                        fns = {"compact_linear": lambda: compact_linear(x, wc, None, idx),
                               "dense": lambda: F.linear(x, w),
                               "ideal": lambda: F.linear(xc, wc),
                               "eager": lambda: _eager_gather(x, wc, idx)}
                        if with_compile:
                            fns["eager_compiled"] = lambda: compiled[layer](x, wc, idx)
                        moved = (m * k + n * k + m * n) * elt
                    else:
                        res = torch.randn(m, n_full, generator=gen).to(**kw)
                        stream = res.clone()
                        fns = {"compact_linear": lambda: compact_linear(x, wc, None, None, idx, n_full, res),
                               "compact_linear_": lambda: compact_linear_(stream, x, wc, None, None, idx),
                               "dense": lambda: torch.addmm(res, x, w.t()),
                               "ideal": lambda: F.linear(x, wc),
                               "eager": lambda: _eager_scatter(x, wc, idx, res)}
                        if with_compile:
                            fns["eager_compiled"] = lambda: compiled[layer](x, wc, idx, res)
                        moved = (m * k + n * k + 2 * m * n_full) * elt
                    forced = {}
                    for b in _gpu_backends(device, dtype):  # each kernel backend on its own
                        forced[f"compact_linear[{b}]"] = b
                        fns[f"compact_linear[{b}]"] = _forced(b, fns["compact_linear"])
                    with torch.no_grad():
                        errs = {impl: _rel_err(fns[impl](), fns["eager"]()) for impl in ["compact_linear", *forced]}
                        timer = _timer(device, m)
                        timed = {impl: timer(fn) for impl, fn in fns.items()}
                    times = {impl: t for impl, (t, _) in timed.items()}
                    for impl, t in times.items():
                        rows.append({
                            "section": "compact_linear", "layer": layer, "M": m, "N": n, "K": k,
                            "out_features": n_full, "in_features": k_full, "keep": keep, "pattern": pattern,
                            "impl": impl, "dtype": str(dtype).replace("torch.", ""), "ms": t,
                            "tflops": 2.0 * m * n * k / (t * 1e-3) / 1e12, "gbps": moved / (t * 1e-3) / 1e9,
                            "ideal_over_t": times["ideal"] / t, "speedup_vs_eager": times["eager"] / t,
                            "speedup_vs_dense": times["dense"] / t,
                            "rel_err": errs.get(impl), "backend": forced.get(impl, backend),
                            "timer": timed[impl][1],
                        })
    return rows
