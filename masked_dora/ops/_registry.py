"""One dispatcher for every op: which backend runs it.

Each op (``dora_linear``, ``row_norm``, ...) has a pure-PyTorch reference
implementation registered under the backend name ``"torch"``; Triton, C++ and
CUDA kernels register themselves under ``"triton"``, ``"cpp"`` and ``"cuda"``
when they can be imported. A backend entry carries a ``supports(device, dtype)``
predicate and a priority; the dispatcher picks the highest-priority backend that
supports the inputs.

``MASKED_DORA_BACKEND=torch|triton|cpp|cuda`` (read at every dispatch, so tests
and users can change it at run time) or the :func:`use_backend` context manager
forces one backend:

* if the forced backend implements the op but cannot run these inputs (wrong
  device, dtype, extension not built), a ``RuntimeError`` names the op, the
  backend and the reason;
* if the forced backend has no kernel for this op at all, the automatic choice
  is used (a backend need not implement every op), and a warning says so once.

On a GPU the automatic choice takes a kernel backend only where it was built for the device and
is verified there (see :mod:`masked_dora.ops._verified`); otherwise the ``torch`` reference runs.
Nothing here initialises CUDA: ``supports`` predicates look at ``device.type`` only, and the
device capability is read only for CUDA tensors.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Union

import torch

from . import _verified
from .precision import autocast_enabled

BACKENDS = ("torch", "triton", "cpp", "cuda")
ENV_VAR = "MASKED_DORA_BACKEND"


@dataclass(frozen=True)
class BackendImpl:
    """One backend's implementation of one op."""

    name: str
    fn: Callable
    supports: Callable[[torch.device, torch.dtype], bool]
    priority: Union[int, Callable[[torch.device], int]]
    why_not: Callable[[torch.device, torch.dtype], str]

    def priority_on(self, device: torch.device) -> int:
        return self.priority(device) if callable(self.priority) else self.priority


_REGISTRY: Dict[str, Dict[str, BackendImpl]] = {}
_local = threading.local()
_warned: set = set()
# select()'s answers, keyed on everything they depend on (see _selection_key); a few us a call otherwise
_selected: Dict[tuple, BackendImpl] = {}


def _always(device: torch.device, dtype: torch.dtype) -> bool:
    return True


def register(
    op: str,
    backend: str,
    fn: Callable,
    *,
    supports: Callable[[torch.device, torch.dtype], bool] = _always,
    priority: Union[int, Callable[[torch.device], int]] = 0,
    why_not: Optional[Callable[[torch.device, torch.dtype], str]] = None,
) -> None:
    """Register ``fn`` as ``backend``'s implementation of ``op``.

    ``priority`` (an int, or a function of the device) ranks the automatic
    choice; the reference ``torch`` backend has priority 0, so a backend that
    should only run when forced on some device (Triton under the interpreter
    on a CPU) returns a negative priority there.

    ``why_not(device, dtype)`` returns the human-readable reason ``supports``
    said no; it defaults to naming the device and dtype.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if why_not is None:
        def why_not(device, dtype, _b=backend):
            return f"backend {_b!r} does not support device={device.type} dtype={dtype}"
    _REGISTRY.setdefault(op, {})[backend] = BackendImpl(backend, fn, supports, priority, why_not)
    _selected.clear()


def registered(op: str) -> Dict[str, BackendImpl]:
    """The backends registered for ``op`` (name -> entry)."""
    if op not in _REGISTRY:
        raise KeyError(f"op: no op named {op!r}; known ops: {sorted(_REGISTRY)}")
    return dict(_REGISTRY[op])


def forced_backend() -> Optional[str]:
    """The backend forced by :func:`use_backend` or ``MASKED_DORA_BACKEND``, if any."""
    forced = getattr(_local, "forced", None)
    if forced is None:
        forced = os.environ.get(ENV_VAR, "").strip().lower() or None
    if forced is not None and forced not in BACKENDS:
        raise ValueError(f"{ENV_VAR}: expected one of {BACKENDS}, got {forced!r}")
    return forced


@contextlib.contextmanager
def use_backend(backend: Optional[str]) -> Iterator[None]:
    """Force ``backend`` for every op dispatched inside the block (``None``: automatic)."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS} or None, got {backend!r}")
    previous = getattr(_local, "forced", None)
    _local.forced = backend
    try:
        yield
    finally:
        _local.forced = previous


