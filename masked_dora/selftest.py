"""``masked-dora selftest``: check every kernel backend on this device against the float64 reference.

For each op (``row_norm``, ``dora_linear`` forward, ``dora_linear_backward``, ``compact_linear``),
each backend that can run on the device (forced, one at a time; ``torch`` is the baseline) and
each dtype, it runs a few shapes (odd sizes, exactly-zero rows of W0, r = 1, a cached ``‖W0‖²``,
3-D and strided inputs, gather and/or scatter with and without a residual, in place)
and reports the largest relative error ``‖out − ref‖ / ‖ref‖`` over every output (and gradient),
against the same op computed by the ``torch`` reference in float64 with the same norm floor, the
tolerance of the correctness policy (fp32 1e-5, or 5e-4 where float32 matmuls may use TF32;
bf16/fp16 1e-2) and the median time of one check call (every variant of the op; for
``dora_linear_backward`` plus the reference forward that makes its inputs). Its ``--quick`` shapes
are tiny and odd: what bench/gpu_check.sh runs under compute-sanitizer.

``--enable`` records, for this device and software, every (backend, op) whose every check passed
(:func:`masked_dora.ops._verified.record_user_verification`): from then on the dispatcher uses those
kernels by default here. ``--json PATH`` writes the rows, the device and the verdicts (the form a
committed GPU run fills :data:`masked_dora.ops._verified.VERIFIED` from), rewritten after every check
(``"complete": false`` until the last). ``--jobs N`` first compiles the Triton kernels in N processes
at once (:func:`warm_up`); the checks themselves always run in this process.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import ops
from .ops import _registry, _verified
from .ops.dora_linear import readable_rows
from .ops.precision import fp32_matmul_uses_tf32
from .ops.row_norm import default_eps

OPS = ("row_norm", "dora_linear", "dora_linear_backward", "compact_linear")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FULL_SHAPES = {  # (M tokens, K in, N out, r) / compact: (M, K full, K kept, N full, N kept)
    "dora": [(257, 515, 1000, 1), (77, 4096, 320, 6), (1024, 1536, 4096, 16)],
    "compact": [(1, 4096, 2048, 4096, 3072), (77, 1000, 900, 515, 257), (1024, 4096, 3072, 11008, 11008)],
}
# N = 45 and 20 take the CUDA epilogue/prologue's scalar path, N = 64 its 16-byte vector path
QUICK_SHAPES = {"dora": [(37, 70, 45, 3), (9, 33, 20, 1), (17, 40, 64, 2)],
                "compact": [(1, 96, 70, 80, 50), (37, 96, 70, 80, 50)]}
ZERO_ROWS = 3


@dataclass
class Row:
    op: str
    backend: str
    dtype: str
    shapes: str
    max_rel_err: Optional[float] = None
    tolerance: Optional[float] = None
    ms_per_call: Optional[float] = None
    status: str = "passed"          # passed | FAILED | error | skipped
    detail: str = ""
    errors: Dict[str, float] = field(default_factory=dict)


def tolerance(dtype: torch.dtype, device: torch.device) -> float:
    if dtype != torch.float32:
        return 1e-2
    tf32 = device.type == "cuda" and fp32_matmul_uses_tf32()
    return 5e-4 if tf32 else 1e-5


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double().to(out.device)
    if not torch.isfinite(out).all():
        return float("inf")
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    return diff / denom if denom else diff


def _time(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    fn()  # warm-up (Triton compiles and autotunes here)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# ---------------------------------------------------------------- one case per op: run(backend) -> outputs

def _dora_inputs(shape, dtype, device, gen):
    m, k, n, r = shape
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    w = rnd(n, k) / k ** 0.5
    b = rnd(n, r) * 0.3
    w[:ZERO_ROWS] = 0.0                       # exactly-zero rows of W0 + sBA, as real checkpoints have
    b[:ZERO_ROWS] = 0.0
    t = dict(x=rnd(m, k), weight=w, lora_A=rnd(r, k) / k ** 0.5, lora_B=b,
             scale=torch.rand(n, generator=gen, dtype=torch.float64) + 0.5, bias=rnd(n) * 0.1, dy=rnd(m, n))
    return {name: v.to(device) for name, v in t.items()}


def _row_norm_case(shape, dtype, device, gen):
    t = _dora_inputs(shape, dtype, device, gen)
    eps = default_eps(dtype)  # the reference floors at the same eps as the kernel under test

    def run(backend, cast):
        w, a, b = (t[k].to(cast) for k in ("weight", "lora_A", "lora_B"))
        with ops.use_backend(backend):
            return {"norm": ops.row_norm(w, a, b, 1.5, eps=eps),
                    "norm, cached ||W0||^2": ops.row_norm(w, a, b, 1.5, weight_sq=ops.weight_sq_norm(w), eps=eps)}
    return run


def _dora_vectors(t, cast):
    vec = torch.float64 if cast == torch.float64 else torch.float32  # the module keeps c and zb in fp32
    return t["scale"].to(vec), t["bias"].to(vec)


def _dora_forward_case(shape, dtype, device, gen):
    t = _dora_inputs(shape, dtype, device, gen)

    def run(backend, cast):
        x, w, a, b = (t[k].to(cast) for k in ("x", "weight", "lora_A", "lora_B"))
        scale, bias = _dora_vectors(t, cast)
        strided = x.repeat_interleave(2, dim=1)[:, ::2]  # the same values, last stride 2
        with ops.use_backend(backend):
            return {"y": ops.dora_linear(x, w, a, b, 2.0, scale, bias),
                    "y, 3-D x, no bias": ops.dora_linear(x.unsqueeze(0), w, a, b, 2.0, scale)[0],
                    "y, strided x": ops.dora_linear(strided, w, a, b, 2.0, scale, bias)}
    return run


def _dora_backward_case(shape, dtype, device, gen):
    """The backward op itself, on the saved tensors of the reference forward in the same dtype (calling
    it directly keeps the check on this thread: autograd runs a CUDA backward on its own)."""
    t = _dora_inputs(shape, dtype, device, gen)

    def run(backend, cast):
        x, w, a, b, dy = (t[k].to(cast) for k in ("x", "weight", "lora_A", "lora_B", "dy"))
        scale, bias = _dora_vectors(t, cast)
        scale = scale.clone()
        scale[::7] = 0.0  # pruned channels: their dc comes from P's rows, recomputed
        bias = bias * (scale != 0)
        with ops.use_backend("torch"):
            y, pre, xa = torch.ops.masked_dora.dora_linear(x, w, a, b, 2.0, scale, bias)
            readable = readable_rows(scale, bias, pre, cast)
        with ops.use_backend(backend):
            grads = torch.ops.masked_dora.dora_linear_backward(dy, x, w, a, b, 2.0, scale, bias, y, False, xa,
                                                               readable, ~readable, None, True)
        return dict(zip(("dx", "dA", "dB", "dscale", "dbias"), grads))
    return run


def _compact_case(shape, dtype, device, gen):
    m, k_full, k_kept, n_full, n_kept = shape
    in_idx = torch.sort(torch.randperm(k_full, generator=gen)[:k_kept]).values.to(device)
    out_idx = torch.sort(torch.randperm(n_full, generator=gen)[:n_kept]).values.to(device)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(device)  # noqa: E731
    x, w, bias, res = rnd(m, k_full), rnd(n_kept, k_kept) / k_kept ** 0.5, rnd(n_kept), rnd(m, n_full)
    res_kept = rnd(m, n_kept)

    def run(backend, cast):
        xc, wc, bc = x.to(cast), w.to(cast), bias.to(cast)
        with ops.use_backend(backend):
            return {
                "gather+scatter+residual": ops.compact_linear(xc, wc, bc, in_idx=in_idx, out_idx=out_idx,
                                                              out_features=n_full, residual=res.to(cast)),
                "gather only": ops.compact_linear(xc, wc, bc, in_idx=in_idx),
                "scatter only": ops.compact_linear(xc[:, :k_kept], wc, None, out_idx=out_idx, out_features=n_full),
                "no indices, strided x, residual": ops.compact_linear(xc[:, :k_kept], wc, bc,
                                                                      residual=res_kept.to(cast)),
                "in place": ops.compact_linear_(res.to(cast, copy=True), xc, wc, bc, in_idx=in_idx,
                                                out_idx=out_idx),
                "in place, no indices": ops.compact_linear_(res_kept.to(cast, copy=True), xc[:, :k_kept], wc, bc),
            }
    return run


CASES: Dict[str, Tuple[str, Callable]] = {
    "row_norm": ("dora", _row_norm_case),
    "dora_linear": ("dora", _dora_forward_case),
    "dora_linear_backward": ("dora", _dora_backward_case),
    "compact_linear": ("compact", _compact_case),
}


def check(op: str, backend: str, dtype: torch.dtype, device: torch.device, quick: bool = False,
          reps: int = 5) -> Row:
    """One row: ``backend`` runs ``op`` in ``dtype`` on ``device`` over the shapes, against float64."""
    kind, make = CASES[op]
    shapes = (QUICK_SHAPES if quick else FULL_SHAPES)[kind]
    row = Row(op, backend, str(dtype).replace("torch.", ""), "; ".join("x".join(map(str, s)) for s in shapes),
              tolerance=tolerance(dtype, device))
    impl = _registry.registered(op).get(backend)
    reason = "not registered for this op" if impl is None else _registry.unavailable(impl, device, dtype)
    if reason is not None:
        row.status, row.detail = "skipped", reason
        return row
    gen = torch.Generator().manual_seed(0)
    times = []
    try:
        for shape in shapes:
            run = make(shape, dtype, device, gen)
            ref = run("torch", torch.float64)
            out = run(backend, dtype)
            for name, value in out.items():
                err = _rel_err(value, ref[name])
                key = f"{name}@{'x'.join(map(str, shape))}"
                row.errors[key] = err
            times.append(_time(lambda: run(backend, dtype), device, reps))
    except Exception as exc:  # noqa: BLE001  (a kernel that raises is a failed check, not a crash)
        row.status, row.detail = "error", f"{type(exc).__name__}: {exc}"[:500]
        return row
    row.max_rel_err = max(row.errors.values())
    row.ms_per_call = statistics.median(times)
    if not row.max_rel_err < row.tolerance:
        row.status = "FAILED"
        worst = max(row.errors, key=row.errors.get)
        row.detail = f"worst: {worst} ({row.errors[worst]:.2e})"
    return row


def plan(device: torch.device, backends: Optional[Sequence[str]] = None,
         dtypes: Sequence[torch.dtype] = tuple(DTYPES.values()), ops_: Sequence[str] = OPS) -> List[tuple]:
    """The (op, backend, dtype) checks, in order: per op the ``torch`` baseline first, then the kernels."""
    todo = []
    for op in ops_:
        names = [b for b in _registry.registered(op) if backends is None or b in backends]
        for backend in sorted(names, key=lambda b: (b != "torch", b)):
            todo.extend((op, backend, dtype) for dtype in dtypes)
    return todo


def _warm_one(op: str, backend: str, dtype_name: str, device: str, quick: bool) -> str:
    """Worker of :func:`warm_up` (a fresh process): run one check once; what it compiles lands in Triton's
    on-disk cache. The result is thrown away (the timed, reported run is the main process's)."""
    row = check(op, backend, DTYPES[dtype_name], torch.device(device), quick=quick, reps=1)
    return row.status


def warm_up(device: torch.device, todo: Sequence[tuple], jobs: int, quick: bool = False) -> None:
    """Compile the Triton kernels of ``todo`` in ``jobs`` processes at once (GPU only).

    Triton compiles every (kernel, config, specialisation) on first use, one after another, seconds each:
    on an H100 the serial selftest spent its 90 s compiling. Checking each (op, dtype) once in parallel
    processes fills Triton's on-disk cache, so the main pass (timed, reported) only loads kernels. A worker
    that fails is ignored here: the main pass runs the same check and reports it.
    """
    triton_checks = [(op, b, dt) for op, b, dt in todo if b == "triton"]
    if jobs <= 1 or device.type != "cuda" or not triton_checks:
        return
    t0 = time.perf_counter()
    statuses = run_in_processes(device, triton_checks, jobs, quick=quick)
    print(f"warm-up: ran the {len(statuses)} Triton checks once in {min(jobs, len(statuses))} processes "
          f"({time.perf_counter() - t0:.0f} s; compiled kernels are in Triton's cache)", flush=True)


def run_in_processes(device: torch.device, checks: Sequence[tuple], jobs: int, quick: bool = False) -> List[str]:
    """Run each (op, backend, dtype) check once in ``jobs`` fresh (spawned) processes; their statuses
    ("error: ..." where a worker itself failed). Any device: :func:`warm_up` uses it on GPUs."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    statuses = []
    with ProcessPoolExecutor(max_workers=max(1, min(jobs, len(checks))),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_warm_one, op, b, str(dt).replace("torch.", ""), str(device), quick)
                   for op, b, dt in checks]
        for f in futures:
            try:
                statuses.append(f.result())
            except Exception as exc:  # noqa: BLE001  (the main pass runs the same check and reports it)
                statuses.append(f"error: {type(exc).__name__}: {exc}")
    return statuses


def run_selftest(device: torch.device, backends: Optional[Sequence[str]] = None,
                 dtypes: Sequence[torch.dtype] = tuple(DTYPES.values()), ops_: Sequence[str] = OPS,
                 quick: bool = False, reps: int = 5,
                 on_row: Optional[Callable[[List[Row]], None]] = None) -> List[Row]:
    """Every check of :func:`plan`; ``on_row(rows_so_far)`` after each one (a cut-off run keeps its rows)."""
    rows: List[Row] = []
    for op, backend, dtype in plan(device, backends, dtypes, ops_):
        rows.append(check(op, backend, dtype, device, quick=quick, reps=reps))
        if on_row is not None:
            on_row(rows)
    return rows


def verdicts(rows: Sequence[Row]) -> Dict[str, List[str]]:
    """backend -> ops whose every check ran and passed (kernel backends only)."""
    by_key: Dict[Tuple[str, str], List[Row]] = {}
    for row in rows:
        if row.backend in _verified.KERNEL_BACKENDS and row.status != "skipped":
            by_key.setdefault((row.backend, row.op), []).append(row)
    passed: Dict[str, List[str]] = {}
    for (backend, op), group in sorted(by_key.items()):
        if all(r.status == "passed" for r in group):
            passed.setdefault(backend, []).append(op)
    return passed


def table(rows: Sequence[Row]) -> str:
    """The checks that ran, as a markdown table, then one line per backend/reason that was skipped."""
    head = "| op | backend | dtype | max rel err | tolerance | ms/call | status |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    skipped: Dict[Tuple[str, str], List[str]] = {}
    for r in rows:
        if r.status == "skipped":
            skipped.setdefault((r.backend, r.detail), []).append(f"{r.op}/{r.dtype}")
            continue
        err = "-" if r.max_rel_err is None else f"{r.max_rel_err:.2e}"
        tol = "-" if r.tolerance is None else f"{r.tolerance:.0e}"
        ms = "-" if r.ms_per_call is None else f"{r.ms_per_call:.3f}"
        status = r.status + (f" ({r.detail})" if r.detail else "")
        lines.append(f"| {r.op} | {r.backend} | {r.dtype} | {err} | {tol} | {ms} | {status} |")
    for (backend, reason), which in skipped.items():
        lines.append(f"skipped {backend} ({len(which)} checks): {reason}")
    return "\n".join(lines)


def device_info(device: torch.device) -> dict:
    import platform

    from . import __version__
    from ._backends import status

    info = {"device": str(device), "masked_dora": __version__, "torch": torch.__version__,
            "backends": status(), "extension_build": _verified.extension_build(),
            "float32_matmuls_use_tf32": fp32_matmul_uses_tf32()}
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        info["triton"] = None
    if device.type == "cuda":
        cap = _verified.capability(device)
        info.update(name=torch.cuda.get_device_name(device), capability=_verified.sm(cap), cuda=torch.version.cuda,
                    fingerprint=_verified.fingerprint(device))
    else:
        info.update(name=f"CPU ({platform.processor() or platform.machine()})")
    return info


def main(args) -> int:
    """The ``selftest`` subcommand (arguments from :func:`masked_dora.cli.build_parser`)."""
    if args.device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine (torch "
                         f"{torch.__version__}, CUDA build: {torch.version.cuda})")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SystemExit(f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cuda", "cpu"):
        raise SystemExit(f"--device: expected cpu, cuda or cuda:N, got {args.device!r}")
    dtypes = [DTYPES[d] for d in args.dtypes]
    info = device_info(device)
    print(f"masked-dora selftest on {info['name']} ({info.get('capability', device.type)}), torch {info['torch']}, "
          f"triton {info['triton']}, extension {info['backends'].get('extension')}", flush=True)
    todo = plan(device, backends=args.backends, dtypes=dtypes, ops_=args.ops)
    warm_up(device, todo, args.jobs, quick=args.quick)

    def write_json(rows: Sequence[Row], complete: bool) -> None:
        report = {"environment": info, "complete": complete, "rows": [asdict(r) for r in rows],
                  "verified": verdicts(rows)}
        with open(args.json + ".tmp", "w") as f:
            json.dump(report, f, indent=1)
        os.replace(args.json + ".tmp", args.json)  # a reader (or a cut-off run) never sees half a file

    def progress(rows: List[Row]) -> None:
        r = rows[-1]
        err = "-" if r.max_rel_err is None else f"{r.max_rel_err:.2e}"
        print(f"  {r.op} {r.backend} {r.dtype}: {r.status} (max rel err {err})"
              + (f" {r.detail}" if r.detail and r.status != "skipped" else ""), flush=True)
        if args.json:
            write_json(rows, complete=False)

    rows = run_selftest(device, backends=args.backends, dtypes=dtypes, ops_=args.ops, quick=args.quick,
                        reps=args.reps, on_row=progress)
    print(table(rows))
    passed = verdicts(rows)
    bad = [r for r in rows if r.status in ("FAILED", "error")]
    if args.json:
        write_json(rows, complete=True)
        print(f"wrote {args.json}")
    if args.enable:
        if device.type != "cuda":
            print("--enable: CPU backends need no verification (they are built and tested with the package); "
                  "nothing recorded")
        elif passed:
            path = _verified.record_user_verification(device, passed)
            print(f"enabled on this device: {', '.join(f'{b}: {sorted(o)}' for b, o in passed.items())} "
                  f"(recorded in {path})")
        else:
            print("--enable: no kernel backend passed every check; nothing recorded")
    print(f"{sum(r.status == 'passed' for r in rows)} passed, {len(bad)} failed, "
          f"{sum(r.status == 'skipped' for r in rows)} skipped")
    return 1 if bad else 0
