"""Ahead-of-time compile checks for the Triton kernels (no GPU needed).

Every kernel module in :mod:`masked_dora.kernels` exposes::

    def compile_targets() -> list[CompileTarget]

listing EVERY configuration the module's launch code can run on a GPU
(each autotune config x each dtype it accepts). CI compiles each target for
sm_80 and sm_90 with ``triton.compile`` (PTX + cubin, no GPU required) and
checks that its shared memory fits the architecture.

The format (kept stable; other kernel modules rely on it):

* ``name``: unique, human readable, e.g. ``"dora_fwd[bf16,BM128,BN128,BK64,w8,s4]"``.
* ``fn``: the raw ``@triton.jit`` function (NOT the ``triton.autotune`` wrapper).
* ``signature``: EVERY parameter of ``fn``, in order, mapped to its Triton type
  string: pointers ``"*bf16"``/``"*fp16"``/``"*fp32"``/``"*i32"``/``"*i64"``,
  scalars ``"i32"``/``"i64"``/``"fp32"``, and ``"constexpr"`` for constexprs.
  :func:`ptr` and :data:`TRITON_TYPE` help build it.
* ``constexprs``: name -> value for every ``"constexpr"`` parameter (including
  the ones an autotune config supplies).
* ``num_warps``, ``num_stages``: as in the autotune config.
* ``aligned`` (optional): names of pointer / integer parameters assumed divisible
  by 16, as the JIT specialises them at run time for 16-byte-aligned tensors and
  sizes/strides that are multiples of 16 (``tt.divisibility = 16``). Without it
  the compiler cannot vectorise the loads and does not pipeline them, so the
  shared memory reported would be far below what the GPU run uses. A stride
  that is 1 at run time is specialised by the JIT to a constant: list it as a
  ``"constexpr"`` with value 1. :func:`specialize` builds all three fields.

Compiling needs real ``JITFunction`` objects, so it cannot run in a process
where ``TRITON_INTERPRET=1`` was set when the kernels were defined: use
:func:`compile_all_in_subprocess` (which unsets it in a fresh interpreter), or
run ``python -m masked_dora.kernels._compile --arch 80 90``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

# usable dynamic shared memory per block (bytes)
SHARED_MEMORY_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}

TRITON_TYPE = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32",
               torch.int32: "i32", torch.int64: "i64"}


def ptr(dtype: torch.dtype) -> str:
    """The signature string of a pointer to ``dtype`` elements, e.g. ``"*bf16"``."""
    return "*" + TRITON_TYPE[dtype]


@dataclass(frozen=True)
class CompileTarget:
    """One kernel specialisation to compile ahead of time (see the module docstring)."""

    name: str
    fn: Any
    signature: Dict[str, str]
    constexprs: Dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
    aligned: Tuple[str, ...] = ()


def specialize(fn, types: Dict[str, str], constexprs: Dict[str, Any], unit: Sequence[str] = (),
               unaligned: Sequence[str] = ()):
    """``(signature, constexprs, aligned)`` for :class:`CompileTarget`, as the JIT specialises a typical launch.

    ``types`` maps runtime parameters to type strings (see :data:`TRITON_TYPE`); every other
    parameter of ``fn`` is a constexpr whose value is in ``constexprs``. Parameters in ``unit``
    (strides of the contiguous dimension) become constexprs equal to 1; every pointer and ``i32``
    parameter not in ``unaligned`` is marked divisible by 16.
    """
    sig, consts = {}, dict(constexprs)
    for name in fn.arg_names:
        if name in unit:
            sig[name] = "constexpr"
            consts[name] = 1
        else:
            sig[name] = types.get(name, "constexpr")
    aligned = tuple(n for n, t in sig.items() if (t.startswith("*") or t == "i32") and n not in unaligned)
    return sig, consts, aligned


def _check_target(target: CompileTarget) -> None:
    arg_names = getattr(target.fn, "arg_names", None)
    if arg_names is None:
        raise TypeError(f"{target.name}: fn must be a @triton.jit function, got {type(target.fn).__name__}")
    if type(target.fn).__name__ == "InterpretedFunction":
        raise RuntimeError(f"{target.name}: the kernel was defined under TRITON_INTERPRET=1 and cannot be "
                           "compiled; use compile_all_in_subprocess()")
    if list(target.signature) != list(arg_names):
        raise ValueError(f"{target.name}: signature must list every parameter of {target.fn.__name__} in "
                         f"order {list(arg_names)}, got {list(target.signature)}")
    unknown = set(target.aligned) - set(arg_names)
    if unknown:
        raise ValueError(f"{target.name}: aligned names unknown parameters {sorted(unknown)}")
    want = {k for k, v in target.signature.items() if v == "constexpr"}
    if want != set(target.constexprs):
        raise ValueError(f"{target.name}: constexprs must give exactly {sorted(want)}, "
                         f"got {sorted(target.constexprs)}")


def compile_target(target: CompileTarget, arch: int):
    """Compile ``target`` for CUDA compute capability ``arch`` (e.g. 80, 90); returns the compiled kernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    _check_target(target)
    attrs = {(target.fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in target.aligned}
    src = ASTSource(target.fn, dict(target.signature), dict(target.constexprs), attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": target.num_warps, "num_stages": target.num_stages})


def kernel_modules() -> List[str]:
    """Names of the modules in masked_dora.kernels that expose ``compile_targets``."""
    import masked_dora.kernels as pkg

    names = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        if hasattr(mod, "compile_targets"):
            names.append(mod.__name__)
    return names


def collect_targets() -> List[CompileTarget]:
    targets = []
    for name in kernel_modules():
        targets.extend(importlib.import_module(name).compile_targets())
    return targets


def _compile_one(args) -> dict:
    index, arch = args
    target = collect_targets()[index]
    rec = {"name": target.name, "arch": arch, "ok": False, "shared": None, "error": None}
    try:
        compiled = compile_target(target, arch)
        rec["shared"] = int(compiled.metadata.shared)
        rec["ok"] = True
    except Exception as exc:  # reported, not raised: the caller asserts on every record
        rec["error"] = f"{type(exc).__name__}: {str(exc)[-2000:]}"
    return rec


def compile_all(archs: Sequence[int] = (80, 90), jobs: Optional[int] = None, only: str = "") -> List[dict]:
    """Compile every target for every arch in this (non-interpreted) process.

    ``only``: comma-separated substrings; compile just the targets whose name contains one.
    """
    keys = only.split(",")
    idx = [i for i, t in enumerate(collect_targets()) if any(key in t.name for key in keys)]
    work = [(i, a) for a in archs for i in idx]
    jobs = jobs or max(1, min(len(os.sched_getaffinity(0)), 8))
    if jobs == 1:
        return [_compile_one(w) for w in work]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(_compile_one, work))


def compile_all_in_subprocess(archs: Sequence[int] = (80, 90), jobs: Optional[int] = None,
                              timeout: float = 900) -> List[dict]:
    """:func:`compile_all` in a fresh Python with ``TRITON_INTERPRET`` unset; returns its records."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    cmd = [sys.executable, "-c", "import sys; from masked_dora.kernels._compile import main; sys.exit(main())",
           "--json", "--arch", *map(str, archs)]
    if jobs:
        cmd += ["--jobs", str(jobs)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"compile subprocess failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Compile every masked_dora Triton kernel config for CUDA archs.")
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--only", default="",
                        help="compile only targets whose name contains one of these (comma-separated)")
    parser.add_argument("--json", action="store_true", help="print the records as one JSON line")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    records = compile_all(args.arch, args.jobs, args.only)
    if args.json:
        print(json.dumps(records))
    else:
        for r in records:
            limit = SHARED_MEMORY_LIMIT.get(r["arch"])
            status = "ok" if r["ok"] and (limit is None or r["shared"] <= limit) else "FAIL"
            print(f"{status:4} sm_{r['arch']} shared={r['shared']} {r['name']} {r['error'] or ''}")
    return 0 if all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
