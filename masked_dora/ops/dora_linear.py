r"""The masked-DoRA linear op: schema, reference implementation, autograd.

For one layer with frozen ``W0`` (N x K), LoRA ``A`` (r x K), ``B`` (N x r),
scaling ``s``, magnitude ``m``, gate values ``z`` in [0, 1] and bias ``b``::

    n_j = max(||W0_j + s (BA)_j||_2, eps)     # row norm, detached (DoRA section 4.3)
    c   = m * z / n                           # per-output-channel scale
    P   = x W0^T + s (x A^T) B^T              # pre-scale output, M x N
    y   = P * c + z * b                       # pruned channel (z_j = 0) -> exactly 0

The core op ``masked_dora::dora_linear(x, W0, A, B, s, c, zb)`` computes ``y``
from the scale vector ``c`` and the gated bias ``zb``; the cheap per-channel
algebra (``c = m z / n``, ``zb = z b``) stays in PyTorch so that autograd carries
``dc`` and ``d(zb)`` to ``m``, ``z`` (and through the gate to the mask logits)::

    dP = dy * c
    dx = dP W0 + s (dP B) A
    dB = s dP^T (x A^T)
    dA = s (dP B)^T x
    dc_j = sum_t dy[t, j] P[t, j]            # -> dm = dc z / n, dz = dc m / n
    d(zb)_j = sum_t dy[t, j]                 # -> dz += b * sum_t dy

No gradient of W0 is ever formed: ``weight`` must be frozen. Forward keeps
``x``, ``x A^T`` (M x r) and ``P`` (M x N), all in the compute dtype, for the
backward. The reference below accumulates in float32 (float64 for float64
inputs); it is the definition of right that every kernel backend is tested
against.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _checks, _registry
from ._eager import eager_function, plain_eager

OP = "dora_linear"
OP_BACKWARD = "dora_linear_backward"


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types and float32, float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- reference

def dora_linear_forward_reference(
    x: Tensor, weight: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float,
    scale: Tensor, bias: Optional[Tensor],
) -> Tuple[Tensor, Tensor, Tensor]:
    """Returns ``(y, P, x A^T)`` for a 2-D ``x``; see the module docstring."""
    acc = accumulate_dtype(x.dtype)
    xa = x @ lora_A.t()
    pre_scale = (x @ weight.t()).addmm_(xa, lora_B.t(), alpha=scaling)
    scale = scale.to(acc)
    if bias is None:
        y = pre_scale.to(acc) * scale
    else:  # one fused pass: bias + P * c
        y = torch.addcmul(bias.to(acc), pre_scale.to(acc), scale)
    return y.to(x.dtype), pre_scale, xa


def dora_linear_backward_reference(
    grad_y: Tensor, x: Tensor, weight: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float,
    scale: Tensor, pre_scale: Tensor, xa: Tensor,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns ``(dx, dA, dB, dc, d(zb))``; see the module docstring."""
    acc = accumulate_dtype(x.dtype)
    g = grad_y.to(acc)
    grad_pre = (g * scale.to(acc)).to(x.dtype)
    grad_pre_b = grad_pre @ lora_B
    grad_x = torch.addmm(grad_pre @ weight, grad_pre_b, lora_A, alpha=scaling)
    grad_B = (grad_pre.t() @ xa).mul_(scaling)
    grad_A = (grad_pre_b.t() @ x).mul_(scaling)
    grad_scale = (g * pre_scale.to(acc)).sum(0)
    grad_bias = g.sum(0)
    return (grad_x, grad_A.to(lora_A.dtype), grad_B.to(lora_B.dtype),
            grad_scale.to(scale.dtype), grad_bias)


_registry.register(OP, "torch", dora_linear_forward_reference, priority=0)
_registry.register(OP_BACKWARD, "torch", dora_linear_backward_reference, priority=0)
# C++ CPU (csrc/cpu/dora_linear.cpp) and CUDA (csrc/cuda/dora_kernels.cu, ops_cuda.cpp): BLAS/cuBLAS
# GEMMs + single-pass epilogue (forward) and prologue (backward: dP, dc, dbias in one pass)
_COMPILED_DTYPES = {"cpp": (torch.float32, torch.float64, torch.bfloat16, torch.float16),
                    "cuda": (torch.float32, torch.float16, torch.bfloat16)}
_registry.define_compiled_kernel(
    OP, "(Tensor x, Tensor weight, Tensor lora_A, Tensor lora_B, float scaling, Tensor scale, Tensor? bias)"
        " -> (Tensor, Tensor, Tensor)", dtypes=_COMPILED_DTYPES)
