"""Numerical settings the ops and kernels follow: TF32 for float32 matmuls, autocast."""

from __future__ import annotations

import torch


def fp32_matmul_uses_tf32() -> bool:
    """Whether torch lets float32 matmuls use TF32 (float32 matmul precision other than "highest").

    ``torch.get_float32_matmul_precision()`` (and the legacy ``torch.backends.cuda.matmul.allow_tf32``)
    raise "a mix of the legacy and new APIs" (torch 2.11 and 2.13) once TF32 was set through the new
    API (``torch.backends.fp32_precision = "tf32"`` or ``torch.backends.cuda.matmul.fp32_precision``,
    as transformers' ``tf32=True`` does); the new API's own value for cuBLAS matmuls answers then
    (it resolves "none" to the global setting and follows ``set_float32_matmul_precision`` too).
    """
    try:
        return torch.get_float32_matmul_precision() != "highest"
    except RuntimeError:
        return getattr(torch.backends.cuda.matmul, "fp32_precision", "ieee") == "tf32"


def autocast_enabled(device: torch.device) -> bool:
    """``torch.is_autocast_enabled`` for ``device``'s type; ``False`` for types without autocast (meta)."""
    try:
        return torch.is_autocast_enabled(device.type)
    except RuntimeError:  # "unknown device type for autocast"
        return False
