"""Which GPU kernels may run by default: built for this device, and verified on it.

A kernel backend (``triton``, ``cuda``) is the automatic choice on a GPU only where

1. it was **built for** the device: the ``cuda`` kernels of ``masked_dora._C`` carry SASS for the
   archs in ``_C.cuda_archs`` and PTX of ``_C.cuda_ptx_arch`` (which newer GPUs JIT-compile);
   Triton compiles for the device at run time, our kernels need sm_80 or newer (bf16 ``tl.dot``);
2. it is **verified** there: its op passed the float64 checks on that compute capability in a
   committed GPU run (:data:`VERIFIED`), or the user ran ``masked-dora selftest --enable`` on this
   very device and software (:func:`record_user_verification`; a per-user cache in
   ``$MASKED_DORA_CACHE_DIR``, else ``$XDG_CACHE_HOME/masked_dora``, else ``~/.cache/masked_dora``).

Elsewhere the PyTorch reference runs, and one warning per device says so and how to verify.
A backend forced with ``MASKED_DORA_BACKEND`` / ``use_backend`` still runs where it was built for
the device (the user asked for it), and raises a clear error where it was not.
``MASKED_DORA_TRUST_KERNELS=1`` treats every built kernel as verified (a fleet that verified its
devices elsewhere).

Only called for CUDA tensors, so CUDA is initialised already; nothing here runs at import.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
import threading
import warnings
from typing import Dict, Iterable, Optional, Tuple

import torch

# Committed verification, filled from GPU runs (`masked-dora selftest --json`, run by
# bench/gpu_check.sh): compute capability "sm_XY" -> backend -> ops that passed, and the run.
# sm_90: H100 80GB HBM3, torch 2.11.0+cu130, triton 3.6.0, commit 127c16b: all 35 float64 checks of
# `masked-dora selftest --device cuda` passed (fp32/bf16/fp16; the CUDA compact_linear has no fp32
# kernel), the 314 `cuda` tests passed, compute-sanitizer memcheck found 0 errors. Other GPUs run the
# reference by default until `masked-dora selftest --enable` verifies the kernels on the user's device.
VERIFIED: Dict[str, Dict[str, Tuple[str, ...]]] = {
    "sm_90": {"cuda": ("compact_linear", "dora_linear", "dora_linear_backward", "row_norm"),
              "triton": ("compact_linear", "dora_linear", "dora_linear_backward", "row_norm")},
}
VERIFIED_RUNS: Dict[str, str] = {  # "sm_XY" -> the committed results file it came from
    "sm_90": "bench/results/2026-11-27-h100-run2.md",
}  # "sm_XY" -> the committed results file it came from

KERNEL_BACKENDS = ("triton", "cuda")
TRITON_MIN_CAPABILITY = (8, 0)
TRUST_ENV = "MASKED_DORA_TRUST_KERNELS"
CACHE_ENV = "MASKED_DORA_CACHE_DIR"
CACHE_FILE = "verified_devices.json"

_lock = threading.Lock()
_capabilities: Dict[int, Tuple[int, int]] = {}
_build: dict = {}
_built_for: Dict[tuple, Optional[str]] = {}
_verdicts: Dict[tuple, bool] = {}
_user_cache: Optional[dict] = None
_warned: set = set()
generation = 0  # bumped whenever a verdict may change: the dispatcher's remembered choices key on it


def sm(capability: Tuple[int, int]) -> str:
    return f"sm_{capability[0]}{capability[1]}"


def device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def capability(device: torch.device) -> Tuple[int, int]:
    """The compute capability of a CUDA ``device`` (cached per device index)."""
    idx = device_index(device)
    cap = _capabilities.get(idx)
    if cap is None:
        cap = _capabilities[idx] = tuple(torch.cuda.get_device_capability(idx))
    return cap


def extension_build() -> dict:
    """What ``masked_dora._C`` was built with: ``{"loaded", "with_cuda", "sass", "ptx", "torch"}``."""
    if not _build:
        try:
            from .. import _C
        except Exception:  # noqa: BLE001  (missing or broken extension: nothing built)
            _build.update(loaded=False, with_cuda=False, sass=(), ptx=None, torch=None)
        else:
            ptx = getattr(_C, "cuda_ptx_arch", "") or None
            _build.update(loaded=True, with_cuda=bool(getattr(_C, "with_cuda", 0)),
                          sass=tuple(int(a) for a in getattr(_C, "cuda_archs", "").split(",") if a.strip()),
                          ptx=int(ptx) if ptx else None, torch=getattr(_C, "torch_version", None))
    return dict(_build)


def why_not_built_for(backend: str, device: torch.device) -> Optional[str]:
    """``None`` if ``backend``'s kernels can run on CUDA ``device``, else the reason."""
    if backend not in KERNEL_BACKENDS or device.type != "cuda":
        return None
    cap = capability(device)
    key = (backend, cap)
    if key not in _built_for:
        _built_for[key] = _why_not_built_for(backend, cap)
    return _built_for[key]


