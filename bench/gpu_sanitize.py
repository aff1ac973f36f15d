"""Every masked_dora kernel op at tiny odd shapes, checked against the float64 torch reference:
the workload that bench/gpu_check.sh runs under ``compute-sanitizer --tool memcheck``.

    python bench/gpu_sanitize.py                          # GPU: the cuda backend (C++/CUDA extension)
    python bench/gpu_sanitize.py --backends cuda triton   # the Triton kernels too
    python bench/gpu_sanitize.py --device cpu             # no GPU: the same calls, cpp backend (torch
                                                          # where an op has no cpp kernel: row_norm)
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 7 \\
        python bench/gpu_sanitize.py                      # what gpu_check.sh runs (stage "sanitize")

Calls (M=3, K=37, N=29, r=3; compact_linear keeps 23 of 37 inputs and 17 of 29
outputs, M in {1, 3}): row_norm (with and without weight_sq, a zero row),
dora_linear forward + backward (requires_grad inputs, ``.backward``; 2-D with
bias, 3-D without), compact_linear (no indices, in_idx, out_idx, in_idx +
out_idx + residual) and compact_linear_ in place (with and without indices),
in bf16, fp16 and fp32 where the backend supports the dtype (else a SKIP line).
The backend is forced through MASKED_DORA_BACKEND as well as use_backend(),
because autograd runs a CUDA backward on its own thread (use_backend is
thread-local); a counter on each backend's implementation checks that the
forced kernel really ran. One line per call; exit code 1 if any call failed
(wrong result, exception, forced kernel not run, a CUDA kernel missing from
the build), else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import traceback
from typing import Dict, Iterator, List

import torch

import masked_dora
from masked_dora.ops import _registry, compact_linear, compact_linear_, dora_linear, row_norm, use_backend
from masked_dora.ops.row_norm import weight_sq_norm

M, K, N, R = 3, 37, 29, 3
K_KEEP, N_KEEP = 23, 17
SCALING = 2.0
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
OPS = ("row_norm", "dora_linear", "dora_linear_backward", "compact_linear")
CALLS: Dict[tuple, int] = {}


def _count_calls() -> None:
    """Wrap every registered implementation so that each call is counted per (op, backend)."""
    for op in OPS:
        for name, impl in _registry.registered(op).items():
            def counted(*args, _fn=impl.fn, _key=(op, name), **kwargs):
                CALLS[_key] = CALLS.get(_key, 0) + 1
                return _fn(*args, **kwargs)
            _registry._REGISTRY[op][name] = dataclasses.replace(impl, fn=counted)


@contextlib.contextmanager
def forced(backend: str) -> Iterator[None]:
    """use_backend(backend) on this thread and MASKED_DORA_BACKEND for autograd's device threads."""
    old = os.environ.get(_registry.ENV_VAR)
    os.environ[_registry.ENV_VAR] = backend
    try:
        with use_backend(backend):
            yield
    finally:
        if old is None:
            os.environ.pop(_registry.ENV_VAR, None)
        else:
            os.environ[_registry.ENV_VAR] = old


def _rand(*shape, scale=1.0):
    return torch.randn(*shape, dtype=torch.float64) * scale


def _indices(size: int, keep: int) -> torch.Tensor:
    return torch.sort(torch.randperm(size)[:keep]).values


# ---------------------------------------------------------------- the calls: (name, ops, fn(dtype, dev))

def case_row_norm(with_wsq: bool):
    def run(dtype, dev):
        w, a, b = _rand(N, K) / K ** 0.5, _rand(R, K) / K ** 0.5, _rand(N, R, scale=0.3)
        w[0], b[0] = 0.0, 0.0  # an exactly-zero row: the eps floor
        w, a, b = (t.to(dev, dtype) for t in (w, a, b))
        wsq = weight_sq_norm(w) if with_wsq else None
        return {"norm": row_norm(w, a, b, SCALING, wsq, eps=None)}
    return f"row_norm[{'weight_sq' if with_wsq else 'no weight_sq'}]", ("row_norm",), run


