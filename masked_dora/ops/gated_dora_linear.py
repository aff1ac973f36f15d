r"""``masked_dora::gated_dora_linear``: the masked-DoRA op taking the per-channel terms themselves.

Same math as :mod:`.dora_linear` (its docstring has it, and what the backward keeps), with the per-channel
algebra inside the op::

    c = m z / n,   zb = z b                  # computed in the forward, recomputed in the backward
    y = dora_linear(x, W0, A, B, s, c, zb)
    dm = dc z / n,   dz = dc m / n + b d(zb),   db = z d(zb),   dn = -dc c / n

``dora_linear(..., c, zb)`` composed with autograd's own ``c = m z / n`` keeps four length-N vectors for the
backward (``c`` and ``zb`` in the op; ``z`` and ``n`` in autograd's product and quotient); this op keeps two,
``z`` and ``n`` (``m`` and ``b`` are parameters, alive anyway), and recomputes ``c`` and ``zb`` from them
with the forward's own operations: the values, and so the gradients, are the composition's to the bit
(issue 16: what a layer keeps besides ``x A^T`` comes to fewer than ``M r`` elements). The kernels are
``dora_linear``'s, through its dispatcher: this op registers none of its own.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _checks
from ._eager import eager_function, plain_eager
from .dora_linear import (_forward, backward_from_saved, check_call, check_dora_linear_args, keep_for_backward,
                          release_kept, token_rows)

OP = "gated_dora_linear"


def channel_terms(magnitude: Tensor, gate: Tensor, norm: Tensor,
                  bias: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
    """``(c, zb) = (m z / n, z b)`` in ``norm``'s dtype (float32, float64 for float64), exactly as the op
    computes them: the reference of the per-channel algebra."""
    acc = norm.dtype
    z = _as(gate, acc)
    scale = _as(magnitude, acc) * z / norm
    return scale, None if bias is None else z * _as(bias, acc)


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)`` without the alias ``to`` returns for a matching dtype (an op's body may not return, or
    hand autograd, an alias of its input: opcheck's schema check)."""
    return t if t.dtype == dtype else t.to(dtype)