_registry.define_compiled_kernel(
    OP_BACKWARD, "(Tensor grad_y, Tensor x, Tensor weight, Tensor lora_A, Tensor lora_B, float scaling, "
                 "Tensor scale, Tensor pre_scale, Tensor xa) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    dtypes=_COMPILED_DTYPES)


# ---------------------------------------------------------------- torch.library ops

def _forward(x: Tensor, weight: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float, scale: Tensor,
             bias: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """The forward op's body: the dispatcher's choice of backend (custom op and eager path alike)."""
    return _registry.dispatch(OP, x.device, x.dtype, x, weight, lora_A, lora_B, scaling, scale, bias)


def _backward_body(grad_y: Tensor, x: Tensor, weight: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float,
                   scale: Tensor, pre_scale: Tensor, xa: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The backward op's body (custom op and eager path alike)."""
    return _registry.dispatch(OP_BACKWARD, x.device, x.dtype, grad_y, x, weight, lora_A, lora_B,
                              scaling, scale, pre_scale, xa)


_dora_linear_op = torch.library.custom_op("masked_dora::dora_linear", _forward, mutates_args=())


@_dora_linear_op.register_fake
def _(x, weight, lora_A, lora_B, scaling, scale, bias):
    m, n, r = x.shape[0], weight.shape[0], lora_A.shape[0]
    return x.new_empty(m, n), x.new_empty(m, n), x.new_empty(m, r)


_dora_linear_backward_op = torch.library.custom_op("masked_dora::dora_linear_backward", _backward_body,
                                                   mutates_args=())


@_dora_linear_backward_op.register_fake
def _(grad_y, x, weight, lora_A, lora_B, scaling, scale, pre_scale, xa):
    acc = accumulate_dtype(x.dtype)
    n = weight.shape[0]
    return (x.new_empty(x.shape), lora_A.new_empty(lora_A.shape), lora_B.new_empty(lora_B.shape),
            scale.new_empty(n), x.new_empty(n, dtype=acc))


def _setup_context(ctx, inputs, output):
    x, weight, lora_A, lora_B, scaling, scale, bias = inputs
    _, pre_scale, xa = output
    ctx.mark_non_differentiable(pre_scale, xa)
    ctx.set_materialize_grads(False)  # no M x N zero-filled gradient for the unused P output
    ctx.save_for_backward(x, weight, lora_A, lora_B, scale, pre_scale, xa)
    ctx.scaling = scaling
    ctx.bias_dtype = None if bias is None else bias.dtype
    # Autograd runs a CUDA backward on its own device thread, where the thread-local
    # use_backend() of the forward is not set: carry the forward's forced backend over.
    ctx.forced_backend = _registry.forced_backend()


def _backward(ctx, grad_y, _grad_pre_scale, _grad_xa):
    x, weight, lora_A, lora_B, scale, pre_scale, xa = ctx.saved_tensors
    grad_y = grad_y.contiguous()
    args = (grad_y, x, weight, lora_A, lora_B, ctx.scaling, scale, pre_scale, xa)
    with _registry.use_backend(_registry.forced_backend() or ctx.forced_backend):
        if plain_eager(grad_y, x, weight, lora_A, lora_B, scale, pre_scale, xa):
            grad_x, grad_A, grad_B, grad_scale, grad_bias = _backward_body(*args)
        else:
            grad_x, grad_A, grad_B, grad_scale, grad_bias = torch.ops.masked_dora.dora_linear_backward(*args)
    needs = ctx.needs_input_grad
    return (
        grad_x if needs[0] else None,
        None,  # the frozen base weight never gets a gradient
        grad_A if needs[2] else None,
        grad_B if needs[3] else None,
        None,
        grad_scale if needs[5] else None,
        grad_bias.to(ctx.bias_dtype) if ctx.bias_dtype is not None and needs[6] else None,
    )


_EagerDoRALinear = eager_function("_EagerDoRALinear", _forward, _setup_context, _backward)

_dora_linear_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- public entry point

def check_dora_linear_args(x: Tensor, weight: Tensor, lora_A: Tensor, lora_B: Tensor, scale: Tensor,
                           bias: Optional[Tensor]) -> None:
    """Shapes, dtypes and devices of the op's arguments (``x``: (..., K)); clear errors naming each."""
    for name, t in (("x", x), ("weight", weight), ("lora_A", lora_A), ("lora_B", lora_B)):
        _checks.check_floating(name, t)
    _checks.check_ndim("weight", weight, 2)
    _checks.check_ndim("lora_A", lora_A, 2)
    _checks.check_ndim("lora_B", lora_B, 2)
    n, k = weight.shape
    r = lora_A.shape[0]
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x: expected last dimension in_features={k}, got shape {tuple(x.shape)}")
    _checks.check_shape("lora_A", lora_A, (r, k))
    _checks.check_shape("lora_B", lora_B, (n, r))
    _checks.check_vector("scale", scale, n)
    _checks.check_vector("bias", bias, n)
    _checks.check_same_device([("x", x), ("weight", weight), ("lora_A", lora_A), ("lora_B", lora_B),
                               ("scale", scale), ("bias", bias)])
    _checks.check_same_dtype([("x", x), ("weight", weight), ("lora_A", lora_A), ("lora_B", lora_B)])


def dora_linear(
    x: Tensor, weight: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float,
    scale: Tensor, bias: Optional[Tensor] = None,
) -> Tensor:
    """``y = (x W0^T + s (x A^T) B^T) * scale + bias`` for ``x`` of shape (..., K).

    ``weight`` (N x K, frozen), ``lora_A`` (r x K) and ``lora_B`` (N x r) share
    ``x``'s dtype; ``scale`` and ``bias`` are length-N vectors of any float dtype
    (the epilogue runs in float32). Differentiable in ``x``, ``lora_A``,
    ``lora_B``, ``scale`` and ``bias``.
    """
    check_dora_linear_args(x, weight, lora_A, lora_B, scale, bias)
    n, k = weight.shape
    if weight.requires_grad and torch.is_grad_enabled():
        raise ValueError("weight: the base weight must be frozen (requires_grad=False); "
                         "masked DoRA never forms a gradient for it")
    lead = x.shape[:-1]
    m = 1
    for d in lead:
        m *= d
    # reshape(m, k), not (-1, k): with k = 0 (or an empty batch) -1 cannot be inferred
    args = (x.reshape(m, k), weight, lora_A, lora_B, float(scaling), scale, bias)
    if plain_eager(x, weight, lora_A, lora_B, scale, bias):
        y, _, _ = _EagerDoRALinear.apply(*args)
    else:
        y, _, _ = torch.ops.masked_dora.dora_linear(*args)
    return y.reshape(*lead, n)