def case_dora(three_d: bool):
    def run(dtype, dev):
        lead = (2, M) if three_d else (M,)
        x = _rand(*lead, K).to(dev, dtype).requires_grad_(True)
        w = (_rand(N, K) / K ** 0.5).to(dev, dtype)
        a = (_rand(R, K) / K ** 0.5).to(dev, dtype).requires_grad_(True)
        b = _rand(N, R, scale=0.3).to(dev, dtype).requires_grad_(True)
        scale = (torch.rand(N, dtype=torch.float64) + 0.5).to(dev, torch.float64 if dtype == torch.float64
                                                               else torch.float32).requires_grad_(True)
        bias = None if three_d else _rand(N, scale=0.1).to(dev, dtype).requires_grad_(True)
        dy = _rand(*lead, N).to(dev, dtype)
        y = dora_linear(x, w, a, b, SCALING, scale, bias)
        y.backward(dy)
        out = {"y": y.detach(), "dx": x.grad, "dA": a.grad, "dB": b.grad, "dscale": scale.grad}
        if bias is not None:
            out["dbias"] = bias.grad
        return out
    return (f"dora_linear fwd+bwd[{'3-D, no bias' if three_d else '2-D, bias'}]",
            ("dora_linear", "dora_linear_backward"), run)


def case_compact(m: int, gather: bool, scatter: bool, residual: bool, in_place: bool = False):
    def run(dtype, dev):
        k, n = (K_KEEP if gather else K), (N_KEEP if scatter else N)
        x = _rand(m, K).to(dev, dtype)
        w = (_rand(n, k) / k ** 0.5).to(dev, dtype)
        bias = _rand(n, scale=0.1).to(dev, dtype)
        in_idx = _indices(K, K_KEEP).to(dev) if gather else None
        out_idx = _indices(N, N_KEEP).to(dev) if scatter else None
        res = _rand(m, N).to(dev, dtype) if (residual or in_place) else None
        with torch.no_grad():
            if in_place:
                stream = res.clone()
                compact_linear_(stream, x, w, bias, in_idx, out_idx)
                return {"residual": stream}
            return {"y": compact_linear(x, w, bias, in_idx, out_idx, N if scatter else None, res)}
    parts = [p for p, on in (("in_idx", gather), ("out_idx", scatter), ("residual", residual)) if on]
    name = "compact_linear_ in place" if in_place else "compact_linear"
    return f"{name}[{'+'.join(parts) or 'no indices'}] M={m}", ("compact_linear",), run


def cases():
    out = [case_row_norm(False), case_row_norm(True), case_dora(False), case_dora(True)]
    for m in (1, M):
        out += [case_compact(m, False, False, False), case_compact(m, True, False, False),
                case_compact(m, False, True, False), case_compact(m, True, True, True),
                case_compact(m, True, True, False, in_place=True), case_compact(m, False, False, False, True)]
    return out


# ---------------------------------------------------------------- running and checking

def tolerance(dtype: torch.dtype, dev: str) -> float:
    if dtype == torch.float32:
        return 5e-4 if dev == "cuda" else 1e-5  # a GPU's fp32 GEMM may use TF32
    return 1e-2  # DESIGN.md: bf16/fp16 relative error < 1e-2


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    denom = ref.norm().item()
    return (out - ref).norm().item() / denom if denom else (out - ref).norm().item()


def backend_for(op: str, backends: List[str], dev: torch.device, dtype: torch.dtype):
    """(backend, None) to force for ``op``, or (None, why) when none of ``backends`` runs it."""
    impls = _registry.registered(op)
    whys = []
    for b in backends:
        if b in impls:
            if impls[b].supports(dev, dtype):
                return b, None
            whys.append(impls[b].why_not(dev, dtype))
        else:
            whys.append(f"backend {b!r} has no kernel for {op}")
    if dev.type == "cpu" and not any(b in impls for b in backends):  # cpu mode: row_norm has no cpp kernel
        return "torch", None
    return None, "; ".join(whys)


def missing_cuda_kernels(backends: List[str]) -> List[str]:
    if "cuda" not in backends:
        return []
    return [op for op in OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(
        f"masked_dora::{op}_kernel", "CUDA")]


