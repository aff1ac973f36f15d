"""Functional form of one masked-DoRA layer (the math is in :mod:`masked_dora.ops.dora_linear`)."""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import _checks
from ..ops.dora_linear import dora_linear
from ..ops.gated_dora_linear import gated_dora_linear
from ..ops.row_norm import DEFAULT_EPS, row_norm


DROPOUT_MODES = ("peft", "adapter")


def masked_dora_linear(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], lora_A: Tensor, lora_B: Tensor,
    scaling: float, magnitude: Tensor, gate_values: Tensor, *,
    norm: Optional[Tensor] = None, weight_sq: Optional[Tensor] = None, eps: Optional[float] = DEFAULT_EPS,
    dropped: Optional[Tensor] = None, dropout_mode: str = "peft", zero_gate_grad: Union[bool, Tensor] = True,
) -> Tensor:
    """``y = (x W0^T + s (x A^T) B^T) * (m z / n) + z b`` with ``n`` the detached row norm.

    ``norm`` skips the row-norm computation when the caller has it cached;
    ``weight_sq`` (``||W0_j||^2``) speeds it up when it has not. ``lora_A`` and
    ``lora_B`` are cast to ``x``'s dtype; ``weight`` must already have it.

    ``dropped``: ``d = lora_dropout(x)`` (training with dropout), used as ``dropout_mode`` says (``c = m z / n``):

    * ``"peft"``, PEFT's DoRA dropout with the gate on every term (z = 1 is PEFT exactly; z = 0 is 0)::

          y = z * (W0 (x - d) + b) + c * (W0 d + s B A d)

      the op on ``d`` plus PEFT's second base GEMM, on ``x - d``;
    * ``"adapter"``, dropout on the adapter branch only: ``y = c * (W0 x + s B A d) + z b``, the op on ``x``
      plus the adapter's correction ``c * s B A (d - x)`` (two rank-r GEMMs, not a second base GEMM).

    ``zero_gate_grad`` (bool, or a bool tensor broadcasting over the channels): whether a gate value of
    exactly 0 can carry a gradient (a straight-through gate). Where it cannot, or ``gate_values`` needs no
    gradient, a channel with ``z = 0`` needs no ``dc`` (``dm = dc z / n = 0``), so the backward recomputes
    no pre-scale output for it (see :mod:`masked_dora.ops.dora_linear`). ``True`` is always correct.
    """
    n = weight.shape[0] if weight.dim() == 2 else -1
    for name, vec in (("magnitude", magnitude), ("gate_values", gate_values), ("norm", norm)):
        _checks.check_vector(name, vec, n)  # a length-1 vector would broadcast silently
    if dropout_mode not in DROPOUT_MODES:
        raise ValueError(f"dropout_mode: expected one of {DROPOUT_MODES}, got {dropout_mode!r}")
    if dropped is not None and (dropped.shape != x.shape or dropped.dtype != x.dtype):
        raise ValueError(f"dropped: expected x's shape {tuple(x.shape)} and dtype {x.dtype}, got "
                         f"{tuple(dropped.shape)} {dropped.dtype}")
    if norm is None:
        norm = row_norm(weight, lora_A.to(weight.dtype), lora_B.to(weight.dtype), scaling, weight_sq, eps)
    if norm.dtype not in (torch.float32, torch.float64):  # the per-channel terms never compute in half precision
        norm = norm.float()
    A, B = lora_A.to(x.dtype), lora_B.to(x.dtype)
    acc = norm.dtype
    z = gate_values.to(acc)
    skip = _skip_rows(z, gate_values.requires_grad, zero_gate_grad)
    if dropped is None:  # the per-channel algebra inside the op: it keeps z and n, not c and z b as well
        return gated_dora_linear(x, weight, A, B, scaling, magnitude, gate_values, norm, bias, skip_rows=skip)
    scale = magnitude.to(acc) * z / norm
    if dropout_mode == "peft":
        rest = F.linear(x - dropped, weight, bias)
        return (dora_linear(dropped, weight, A, B, scaling, scale, skip_rows=skip) + z * rest).to(x.dtype)
    gated_bias = None if bias is None else z * bias.to(acc)
    correction = F.linear(F.linear(dropped - x, A), B)
    return (dora_linear(x, weight, A, B, scaling, scale, gated_bias, skip_rows=skip)
            + scale * scaling * correction).to(x.dtype)


def _skip_rows(z: Tensor, gate_needs_grad: bool, zero_gate_grad: Union[bool, Tensor]) -> Optional[Tensor]:
    """The channels whose ``dc`` nothing needs where ``c = 0``: ``z = 0`` and no gradient reaches ``z`` there."""
    if gate_needs_grad and isinstance(zero_gate_grad, bool) and zero_gate_grad:
        return None
    closed = z.detach() == 0
    if not gate_needs_grad or isinstance(zero_gate_grad, bool):
        return closed
    return closed & ~zero_gate_grad.to(closed.device)
