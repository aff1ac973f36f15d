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


def load_kernel_backends() -> None:
    if _status:
        return
    _try("extension", "masked_dora._C")
    _try("triton", "masked_dora.kernels")


def status() -> Dict[str, str]:
    """Each optional backend and whether it loaded (or why not)."""
    load_kernel_backends()
    return dict(_status)


def extension_loaded() -> bool:
    return status().get("extension") == "loaded"