def _why_not_built_for(backend: str, cap: Tuple[int, int]) -> Optional[str]:
    arch = cap[0] * 10 + cap[1]
    if backend == "triton":
        if cap < TRITON_MIN_CAPABILITY:
            return (f"backend 'triton': the kernels need compute capability >= 8.0 (bf16 tensor-core dots), "
                    f"this GPU is {sm(cap)}")
        return None
    build = extension_build()
    if arch in build["sass"] or (build["ptx"] is not None and arch >= build["ptx"]):
        return None
    built = ", ".join(f"sm_{a}" for a in build["sass"]) or "no GPU arch"
    ptx = f" (+ PTX compute_{build['ptx']}, JIT for newer GPUs)" if build["ptx"] else ""
    return (f"backend 'cuda': masked_dora._C was built for {built}{ptx}, this GPU is {sm(cap)}; rebuild with "
            f"MASKED_DORA_CUDA_ARCHS={arch} pip install --no-build-isolation .")


# ---------------------------------------------------------------- the per-user verification cache

def cache_path() -> str:
    root = os.environ.get(CACHE_ENV)
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "masked_dora")
    return os.path.join(root, CACHE_FILE)


def fingerprint(device: torch.device) -> str:
    """This device and the software that verified it: any change means verifying again."""
    from .. import __version__

    try:
        import triton
        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = "none"
    idx = device_index(device)
    build = extension_build()
    ext = (f"_C sm{'/'.join(map(str, build['sass']))} ptx{build['ptx']} torch {build['torch']}"
           if build["with_cuda"] else "_C without CUDA")
    return (f"{torch.cuda.get_device_name(idx)} | {sm(capability(device))} | masked_dora {__version__} | "
            f"torch {torch.__version__} | triton {triton_version} | {ext}")


def _load_user_cache() -> dict:
    global _user_cache
    if _user_cache is None:
        try:
            with open(cache_path()) as f:
                data = json.load(f)
            _user_cache = data if isinstance(data.get("devices"), dict) else {"devices": {}}
        except (OSError, ValueError, AttributeError):
            _user_cache = {"devices": {}}
    return _user_cache


def user_verified(device: torch.device) -> Dict[str, Tuple[str, ...]]:
    """backend -> ops verified by ``masked-dora selftest --enable`` for this device and software."""
    entry = _load_user_cache()["devices"].get(fingerprint(device), {})
    return {b: tuple(ops) for b, ops in entry.get("passed", {}).items()}


def record_user_verification(device: torch.device, passed: Dict[str, Iterable[str]]) -> str:
    """Record ``backend -> ops`` as verified for this device and software; returns the cache file."""
    global _user_cache
    path = cache_path()
    with _lock:
        _user_cache = None
        data = _load_user_cache()
        data["devices"][fingerprint(device)] = {
            "passed": {b: sorted(set(ops)) for b, ops in passed.items()},
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".verified-")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)  # atomic: a reader never sees half a file
        _verdicts.clear()
        _bump()
    return path


def _bump() -> None:
    global generation
    generation += 1


def forget() -> None:
    """Drop every in-process cache (tests; after the cache file changed on disk, or
    ``MASKED_DORA_TRUST_KERNELS`` changed at run time)."""
    global _user_cache
    with _lock:
        _user_cache = None
        _verdicts.clear()
        _capabilities.clear()
        _warned.clear()
        _build.clear()
        _built_for.clear()
        _bump()


# ---------------------------------------------------------------- the dispatcher's question

def is_verified(op: str, backend: str, device: torch.device) -> bool:
    """May ``backend`` run ``op`` on CUDA ``device`` by default (see the module docstring)?"""
    if backend not in KERNEL_BACKENDS or device.type != "cuda":
        return True
    key = (op, backend, device_index(device))
    verdict = _verdicts.get(key)
    if verdict is None:
        if os.environ.get(TRUST_ENV, "0") == "1":
            verdict = True
        else:
            committed = VERIFIED.get(sm(capability(device)), {}).get(backend, ())
            verdict = op in committed or op in user_verified(device).get(backend, ())
        _verdicts[key] = verdict
    return verdict


def warn_unverified(op: str, backends: Iterable[str], device: torch.device) -> None:
    """Once per device: the kernels that are built but not verified here, and how to verify them."""
    idx = device_index(device)
    if idx in _warned:
        return
    _warned.add(idx)
    cap = sm(capability(device))
    warnings.warn(
        f"masked_dora: the {'/'.join(sorted(backends))} kernels have not been verified on this GPU "
        f"({torch.cuda.get_device_name(idx)}, {cap}; first seen for op {op!r}), so the PyTorch reference runs "
        f"instead (correct, slower). Verify them on this device with `masked-dora selftest --enable` "
        f"(checks every kernel against float64 and records the passing ones in {cache_path()}), or force one "
        f"with MASKED_DORA_BACKEND=cuda|triton.", RuntimeWarning, stacklevel=4)
