"""Functional form of one masked-DoRA layer (the math is in :mod:`masked_dora.ops.dora_linear`)."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..ops import _checks
from ..ops.dora_linear import dora_linear
from ..ops.row_norm import DEFAULT_EPS, row_norm


def masked_dora_linear(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], lora_A: Tensor, lora_B: Tensor,
    scaling: float, magnitude: Tensor, gate_values: Tensor, *,
    norm: Optional[Tensor] = None, weight_sq: Optional[Tensor] = None, eps: Optional[float] = DEFAULT_EPS,
) -> Tensor:
    """``y = (x W0^T + s (x A^T) B^T) * (m z / n) + z b`` with ``n`` the detached row norm.

    ``norm`` skips the row-norm computation when the caller has it cached;
    ``weight_sq`` (``||W0_j||^2``) speeds it up when it has not. ``lora_A`` and
    ``lora_B`` are cast to ``x``'s dtype; ``weight`` must already have it.
    """
    n = weight.shape[0] if weight.dim() == 2 else -1
    for name, vec in (("magnitude", magnitude), ("gate_values", gate_values), ("norm", norm)):
        _checks.check_vector(name, vec, n)  # a length-1 vector would broadcast silently
    if norm is None:
        norm = row_norm(weight, lora_A.to(weight.dtype), lora_B.to(weight.dtype), scaling, weight_sq, eps)
    acc = norm.dtype
    z = gate_values.to(acc)
    scale = magnitude.to(acc) * z / norm
    gated_bias = None if bias is None else z * bias.to(acc)
    return dora_linear(x, weight, lora_A.to(x.dtype), lora_B.to(x.dtype), scaling, scale, gated_bias)