def run_one(name, ops, fn, dtype_name, backends, dev) -> dict:
    dtype = DTYPES[dtype_name]
    device = torch.device(dev)
    chosen = {op: backend_for(op, backends, device, dtype) for op in ops}
    row = {"call": name, "dtype": dtype_name, "device": dev, "backend": None, "rel_err": None, "status": "SKIP"}
    skipped = [why for b, why in chosen.values() if b is None]
    if skipped:
        row["why"] = skipped[0]
        return row
    used = sorted({b for b, _ in chosen.values()})
    if len(used) > 1:  # one case forces one backend (its ops are one forward/backward pair)
        used = [b for b in used if b != "torch"]
    backend = used[0]
    row["backend"] = backend
    try:
        torch.manual_seed(0)
        before = {op: CALLS.get((op, backend), 0) for op in ops}
        with forced(backend):
            out = fn(dtype, dev)
        if dev == "cuda":
            torch.cuda.synchronize()
        not_run = [op for op in ops if CALLS.get((op, backend), 0) == before[op]]
        torch.manual_seed(0)
        with forced("torch"):
            ref = fn(torch.float64, dev)
        errs = {k: rel_err(v, ref[k]) for k, v in out.items()}
        finite = all(bool(torch.isfinite(v).all()) for v in out.values())
        row["rel_err"] = max(errs.values())
        row["errors"] = errs
        tol = tolerance(dtype, dev)
        row["tol"] = tol
        if not_run:
            row["why"] = f"forced backend {backend!r} did not run {not_run}"
        elif not finite:
            row["why"] = "non-finite output"
        elif row["rel_err"] >= tol:
            worst = max(errs, key=errs.get)
            row["why"] = f"{worst}: relative error {errs[worst]:.2e} >= {tol:.0e}"
        row["status"] = "FAIL" if "why" in row else "OK"
    except Exception as exc:  # report and go on with the next call
        row["status"], row["why"] = "FAIL", f"{type(exc).__name__}: {exc}"
        row["traceback"] = traceback.format_exc()
    return row


def thread_local_check(backend: str, dev: str) -> dict:
    """Information only: which backend runs dora_linear's backward when ``use_backend()`` alone forces one
    (no MASKED_DORA_BACKEND). Autograd runs a CUDA backward on its device thread, where the thread-local
    ``use_backend`` is not seen, so on a GPU it is expected to be the automatic choice, not ``backend``."""
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    if backend_for("dora_linear_backward", [backend], torch.device(dev), dtype)[0] != backend:
        return {}
    before = {k: v for k, v in CALLS.items() if k[0] == "dora_linear_backward"}
    try:
        with use_backend(backend):
            case_dora(False)[2](dtype, dev)
    except Exception as exc:
        return {"use_backend_only_backward": f"error: {type(exc).__name__}: {exc}"}
    ran = sorted(b for (op, b), n in CALLS.items() if op == "dora_linear_backward" and n > before.get((op, b), 0))
    print(f"INFO use_backend({backend!r}) alone (no {_registry.ENV_VAR}): dora_linear backward ran on {ran}"
          + ("" if ran == [backend] else "  <- thread-local forcing did not reach autograd's backward thread"),
          flush=True)
    return {"use_backend_only_forced": backend, "use_backend_only_backward_ran": ran}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--backends", nargs="+", choices=["cuda", "triton", "cpp", "torch"],
                        help="backends to force (default: cuda on the GPU, cpp on the CPU)")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--json", help="also write the per-call results here")
    args = parser.parse_args(argv)
    backends = args.backends or (["cuda"] if args.device == "cuda" else ["cpp"])
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU: use --device cpu to check the script here")
    print(f"gpu_sanitize: device={args.device} backends={backends} torch {torch.__version__} "
          f"masked_dora {masked_dora.__file__} {masked_dora.backend_status()}", flush=True)
    _count_calls()
    rows: List[dict] = []
    missing = missing_cuda_kernels(backends) if args.device == "cuda" else []
    if missing:
        rows.append({"call": "registration", "status": "FAIL",
                     "why": f"no CUDA kernel registered for {missing}: nothing of theirs can be sanitized"})
        print(f"FAIL registration: {rows[-1]['why']}", flush=True)
    for backend in backends:
        for name, ops, fn in cases():
            for dtype_name in args.dtypes:
                row = run_one(name, ops, fn, dtype_name, [backend], args.device)
                rows.append(row)
                err = "-" if row["rel_err"] is None else f"{row['rel_err']:.2e}"
                print(f"{row['status']:4} {name:48} {dtype_name:4} backend={row['backend'] or '-':6} "
                      f"rel_err={err}" + (f"  ({row['why']})" if "why" in row else ""), flush=True)
                if "traceback" in row:
                    print(row["traceback"], file=sys.stderr, flush=True)
    diagnostics = thread_local_check(backends[0], args.device)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("OK", "FAIL", "SKIP")}
    print(f"gpu_sanitize: {counts['OK']} ok, {counts['FAIL']} failed, {counts['SKIP']} skipped", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "backends": backends, "counts": counts, "calls": rows,
                       "diagnostics": diagnostics}, f, indent=1)
    return 1 if counts["FAIL"] or not counts["OK"] else 0


if __name__ == "__main__":
    sys.exit(main())