def unavailable(impl: BackendImpl, device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """Why ``impl`` cannot run inputs on ``device`` in ``dtype`` (``None``: it can).

    Device type and dtype (``impl.supports``), and on a GPU whether the kernels were built for
    its compute capability (:mod:`._verified`).
    """
    if not impl.supports(device, dtype):
        return impl.why_not(device, dtype)
    if device.type == "cuda":
        return _verified.why_not_built_for(impl.name, device)
    return None


def _selection_key(op: str, device: torch.device, dtype: torch.dtype, forced: Optional[str]) -> tuple:
    """What a selection depends on: the op's registered entries (by identity: re-registering or
    patching one changes the key), the device (a CUDA device by index), the dtype, the forced
    backend and the verification state (:data:`._verified.generation`, bumped by every change)."""
    index = _verified.device_index(device) if device.type == "cuda" else device.index
    entries = _REGISTRY.get(op, {})
    return (op, device.type, index, dtype, forced, _verified.generation,
            tuple((name, id(impl)) for name, impl in entries.items()))


def select(op: str, device: torch.device, dtype: torch.dtype) -> BackendImpl:
    """The implementation of ``op`` that runs inputs on ``device`` in ``dtype``.

    Automatic choice: the highest priority among the backends that can run the input and, on a
    GPU, are verified there (:mod:`._verified`); a forced backend runs wherever it can. Answers are
    remembered per :func:`_selection_key`; errors are not (they are raised again every call).
    """
    forced = forced_backend()
    key = _selection_key(op, device, dtype, forced)
    impl = _selected.get(key)
    if impl is None:
        impl = _selected[key] = _select(op, device, dtype, forced)
    return impl


def _select(op: str, device: torch.device, dtype: torch.dtype, forced: Optional[str]) -> BackendImpl:
    impls = registered(op)
    if forced is not None:
        impl = impls.get(forced)
        if impl is not None:
            reason = unavailable(impl, device, dtype)
            if reason is not None:
                raise RuntimeError(f"{ENV_VAR}={forced}: op {op!r} cannot run on this input: {reason}")
            return impl
        key = (op, forced)
        if key not in _warned:
            _warned.add(key)
            warnings.warn(
                f"{ENV_VAR}={forced}: backend {forced!r} has no kernel for op {op!r}; "
                f"using the automatic choice among {sorted(impls)}",
                stacklevel=3,
            )
    reasons = {name: unavailable(i, device, dtype) for name, i in impls.items()}
    candidates = [i for name, i in impls.items() if reasons[name] is None]
    if not candidates:
        raise RuntimeError(f"op {op!r}: no backend runs device={device.type} dtype={dtype}: "
                           + "; ".join(r for r in reasons.values() if r))
    if device.type == "cuda":
        unverified = [i.name for i in candidates if not _verified.is_verified(op, i.name, device)]
        if unverified:
            _verified.warn_unverified(op, unverified, device)
            candidates = [i for i in candidates if i.name not in unverified]
    return max(candidates, key=lambda i: i.priority_on(device))


def no_autocast(device: torch.device):
    """Op bodies run with autocast off: a kernel computes in the dtypes it is given (its caller chose them).

    Autocast does not stop at a custom op: without this, the reference's and the Triton launcher's own
    matmuls (the row norm's ``W0 A^T`` and Gram) ran in bf16/fp16 inside ``torch.autocast``.
    """
    if autocast_enabled(device):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def dispatch(op: str, device: torch.device, dtype: torch.dtype, *args, **kwargs):
    """Run ``op`` with the backend :func:`select` picks (autocast off, see :func:`no_autocast`)."""
    impl = select(op, device, dtype)
    with no_autocast(device):
        return impl.fn(*args, **kwargs)


# ---------------------------------------------------------------- compiled (C++/CUDA) kernels

_DISPATCH_KEYS = {"cpp": ("cpu", "CPU"), "cuda": ("cuda", "CUDA")}


def kernel_op_name(op: str) -> str:
    return f"{op}_kernel"


def define_compiled_kernel(op: str, schema: str, *, priorities: Optional[Dict[str, int]] = None,
                           dtypes: Optional[Dict[str, tuple]] = None,
                           backends: tuple = ("cpp", "cuda")) -> None:
    """Define the schema that the C++/CUDA extension implements for ``op``, and route to it.

    The schema is written once, here in Python: ``masked_dora::<op>_kernel``
    with ``schema`` (e.g. ``"(Tensor x, Tensor w) -> Tensor"``). The extension
    only registers implementations, ``TORCH_LIBRARY_IMPL(masked_dora, CPU, m)``
    and ``TORCH_LIBRARY_IMPL(masked_dora, CUDA, m)`` with
    ``m.impl("<op>_kernel", ...)``. The ``cpp`` and ``cuda`` backends of ``op``
    then run that kernel when the extension has registered one for the input's
    device and the dtype is in ``dtypes[backend]`` (default: any), and say why
    not otherwise. ``backends`` lists which of ``cpp``/``cuda`` the extension
    implements for this op at all (a backend with no kernel is not registered,
    so forcing it falls back to the automatic choice).
    """
    dtypes = dtypes or {}
    name = kernel_op_name(op)
    torch.library.define(f"masked_dora::{name}", schema)
    priorities = {"cpp": 10, "cuda": 30, **(priorities or {})}
    qualname = f"masked_dora::{name}"

    for backend in backends:
        device_type, key = _DISPATCH_KEYS[backend]
        allowed = dtypes.get(backend)

        def supports(device, dtype, _type=device_type, _key=key, _allowed=allowed):
            return (device.type == _type and (_allowed is None or dtype in _allowed)
                    and torch._C._dispatch_has_kernel_for_dispatch_key(qualname, _key))

        def why_not(device, dtype, _type=device_type, _key=key, _b=backend, _allowed=allowed):
            if device.type != _type:
                return f"backend {_b!r} runs {_type} tensors only, got device={device.type}"
            if _allowed is not None and dtype not in _allowed:
                return f"backend {_b!r} kernel for {qualname} supports dtypes {_allowed}, got {dtype}"
            return (f"backend {_b!r}: the compiled extension masked_dora._C has no {_key} kernel for "
                    f"{qualname} (not built with it; see masked_dora.backend_status())")

        def run(*args, _name=name):
            return getattr(torch.ops.masked_dora, _name)(*args)

        register(op, backend, run, supports=supports, priority=priorities[backend], why_not=why_not)
