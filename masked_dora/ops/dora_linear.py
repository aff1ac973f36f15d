r"""The masked-DoRA linear op: schema, reference implementation, autograd.

For one layer with frozen ``W0`` (N x K), LoRA ``A`` (r x K), ``B`` (N x r),
scaling ``s``, magnitude ``m``, gate values ``z`` in [0, 1] and bias ``b``::

    n_j = max(||W0_j + s (BA)_j||_2, eps)     # row norm, detached (DoRA section 4.3)
    c   = m * z / n                           # per-output-channel scale
    P   = x W0^T + s (x A^T) B^T              # pre-scale output, M x N
    y   = P * c + z * b                       # pruned channel (z_j = 0) -> exactly 0

The core op ``masked_dora::dora_linear(x, W0, A, B, s, c, zb)`` computes ``y``
from the scale vector ``c`` and the gated bias ``zb``; its gradients ``dc`` and
``d(zb)`` go to whoever computed them. The layer uses :mod:`.gated_dora_linear`,
the same op with the per-channel algebra (``c = m z / n``, ``zb = z b``) inside,
which carries them on to ``m``, ``z`` (and through the gate to the mask logits)::

    dP = dy * c
    dx = dP W0 + s (dP B) A
    dB = s dP^T (x A^T)
    dA = s (dP B)^T x
    dc_j = sum_t dy[t, j] P[t, j]            # -> dm = dc z / n, dz = dc m / n
    d(zb)_j = sum_t dy[t, j]                 # -> dz += b * sum_t dy

No gradient of W0 is ever formed: ``weight`` must be frozen.

**What the forward keeps for the backward** (issue 16): ``x``, ``x A^T`` (M x r) and, where ``c``
needs a gradient, the op's own output ``y``; never the M x N pre-scale output ``P``. ``dc`` is read
off ``y``::

    dc_j = (sum_t dy[t, j] y[t, j] - zb_j sum_t dy[t, j]) / c_j   where |c_j| >= tau, |c_j| rms(P_j) >= tiny
                                                                    and |zb_j| <= |c_j| rms(P_j)
    dc_j = sum_t dy[t, j] (x W0_j^T + s (x A^T) B_j^T)[t]          elsewhere (P of those rows only)

``tau = sqrt(tiny)`` of the compute dtype (about 1e-19 for float32 and bfloat16, 7.8e-3 for
float16); ``rms(P)`` is taken over 64 evenly spaced tokens of ``P`` in the forward, which then lets
``P`` go. Where these hold, the channel's typical output ``|c| rms(P)`` is a normal number of the
compute dtype and at least the bias, so ``y``'s rounding (``eps (|c P| + |zb|)``) makes an error of
``P`` about twice what storing ``P`` in the compute dtype would, relative to the channel's typical
``|P|``. Elsewhere ``P`` is recomputed with one GEMM over those rows: a pruned channel (``c = 0``), a
zero magnitude, a bias that drowns the channel's output (an exactly-zero row of ``W0 + s B A``, whose
row norm sits at its floor), an output in float16's subnormal range. ``skip_rows`` (bool, N) names rows
whose ``dc`` the caller does not need where ``c`` is 0 (a gate value that is exactly 0 and carries no
gradient: ``dm = dc z / n = 0``): those with ``|c| < tau`` are not recomputed and get ``dc = 0``; its
other rows are read or recomputed as usual. The rows
to recompute are found in the forward; on a GPU they are copied to the host there, so the backward
needs no device sync to read them.

Under ``torch.compile`` and while saved-tensor hooks are active (activation checkpointing, offloading)
the op keeps ``P`` instead of ``y``, as before issue 16 (:mod:`._saved_output` says why; under
non-reentrant checkpointing and offloading that costs no more memory than ``y``).

``y`` is the tensor the caller gets, and the model may change it in place before the backward
(Falcon: ``mlp_output += attention_output``): :mod:`._saved_output` notices (version counter) and
the backward then recomputes ``P`` in full for that call (exact, one more GEMM). The operations
after the layer that keep ``y`` anyway (an activation, the attention's ``V``) share its storage.

The reference below accumulates in float32 (float64 for float64 inputs); it is the definition of
right that every kernel backend is tested against.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _checks, _registry, _saved_output
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
    """Returns ``(y, P, x A^T)`` for a 2-D ``x`` (the kernels' contract: the op keeps ``y`` and ``x A^T``)."""
    acc = accumulate_dtype(x.dtype)
    xa = x @ lora_A.t()
    pre_scale = pre_scale_rows(x, weight, lora_B, scaling, xa)
    scale = scale.to(acc)
    if bias is None:
        y = pre_scale.to(acc) * scale
    else:  # one fused pass: bias + P * c
        y = torch.addcmul(bias.to(acc), pre_scale.to(acc), scale)
    return y.to(x.dtype), pre_scale, xa


def pre_scale_rows(x: Tensor, weight: Tensor, lora_B: Tensor, scaling: float, xa: Tensor) -> Tensor:
    """``P = x W0^T + s (x A^T) B^T`` for the rows of ``weight`` / ``lora_B`` given, in ``x``'s dtype."""
    return (x @ weight.t()).addmm_(xa, lora_B.t(), alpha=scaling)


def dora_linear_backward_reference(
    grad_y: Tensor, x: Tensor, weight: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float,
    scale: Tensor, out: Tensor, xa: Tensor,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns ``(dx, dA, dB, sum_t dy * out, d(zb))`` (the kernels' contract; ``out`` is the op's output ``y``:
    :func:`grad_scale_from_output` turns the fourth into ``dc``)."""
    acc = accumulate_dtype(x.dtype)
    g = grad_y.to(acc)
    grad_pre = (g * scale.to(acc)).to(x.dtype)
    grad_pre_b = grad_pre @ lora_B
    grad_x = torch.addmm(grad_pre @ weight, grad_pre_b, lora_A, alpha=scaling)
    grad_B = (grad_pre.t() @ xa).mul_(scaling)
    grad_A = (grad_pre_b.t() @ x).mul_(scaling)
    dot_out = (g * out.to(acc)).sum(0)
    grad_bias = g.sum(0)
    return (grad_x, grad_A.to(lora_A.dtype), grad_B.to(lora_B.dtype),
            dot_out.to(scale.dtype), grad_bias)


def recoverable_scale(dtype: torch.dtype) -> float:
    """``tau``: the smallest ``|c|`` at which ``dc`` is read off the output (see the module docstring)."""
    return torch.finfo(dtype).tiny ** 0.5


READ_TOKENS = 64  # tokens of P whose root mean square readable_rows takes


@torch.no_grad()
def readable_rows(scale: Tensor, bias: Optional[Tensor], pre_scale: Tensor, dtype: torch.dtype) -> Tensor:
    """Bool, one per channel: where ``dc`` may be read off the output (see the module docstring): ``|c| >= tau``,
    ``|c| rms(P) >= tiny`` (the output's typical value is a normal number of the compute dtype) and, with a bias,
    ``|zb| <= |c| rms(P)`` (the bias does not drown the channel). ``rms(P)``: over ``READ_TOKENS`` evenly spaced
    tokens of the forward's ``P`` (a typical value, not the max: one outlier token must not hide a bias that
    drowns all the others), 64 rows' worth of reading instead of a pass over ``P``."""
    c = scale.abs()
    readable = c >= recoverable_scale(dtype)
    if pre_scale.shape[0]:
        step = max(1, pre_scale.shape[0] // READ_TOKENS)
        sample = pre_scale[::step]
        rms = torch.linalg.vector_norm(sample, 2, dim=0, dtype=accumulate_dtype(sample.dtype)) / sample.shape[0] ** 0.5
        typical = c * rms
        readable &= typical >= torch.finfo(dtype).tiny
        if bias is not None:
            readable &= bias.abs() <= typical
    return readable


def grad_scale_from_output(
    dot_out: Tensor, grad_bias: Tensor, grad_y: Tensor, x: Tensor, weight: Tensor, lora_B: Tensor,
    scaling: float, scale: Tensor, bias: Optional[Tensor], xa: Tensor, readable: Tensor, redo: Tensor,
    rows: Optional[Tensor] = None,
) -> Tensor:
    """``dc`` from ``sum_t dy * y`` (``dot_out``) and ``sum_t dy`` (``grad_bias``) where ``readable``, with ``P``
    recomputed for the rows ``redo`` marks (``rows``: their indices when already known, which saves the device
    sync of finding them), 0 elsewhere (rows the caller does not need; see the module docstring)."""
    acc = grad_bias.dtype
    c = scale.to(acc)
    signal = dot_out.to(acc) if bias is None else dot_out.to(acc) - bias.to(acc) * grad_bias
    grad_scale = torch.where(readable, signal / torch.where(readable, c, torch.ones_like(c)), torch.zeros_like(c))
    if rows is None:
        rows = redo.nonzero().flatten()  # a host sync on a GPU (the eager path finds them without one)
    if rows.numel():
        pre = pre_scale_rows(x, weight.index_select(0, rows), lora_B.index_select(0, rows), scaling, xa)
        grad_scale[rows] = (grad_y.index_select(1, rows).to(acc) * pre.to(acc)).sum(0)
    return grad_scale.to(scale.dtype)


_registry.register(OP, "torch", dora_linear_forward_reference, priority=0)
_registry.register(OP_BACKWARD, "torch", dora_linear_backward_reference, priority=0)
# C++ CPU (csrc/cpu/dora_linear.cpp) and CUDA (csrc/cuda/dora_kernels.cu, ops_cuda.cpp): BLAS/cuBLAS
# GEMMs + single-pass epilogue (forward) and prologue (backward: dP, sum dy*y, dbias in one pass)
_COMPILED_DTYPES = {"cpp": (torch.float32, torch.float64, torch.bfloat16, torch.float16),
                    "cuda": (torch.float32, torch.float16, torch.bfloat16)}
_registry.define_compiled_kernel(
    OP, "(Tensor x, Tensor weight, Tensor lora_A, Tensor lora_B, float scaling, Tensor scale, Tensor? bias)"
        " -> (Tensor, Tensor, Tensor)", dtypes=_COMPILED_DTYPES)
_registry.define_compiled_kernel(
    OP_BACKWARD, "(Tensor grad_y, Tensor x, Tensor weight, Tensor lora_A, Tensor lora_B, float scaling, "
                 "Tensor scale, Tensor out, Tensor xa) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    dtypes=_COMPILED_DTYPES)


# ---------------------------------------------------------------- torch.library ops

def _forward(x: Tensor, weight: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float, scale: Tensor,
             bias: Optional[Tensor], skip_rows: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """The forward op's body: the dispatcher's choice of backend (custom op and eager path alike).

    Returns ``(y, P, x A^T)``. ``P`` is not kept: the backward's setup reads one number per channel off it
    (:func:`readable_rows`) and lets it go. ``skip_rows`` is read by the backward only."""
    return _registry.dispatch(OP, x.device, x.dtype, x, weight, lora_A, lora_B, scaling, scale, bias)


def _backward_body(grad_y: Tensor, x: Tensor, weight: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float,
                   scale: Tensor, bias: Optional[Tensor], out: Optional[Tensor], out_is_pre_scale: bool, xa: Tensor,
                   readable: Optional[Tensor], redo: Optional[Tensor], rows: Optional[Tensor],
                   need_scale: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The backward op's body (custom op and eager path alike): ``(dx, dA, dB, dc, d(zb))``.

    ``out``: the forward's output ``y`` (``dc`` read off it), or its ``P`` (``out_is_pre_scale``: ``dc = sum_t
    dy P``), or ``None`` where neither is available (``y`` changed in place by the model, see
    :mod:`._saved_output`): then ``P`` is recomputed in full. ``dc`` is zeros unless ``need_scale``."""
    if need_scale and out is None:
        out, out_is_pre_scale = pre_scale_rows(x, weight, lora_B, scaling, xa), True
    grad_x, grad_A, grad_B, dot_out, grad_bias = _registry.dispatch(
        OP_BACKWARD, x.device, x.dtype, grad_y, x, weight, lora_A, lora_B, scaling, scale,
        grad_y if out is None else out, xa)  # without need_scale the dot is unused: dy stands in for out
    if not need_scale:
        grad_scale = torch.zeros_like(dot_out)
    elif out_is_pre_scale:
        grad_scale = dot_out
    else:
        grad_scale = grad_scale_from_output(dot_out, grad_bias, grad_y, x, weight, lora_B, scaling, scale, bias,
                                            xa, readable, redo, rows)
    return grad_x, grad_A, grad_B, grad_scale, grad_bias


_dora_linear_op = torch.library.custom_op("masked_dora::dora_linear", _forward, mutates_args=())


@_dora_linear_op.register_fake
def _(x, weight, lora_A, lora_B, scaling, scale, bias, skip_rows=None):
    m, n, r = x.shape[0], weight.shape[0], lora_A.shape[0]
    return x.new_empty(m, n), x.new_empty(m, n), x.new_empty(m, r)


_dora_linear_backward_op = torch.library.custom_op("masked_dora::dora_linear_backward", _backward_body,
                                                   mutates_args=())


@_dora_linear_backward_op.register_fake
def _(grad_y, x, weight, lora_A, lora_B, scaling, scale, bias, out, out_is_pre_scale, xa, readable, redo, rows,
      need_scale):
    acc = accumulate_dtype(x.dtype)
    n = weight.shape[0]
    return (x.new_empty(x.shape), lora_A.new_empty(lora_A.shape), lora_B.new_empty(lora_B.shape),
            scale.new_empty(n), x.new_empty(n, dtype=acc))


def _host_copy(redo: Optional[Tensor]):
    """On a GPU, start copying the recompute mask to the host now (the forward), so that the backward reads the
    rows without a device sync: the copy finished long before. UNRUN on a GPU (written without one)."""
    if redo is None or redo.device.type != "cuda" or _saved_output.tracing(redo):
        return None
    with torch.cuda.device(redo.device):  # the copy and its event on redo's device, whatever the current one
        host = torch.empty(redo.shape, dtype=torch.bool, pin_memory=True)
        host.copy_(redo, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
    return host, done


def _host_rows(copy, device: torch.device) -> Optional[Tensor]:
    """The rows of a :func:`_host_copy` as indices on ``device`` (``None``: no copy was made)."""
    if copy is None:
        return None
    host, done = copy
    done.synchronize()
    rows = host.nonzero().flatten()
    if not rows.numel():
        return torch.empty(0, dtype=torch.long, device=device)
    return rows.pin_memory().to(device, non_blocking=True)


def keep_for_backward(ctx, x: Tensor, scale: Tensor, bias: Optional[Tensor], skip_rows: Optional[Tensor],
                      y: Tensor, pre_scale: Tensor, need_scale: bool):
    """The part of ``setup_context`` every op built on this forward shares (this op and
    :mod:`.gated_dora_linear`): decides what stands in for ``P`` in the backward (the module docstring) and
    returns ``(readable, redo, kept_pre_scale)`` for the caller's ``save_for_backward``; ``scale`` and ``bias``
    are the values the forward used (``c``, ``z b``), whether or not the caller saves them."""
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the unused P and x A^T outputs
    # dc needs P or the output y: y where it may be kept, and only where dc is needed (the module docstring)
    ctx.need_scale = bool(need_scale)
    ctx.keeps_output = ctx.need_scale and _saved_output.can_keep(y)
    readable = redo = kept_pre_scale = None
    if ctx.keeps_output:
        readable = readable_rows(scale, bias, pre_scale, x.dtype)
        redo = ~readable
        if skip_rows is not None:  # the caller's rows apply where the scale is (nearly) 0 only
            redo &= ~(skip_rows & (scale.detach().abs() < recoverable_scale(x.dtype)))
        _saved_output.keep(ctx, y)
    elif ctx.need_scale:  # torch.compile, saved-tensor hooks: P, as before issue 16
        kept_pre_scale = pre_scale
    ctx.redo_host = _host_copy(redo)
    # Autograd runs a CUDA backward on its own device thread, where the thread-local
    # use_backend() of the forward is not set: carry the forward's forced backend over.
    ctx.forced_backend = _registry.forced_backend()
    return readable, redo, kept_pre_scale


def release_kept(ctx) -> None:
    """For a backward that needs nothing of what :func:`keep_for_backward` kept (``grad_y`` is ``None``: only the
    non-differentiable ``P`` or ``x A^T`` was used downstream): let the kept output and the host copy go."""
    _saved_output.take(ctx)
    ctx.redo_host = None


def refuse_double_backward(grad_y: Tensor, op: str) -> None:
    """The backward ops are not differentiable: under ``create_graph=True`` (grad mode on in the backward) their
    gradients would silently lack the second-order terms, so the eager path refuses it (a trace under
    ``torch.compile`` is left alone)."""
    if torch.is_grad_enabled() and plain_eager(grad_y) and not _saved_output.tracing(grad_y):
        raise RuntimeError(f"{op}: double backward (create_graph=True through masked DoRA) is not supported: its "
                           f"backward is not differentiable, so second-order gradients would be silently wrong")


def backward_from_saved(ctx, grad_y: Tensor, x: Tensor, weight: Tensor, lora_A: Tensor, lora_B: Tensor,
                        scale: Tensor, bias: Optional[Tensor], xa: Tensor, readable: Optional[Tensor],
                        redo: Optional[Tensor], kept_pre_scale: Optional[Tensor], need_scale: bool):
    """The backward after :func:`keep_for_backward`: ``(dx, dA, dB, dc, d(zb))``, ``dc`` zeros unless
    ``need_scale``. Call it once per ``ctx`` (it releases the kept output and the host copy)."""
    refuse_double_backward(grad_y, "dora_linear")
    y = _saved_output.take(ctx) if ctx.keeps_output else None
    rows = _host_rows(ctx.redo_host, scale.device)
    ctx.redo_host = None
    grad_y = grad_y.contiguous()
    out, out_is_pre_scale = (kept_pre_scale, True) if kept_pre_scale is not None else (y, False)
    args = (grad_y, x, weight, lora_A, lora_B, ctx.scaling, scale, bias, out, out_is_pre_scale, xa, readable, redo,
            rows, need_scale)
    with _registry.use_backend(_registry.forced_backend() or ctx.forced_backend):
        if plain_eager(grad_y, x, weight, lora_A, lora_B, scale, bias, out, xa, readable, redo, rows):
            return _backward_body(*args)
        return torch.ops.masked_dora.dora_linear_backward(*args)


def _setup_context(ctx, inputs, output):
    x, weight, lora_A, lora_B, scaling, scale, bias, skip_rows = inputs
    y, pre_scale, xa = output
    ctx.mark_non_differentiable(pre_scale, xa)
    readable, redo, kept_pre_scale = keep_for_backward(ctx, x, scale, bias, skip_rows, y, pre_scale,
                                                       scale.requires_grad)
    ctx.save_for_backward(x, weight, lora_A, lora_B, scale, bias, xa, readable, redo, kept_pre_scale)
    ctx.scaling = scaling
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, grad_y, _grad_pre_scale, _grad_xa):
    x, weight, lora_A, lora_B, scale, bias, xa, readable, redo, kept_pre_scale = ctx.saved_tensors
    needs = ctx.needs_input_grad
    if grad_y is None:  # only P or x A^T was used downstream: they are non-differentiable
        release_kept(ctx)
        return (None,) * 8
    grad_x, grad_A, grad_B, grad_scale, grad_bias = backward_from_saved(
        ctx, grad_y, x, weight, lora_A, lora_B, scale, bias, xa, readable, redo, kept_pre_scale,
        ctx.need_scale and bool(needs[5]))
    return (
        grad_x if needs[0] else None,
        None,  # the frozen base weight never gets a gradient
        grad_A if needs[2] else None,
        grad_B if needs[3] else None,
        None,
        grad_scale if needs[5] else None,
        grad_bias.to(ctx.bias_dtype) if ctx.bias_dtype is not None and needs[6] else None,
        None,
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


def check_call(weight: Tensor, skip_rows: Optional[Tensor], vector: Tuple[str, Tensor]) -> None:
    """What both public entry points (this op and :mod:`.gated_dora_linear`) check besides the arguments:
    ``skip_rows`` (bool, N, on the device of ``vector``, a ``(name, tensor)`` pair) and a frozen base weight."""
    if skip_rows is not None:
        if not isinstance(skip_rows, Tensor) or skip_rows.dtype != torch.bool:
            raise TypeError(f"skip_rows: expected a bool tensor or None, got "
                            f"{getattr(skip_rows, 'dtype', type(skip_rows).__name__)}")
        _checks.check_shape("skip_rows", skip_rows, (weight.shape[0],))
        _checks.check_same_device([vector, ("skip_rows", skip_rows)])
    if weight.requires_grad and torch.is_grad_enabled():
        raise ValueError("weight: the base weight must be frozen (requires_grad=False); "
                         "masked DoRA never forms a gradient for it")


def token_rows(x: Tensor) -> Tuple[Tensor, Tuple[int, ...]]:
    """``x`` (..., K) as (M, K) and its leading shape."""
    lead = x.shape[:-1]
    m = 1
    for d in lead:
        m *= d
    # reshape(m, k), not (-1, k): with k = 0 (or an empty batch) -1 cannot be inferred
    return x.reshape(m, x.shape[-1]), tuple(lead)


def dora_linear(
    x: Tensor, weight: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float,
    scale: Tensor, bias: Optional[Tensor] = None, *, skip_rows: Optional[Tensor] = None,
) -> Tensor:
    """``y = (x W0^T + s (x A^T) B^T) * scale + bias`` for ``x`` of shape (..., K).

    ``weight`` (N x K, frozen), ``lora_A`` (r x K) and ``lora_B`` (N x r) share
    ``x``'s dtype; ``scale`` and ``bias`` are length-N vectors of any float dtype
    (the epilogue runs in float32). Differentiable in ``x``, ``lora_A``,
    ``lora_B``, ``scale`` and ``bias``. The backward keeps ``x``, ``x A^T`` and the
    returned output (see the module docstring); ``skip_rows`` (bool, N): rows whose
    scale gradient is not needed where ``scale`` is exactly 0 (they get 0 there, and
    their pre-scale output is not recomputed).
    """
    check_dora_linear_args(x, weight, lora_A, lora_B, scale, bias)
    check_call(weight, skip_rows, ("scale", scale))
    n = weight.shape[0]
    rows, lead = token_rows(x)
    args = (rows, weight, lora_A, lora_B, float(scaling), scale, bias, skip_rows)
    if plain_eager(x, weight, lora_A, lora_B, scale, bias, skip_rows):
        if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                for t in (x, lora_A, lora_B, scale, bias))):
            return _forward(*args)[0].reshape(*lead, n)  # no graph (inference, no_grad): no backward bookkeeping
        y, _, _ = _EagerDoRALinear.apply(*args)
    else:
        y, _, _ = torch.ops.masked_dora.dora_linear(*args)
    return y.reshape(*lead, n)
