"""Loading the optional kernel backends without ever breaking the import.

* ``masked_dora._C``: the compiled extension (C++ CPU ops; CUDA ops when built
  with CUDA). Its ``TORCH_LIBRARY_IMPL`` registrations attach to the schemas the
  Python op layer defines.
* ``masked_dora.kernels``: the Triton kernels (need the ``triton`` package).

Each loader records why it failed instead of raising; :func:`status` reports
it. Nothing here initialises CUDA.
"""

from __future__ import annotations

import importlib
from typing import Dict

_status: Dict[str, str] = {}


def _try(name: str, module: str) -> None:
    try:
        importlib.import_module(module)
        _status[name] = "loaded"
    except Exception as exc:  # an optional backend must never break the import
        _status[name] = f"unavailable: {type(exc).__name__}: {exc}"


def _describe_extension() -> str:
    """What the loaded ``masked_dora._C`` was built with (its module attributes)."""
    from . import _C

    archs = [a for a in _C.cuda_archs.split(",") if a]
    kind = (f"C++ CPU + CUDA (SASS {', '.join('sm_' + a for a in archs)}; PTX compute_{_C.cuda_ptx_arch})"
            if _C.with_cuda else "C++ CPU only (no CUDA kernels)")
    built = f"{kind}, built against torch {_C.torch_version}"
    import torch

    if _C.torch_version != torch.__version__:
        built += f" -- running torch {torch.__version__}: rebuild it (pip install --no-build-isolation .)"
    return built


def load_kernel_backends() -> None:
    if _status:
        return
    _try("extension", "masked_dora._C")
    if _status["extension"] == "loaded":
        _status["extension_build"] = _describe_extension()
    _try("triton", "masked_dora.kernels")


def status() -> Dict[str, str]:
    """Each optional backend and whether it loaded (or why not)."""
    load_kernel_backends()
    return dict(_status)


def extension_loaded() -> bool:
    return status().get("extension") == "loaded"