def _gated_forward(x: Tensor, weight: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float, magnitude: Tensor,
                   gate: Tensor, norm: Tensor, bias: Optional[Tensor],
                   skip_rows: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """The op's body: ``(y, P, x A^T)`` through ``dora_linear``'s dispatcher (``skip_rows``: read by the backward
    only, as in ``dora_linear``)."""
    scale, gated_bias = channel_terms(magnitude, gate, norm, bias)
    return _forward(x, weight, lora_A, lora_B, scaling, scale, gated_bias)


_op = torch.library.custom_op("masked_dora::gated_dora_linear", _gated_forward, mutates_args=())


@_op.register_fake
def _(x, weight, lora_A, lora_B, scaling, magnitude, gate, norm, bias, skip_rows=None):
    m, n, r = x.shape[0], weight.shape[0], lora_A.shape[0]
    return x.new_empty(m, n), x.new_empty(m, n), x.new_empty(m, r)


def _setup_context(ctx, inputs, output):
    x, weight, lora_A, lora_B, scaling, magnitude, gate, norm, bias, skip_rows = inputs
    y, pre_scale, xa = output
    ctx.mark_non_differentiable(pre_scale, xa)
    with torch.no_grad():
        scale, gated_bias = channel_terms(magnitude, gate, norm, bias)
    need_scale = magnitude.requires_grad or gate.requires_grad or norm.requires_grad
    readable, redo, kept_pre_scale = keep_for_backward(ctx, x, scale, gated_bias, skip_rows, y, pre_scale,
                                                       need_scale)
    ctx.save_for_backward(x, weight, lora_A, lora_B, magnitude, gate, norm, bias, xa, readable, redo,
                          kept_pre_scale)
    ctx.scaling = scaling


def _backward(ctx, grad_y, _grad_pre_scale, _grad_xa):
    x, weight, lora_A, lora_B, magnitude, gate, norm, bias, xa, readable, redo, kept_pre_scale = ctx.saved_tensors
    needs = ctx.needs_input_grad
    if grad_y is None:  # only P or x A^T was used downstream: they are non-differentiable
        release_kept(ctx)
        return (None,) * 10
    with torch.no_grad():
        scale, gated_bias = channel_terms(magnitude, gate, norm, bias)
    need_scale = ctx.need_scale and any(needs[5:8])
    grad_x, grad_A, grad_B, grad_scale, grad_bias = backward_from_saved(
        ctx, grad_y, x, weight, lora_A, lora_B, scale, gated_bias, xa, readable, redo, kept_pre_scale, need_scale)
    # autograd's formulas for c = (m z) / n and zb = z b, operation for operation (bit-equal gradients)
    acc = norm.dtype
    z, mag = _as(gate, acc), _as(magnitude, acc)
    per_norm = grad_scale / norm if need_scale else None
    grad_mag = _as(per_norm * z, magnitude.dtype) if needs[5] else None
    grad_gate = None
    if needs[6]:
        grad_gate = per_norm * mag
        if bias is not None:
            grad_gate = grad_gate + grad_bias * _as(bias, acc)
        grad_gate = _as(grad_gate, gate.dtype)
    grad_norm = -grad_scale * (scale / norm) if needs[7] else None  # ((m z) / n) / n
    grad_b = _as(grad_bias * z, bias.dtype) if bias is not None and needs[8] else None
    return (grad_x if needs[0] else None, None, grad_A if needs[2] else None, grad_B if needs[3] else None, None,
            grad_mag, grad_gate, grad_norm, grad_b, None)


_EagerGatedDoRALinear = eager_function("_EagerGatedDoRALinear", _gated_forward, _setup_context, _backward)

_op.register_autograd(_backward, setup_context=_setup_context)


def gated_dora_linear(
    x: Tensor, weight: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float, magnitude: Tensor, gate: Tensor,
    norm: Tensor, bias: Optional[Tensor] = None, *, skip_rows: Optional[Tensor] = None,
) -> Tensor:
    """``y = (x W0^T + s (x A^T) B^T) * (m z / n) + z b`` for ``x`` of shape (..., K) (see the module docstring).

    ``weight`` (N x K, frozen), ``lora_A`` (r x K) and ``lora_B`` (N x r) share ``x``'s dtype; ``magnitude``,
    ``gate``, ``norm`` and ``bias`` are length-N vectors (``norm``'s dtype, float32 or float64, is the one the
    per-channel terms are computed in). Differentiable in ``x``, ``lora_A``, ``lora_B``, ``magnitude``,
    ``gate``, ``norm`` and ``bias``. ``skip_rows`` as in :func:`masked_dora.ops.dora_linear`: rows whose
    ``c`` gradient is not needed where ``c`` is 0.
    """
    for name, vec in (("magnitude", magnitude), ("gate", gate), ("norm", norm)):
        _checks.check_floating(name, vec)
    n = weight.shape[0] if isinstance(weight, Tensor) and weight.dim() == 2 else -1
    for name, vec in (("magnitude", magnitude), ("gate", gate), ("norm", norm)):
        _checks.check_vector(name, vec, n)  # named here: check_dora_linear_args calls its vector "scale"
    if isinstance(x, Tensor):
        _checks.check_same_device([("x", x), ("norm", norm), ("magnitude", magnitude), ("gate", gate)])
    check_dora_linear_args(x, weight, lora_A, lora_B, norm, bias)
    if norm.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"norm: expected float32 or float64 (the per-channel terms' dtype), got {norm.dtype}")
    check_call(weight, skip_rows, ("norm", norm))
    rows, lead = token_rows(x)
    args = (rows, weight, lora_A, lora_B, float(scaling), magnitude, gate, norm, bias, skip_rows)
    if plain_eager(x, weight, lora_A, lora_B, magnitude, gate, norm, bias, skip_rows):
        if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                for t in (x, lora_A, lora_B, magnitude, gate, norm, bias))):
            return _gated_forward(*args)[0].reshape(*lead, n)  # no graph: no backward bookkeeping
        y, _, _ = _EagerGatedDoRALinear.apply(*args)
    else:
        y, _, _ = torch.ops.masked_dora.gated_dora_linear(*args)
    return y.reshape(*lead, n)
