r"""Gather/scatter-fused compact GEMM for pruned layers.

::

    y[..., out_idx] (+)= x[..., in_idx] @ W^T + b

``weight`` (``N_kept x K_kept``) is the compact weight of a pruned layer. ``in_idx``
(length ``K_kept``) picks the kept input features of a wider ``x``; ``out_idx``
(length ``N_kept``) places the result into a full-width output of ``out_features``
columns, every other column being 0 -- or, with ``residual``, the residual's
value: the scatter is fused with the residual add. Either index set may be
absent (``None``): with neither, this is a plain compact GEMM.

Index policy. Indices are validated once, where they are created
(:func:`validate_indices`, called by :class:`masked_dora.nn.CompactLinear`):
int64, 1-D, non-empty, in range and strictly increasing (so sorted and unique;
unsorted indices are rejected, not silently sorted, because sorting them means
permuting the weight with them -- ``CompactLinear.from_linear`` does both for
you). The op itself only checks shapes, dtypes and devices (cheap, no device
sync), and before any kernel runs, range and strict order
(:func:`check_index_values`: one O(len) pass and one sync, remembered per index
tensor until it is changed in place): a bad index raises ``ValueError`` naming
it, never reaches a kernel.

The op is functional: it returns a new tensor and never writes into
``residual`` (so it is safe under autograd and ``torch.compile``). With
``residual`` and ``out_idx`` the C++ kernel writes each block of output rows
once, as the residual's rows plus the scattered result (no full-width
zero-filled temporary, no separate copy or ``index_add`` pass); the Triton
launcher copies the residual into the output and accumulates into it in the
kernel's epilogue. For serving, :func:`compact_linear_` updates the residual
stream in place (``residual[..., out_idx] += ...``, a mutating op that declares
``mutates_args=("residual",)``; the kernels touch only the kept columns); it
has no autograd formula, so it refuses inputs that require grad.

Kernel boundary (what every backend's ``fn(x, weight, bias, in_idx, out_idx,
residual, out)`` receives): ``x`` 2-D with any strides; ``weight`` contiguous
``(N_kept, K_kept)``; ``bias`` contiguous ``(N_kept,)`` or None; indices
contiguous int64; ``residual`` 2-D ``(M, out_features)`` with any strides, or
None, or the very tensor ``out``; ``out`` contiguous ``(M, out_features)``,
uninitialised. With ``residual is out`` the kernel accumulates in place,
``out[:, o_j] += y[:, j]`` for ``o_j = out_idx[j]`` (``j`` without
``out_idx``), touching no other column. Otherwise the torch, cpp and Triton
backends (``FULL_WRITE_BACKENDS``) write every element: ``out = residual (or
0)`` plus ``y[:, j]`` at column ``o_j``; any other backend (CUDA) writes only
the kept columns, so with ``out_idx`` the op hands it ``out`` pre-filled with
the residual (or zeros) and ``residual=out`` (see :func:`allocate_output`).

Autograd: gradients flow to ``x``, ``weight``, ``bias`` and ``residual`` (each
one index_select + one GEMM in plain PyTorch), so a compact layer can sit in a
model that is fine-tuned further.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

from . import _checks, _registry
from ._eager import eager_function, plain_eager
from .precision import autocast_enabled

OP = "compact_linear"
KERNEL_SCHEMA = ("(Tensor x, Tensor weight, Tensor? bias, Tensor? in_idx, Tensor? out_idx, "
                 "Tensor? residual, Tensor(a!) out) -> ()")
_KERNEL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


# ---------------------------------------------------------------- index validation

def validate_indices(name: str, idx: Union[Tensor, Sequence[int]], size: int,
                     device: Optional[torch.device] = None) -> Tensor:
    """Check the kept-channel indices ``idx`` into a dimension of ``size`` and return them as int64.

    Accepts an integer tensor or a sequence of ints. Raises, naming ``name``:
    ``TypeError`` for a non-integer dtype (a bool mask: convert it with
    ``mask.nonzero().flatten()``); ``ValueError`` for not 1-D, empty (a layer
    with nothing kept has no compact form), out of ``[0, size)``, duplicated,
    or not sorted ascending. Returns a contiguous int64 tensor on ``device``
    (default: ``idx``'s device). Runs once, at construction: it syncs.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{name}: the indexed dimension must have a positive int size, got {size!r}")
    if not isinstance(idx, Tensor):
        try:  # no dtype: floats stay floats and bools stay bools, and are refused below (never truncated)
            idx = torch.as_tensor(list(idx))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name}: expected an integer tensor or a sequence of ints, "
                            f"got {type(idx).__name__}") from exc
    if idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
        hint = " (a bool keep-mask: pass mask.nonzero().flatten())" if idx.dtype == torch.bool else ""
        raise TypeError(f"{name}: expected an integer index tensor, got dtype {idx.dtype}{hint}")
    if idx.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D index tensor, got shape {tuple(idx.shape)}")
    if idx.numel() == 0:
        raise ValueError(f"{name}: the keep set is empty (every channel pruned); "
                         f"a layer with nothing kept has no compact form -- remove the layer instead")
    idx = idx.detach().to(device=device if device is not None else idx.device, dtype=torch.int64)
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name}: index {bad} is out of range [0, {size})")
    if idx.numel() > 1:
        steps = idx[1:] - idx[:-1]
        if bool((steps == 0).any()) or idx.unique().numel() != idx.numel():
            vals, counts = idx.unique(return_counts=True)
            dup = int(vals[counts > 1][0])
            raise ValueError(f"{name}: duplicate index {dup}; each kept channel must appear once")
        if bool((steps < 0).any()):
            pos = int(torch.nonzero(steps < 0)[0])
            raise ValueError(f"{name}: indices must be sorted ascending (got {int(idx[pos])} before "
                             f"{int(idx[pos + 1])} at position {pos}); sort them and permute the "
                             f"weight's rows/columns with them (CompactLinear.from_linear does both)")
    return idx.contiguous()


# index tensor -> (its _stamp when checked, its largest value); weak keys: nothing is kept alive, and
# nothing is written onto the user's tensor (a verdict stored on it travelled into pickles and copies)
_CHECKED = WeakTensorKeyDictionary()


def _stamp(idx: Tensor):
    """What identifies ``idx``'s current contents: (version counter, storage address, length); None if untracked.

    In-place writes through the tensor or any view of it bump ``_version``; inference tensors have no
    version counter (their check is not remembered). Writes that bypass the counter (through ``.data``,
    a NumPy view, the untyped storage, or another tensor ``set_`` onto the same storage) are not seen:
    after one, call :func:`forget_index_check` (or pass a fresh tensor).
    """
    version = _checks.tensor_version(idx)
    return None if version is None else (version, idx.data_ptr(), idx.numel())


def forget_index_check(idx: Tensor) -> None:
    """Drop the remembered range/order verdict of ``idx``: the next call checks it again."""
    _CHECKED.pop(idx, None)


def check_index_values(name: str, idx: Optional[Tensor], size: int) -> None:
    """Before any kernel launch: ``idx`` lies in ``[0, size)`` and strictly increases.

    An out-of-range index made the C++ and Triton kernels read or write past their buffers (a segfault,
    or silently wrong memory); a duplicate makes a scatter race. Runs inside the op, eager or compiled;
    the precise reason comes from :func:`validate_indices`.

    The pass (one O(len) reduction and one device sync) runs once per index tensor and contents: the
    verdict is remembered (weakly, by tensor) with its :func:`_stamp`, so a layer's index buffers cost
    nothing after their first call, and the op can be captured in a CUDA graph after it (a graph replay
    never checks again). Any in-place change to the tensor checks it again.
    """
    if idx is None or idx.numel() == 0:
        return
    stamp = _stamp(idx)
    if stamp is not None:
        seen = _CHECKED.get(idx)
        if seen is not None and seen[0] == stamp and seen[1] < size:
            return
    stats = [idx.min(), idx.max()]
    if idx.numel() > 1:
        stats.append((idx[1:] > idx[:-1]).all().to(idx.dtype))
    lo, hi, *increasing = torch.stack(stats).tolist()  # one sync
    if lo < 0 or hi >= size or not all(increasing):
        validate_indices(name, idx, size)
        raise ValueError(f"{name}: indices are not in [0, {size}) and strictly increasing")  # unreachable
    if stamp is not None:
        _CHECKED[idx] = (stamp, hi)


# ---------------------------------------------------------------- allocation + reference

# Backends whose kernels write every element of ``out`` (residual copy or zeros in the columns outside
# ``out_idx``). Any other backend (the CUDA kernel) writes the kept columns only: it gets ``out``
# pre-filled with the residual (or zeros) and accumulates into it in place (``residual is out``).
FULL_WRITE_BACKENDS = frozenset({"torch", "cpp", "triton"})


def allocate_output(backend: str, x: Tensor, out_idx: Optional[Tensor], out_features: int,
                    residual: Optional[Tensor]):
    """``(out, residual_for_kernel)`` for ``backend``; see the kernel boundary in the module docstring."""
    if out_idx is None or backend in FULL_WRITE_BACKENDS:
        return x.new_empty(x.shape[0], out_features), residual
    if residual is None:
        return x.new_zeros(x.shape[0], out_features), None
    out = residual.clone(memory_format=torch.contiguous_format)
    return out, out


def compact_linear_reference(x: Tensor, weight: Tensor, bias: Optional[Tensor], in_idx: Optional[Tensor],
                             out_idx: Optional[Tensor], residual: Optional[Tensor], out: Tensor) -> None:
    """index_select + GEMM + index_copy/index_add, written into ``out`` per the kernel contract.

    Without ``out_idx`` the GEMM writes ``out`` itself (``addmm(..., out=out)``: no temporary and no
    copy pass); this is the automatic choice on a GPU, where it measured faster than both fused
    kernels (see the dispatch note in :mod:`masked_dora.ops.compact_linear`'s registration).
    """
    xg = x if in_idx is None else x.index_select(1, in_idx)
    wt = weight.t()
    if out_idx is None:
        if residual is out:
            out.addmm_(xg, wt)
            if bias is not None:
                out.add_(bias)
        elif residual is not None:
            torch.addmm(residual, xg, wt, out=out)
            if bias is not None:
                out.add_(bias)
        elif bias is not None:
            torch.addmm(bias, xg, wt, out=out)
        else:
            torch.mm(xg, wt, out=out)
        return
    y = torch.nn.functional.linear(xg, weight, bias)
    if residual is None:
        out.zero_()
    elif residual is not out:
        out.copy_(residual)
    if residual is None:
        out.index_copy_(1, out_idx, y)
    else:
        out.index_add_(1, out_idx, y)


_registry.register(OP, "torch", compact_linear_reference, priority=0)

# Dispatch on a GPU, as measured (bench/results/2026-11-27-h100.md, H100, bf16, Llama-7B shapes, keep 0.75):
# at M = 8192 the fused gather/scatter kernels were 7.6x (Triton, 7.39 ms) and 10.4x (CUDA, 10.1 ms) slower
# than eager index_select + cuBLAS (0.98 ms) on down_proj; on the scatter layer 1.6x and 6.7x slower than this
# reference (0.99 and 4.14 ms vs 0.62 ms). At
# M = 1 that run could not time them fairly (the per-call index check synced, so they ran outside the CUDA
# graph their baselines were timed in), but the CUDA kernel took 0.74 ms against 0.04 ms eager. So on CUDA
# they rank BELOW the reference (priority < 0) at every M: they run only when forced (MASKED_DORA_BACKEND /
# use_backend). Both matched float64 in that run; the CUDA one also ran memcheck-clean at the selftest's quick
# shapes (the Triton one was not run under compute-sanitizer).
GPU_SLOWER_THAN_REFERENCE = -5
# the CUDA kernel is a WMMA tensor-core GEMM: half types only (fp32/fp64 go to Triton or the reference)
_registry.define_compiled_kernel(OP, KERNEL_SCHEMA, priorities={"cuda": GPU_SLOWER_THAN_REFERENCE},
                                 dtypes={"cpp": _KERNEL_DTYPES, "cuda": (torch.bfloat16, torch.float16)})


# ---------------------------------------------------------------- torch.library op

def _compact_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], in_idx: Optional[Tensor],
                    out_idx: Optional[Tensor], out_features: int, residual: Optional[Tensor]) -> Tensor:
    """The op's body (the custom op and the eager path alike, see :mod:`._eager`)."""
    check_index_values("in_idx", in_idx, x.shape[1])
    check_index_values("out_idx", out_idx, out_features)
    impl = _registry.select(OP, x.device, x.dtype)
    out, res = allocate_output(impl.name, x, out_idx, out_features, residual)
    with _registry.no_autocast(x.device):
        impl.fn(x, weight, bias, in_idx, out_idx, res, out)
    return out


_compact_linear_op = torch.library.custom_op("masked_dora::compact_linear", _compact_linear, mutates_args=())


@_compact_linear_op.register_fake
def _(x, weight, bias, in_idx, out_idx, out_features, residual):
    return x.new_empty(x.shape[0], out_features)


def _setup_context(ctx, inputs, output):
    x, weight, bias, in_idx, out_idx, out_features, residual = inputs
    needs_w = weight.requires_grad
    needs_x = x.requires_grad
    ctx.save_for_backward(x if needs_w else None, weight if needs_x else None, in_idx, out_idx)
    ctx.x_shape = tuple(x.shape)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out):
    x, weight, in_idx, out_idx = ctx.saved_tensors
    needs = ctx.needs_input_grad
    g = grad_out if out_idx is None else grad_out.index_select(1, out_idx)
    grad_x = grad_w = grad_b = None
    if needs[0]:
        grad_xc = g @ weight
        grad_x = grad_xc if in_idx is None else \
            grad_xc.new_zeros(ctx.x_shape).index_copy(1, in_idx, grad_xc)
    if needs[1]:
        xg = x if in_idx is None else x.index_select(1, in_idx)
        grad_w = g.t() @ xg
    if ctx.has_bias and needs[2]:
        grad_b = g.sum(0)
    grad_res = grad_out if needs[6] else None
    return grad_x, grad_w, grad_b, None, None, None, grad_res


_compact_linear_op.register_autograd(_backward, setup_context=_setup_context)


_EagerCompactLinear = eager_function("_EagerCompactLinear", _compact_linear, _setup_context, _backward)


# ---------------------------------------------------------------- public entry point

def _check_index_arg(name: str, idx: Optional[Tensor], length: int, device: torch.device) -> None:
    if idx is None:
        return
    if not isinstance(idx, Tensor):
        raise TypeError(f"{name}: expected an int64 tensor or None, got {type(idx).__name__}")
    if idx.dtype != torch.int64:
        raise TypeError(f"{name}: expected dtype torch.int64 (validate it once with validate_indices), "
                        f"got {idx.dtype}")
    if idx.dim() != 1 or idx.shape[0] != length:
        raise ValueError(f"{name}: expected a 1-D tensor of length {length} (the weight's "
                         f"{'columns' if name == 'in_idx' else 'rows'}), got shape {tuple(idx.shape)}")
    if idx.device != device:
        raise ValueError(f"{name}: expected device {device} (the device of x), got {idx.device}")


def _prepare(x, weight, bias, in_idx, out_idx, out_features, residual):
    """The cheap checks shared by both entry points; returns the 2-D views and the output width."""
    _checks.check_floating("x", x)
    _checks.check_floating("weight", weight)
    _checks.check_ndim("weight", weight, 2)
    n_kept, k_kept = weight.shape
    _checks.check_vector("bias", bias, n_kept)
    if residual is not None:
        _checks.check_floating("residual", residual)
    _checks.check_same_device([("x", x), ("weight", weight), ("bias", bias), ("residual", residual)])
    _checks.check_same_dtype([("x", x), ("weight", weight), ("bias", bias), ("residual", residual)])
    _check_index_arg("in_idx", in_idx, k_kept, x.device)
    _check_index_arg("out_idx", out_idx, n_kept, x.device)
    if x.dim() < 1:
        raise ValueError("x: expected at least 1 dimension, got a scalar")
    k_in = x.shape[-1]
    if in_idx is None and k_in != k_kept:
        raise ValueError(f"x: expected last dimension {k_kept} (weight.shape[1], no in_idx), "
                         f"got shape {tuple(x.shape)}")
    if in_idx is not None and k_in < k_kept:
        raise ValueError(f"x: expected last dimension >= {k_kept} (len(in_idx)), got shape {tuple(x.shape)}")
    if out_features is None:
        if out_idx is None:
            out_features = n_kept
        elif residual is not None:
            out_features = residual.shape[-1]
        else:
            raise ValueError("out_features: required with out_idx (the width of the scattered output)")
    if isinstance(out_features, bool) or not isinstance(out_features, int):
        raise TypeError(f"out_features: expected an int, got {type(out_features).__name__}")
    if out_idx is None and out_features != n_kept:
        raise ValueError(f"out_features: expected {n_kept} (weight.shape[0]) without out_idx, got {out_features}")
    if out_idx is not None and out_features < n_kept:
        raise ValueError(f"out_features: expected >= {n_kept} (len(out_idx)), got {out_features}")
    lead = x.shape[:-1]
    if residual is not None and tuple(residual.shape) != (*lead, out_features):
        raise ValueError(f"residual: expected shape {(*lead, out_features)}, got {tuple(residual.shape)}")
    weight = weight if weight.is_contiguous() else weight.contiguous()
    bias = bias if bias is None or bias.is_contiguous() else bias.contiguous()
    # the kernels read indices as contiguous (a strided index tensor was read wrongly by the Triton kernel)
    in_idx = None if in_idx is None else in_idx.contiguous()
    out_idx = None if out_idx is None else out_idx.contiguous()
    return x.reshape(-1, k_in), weight, bias, in_idx, out_idx, int(out_features), lead


def compact_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, in_idx: Optional[Tensor] = None,
                   out_idx: Optional[Tensor] = None, out_features: Optional[int] = None,
                   residual: Optional[Tensor] = None) -> Tensor:
    """``y[..., out_idx] (+)= x[..., in_idx] @ weight^T + bias`` (see the module docstring).

    ``x``: (..., K_in) with K_in > max(in_idx) (== weight.shape[1] without
    ``in_idx``), any strides; ``weight``: (N_kept, K_kept) (made contiguous if
    it is not); ``bias``: (N_kept,). ``out_features`` is the output width:
    required with ``out_idx`` (unless ``residual`` gives it), ``N_kept``
    otherwise. ``residual``: (..., out_features), same leading shape as ``x``;
    the result is ``residual`` plus the scattered product (a new tensor;
    ``residual`` is not modified). Index tensors must be int64 and
    pre-validated with :func:`validate_indices` (checked here: dtype, length,
    device here; range and order checked by the op before any kernel runs). ``x``,
    ``weight``, ``bias`` and ``residual`` share one dtype
    and device. Returns (..., out_features) in ``x``'s dtype. Differentiable
    in ``x``, ``weight``, ``bias`` and ``residual``.

    Inside ``torch.autocast`` it computes as ``F.linear`` does there: ``x``,
    ``weight`` and ``bias`` cast to the autocast dtype (float64 ones are not,
    as autocast leaves float64 alone), the result in it; a ``residual`` of
    another dtype is added after the GEMM with type promotion (as
    ``residual + F.linear(...)`` would), not fused.
    """
    if isinstance(x, Tensor) and autocast_enabled(x.device):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight, bias = (t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point()
                           and t.dtype != torch.float64 else t for t in (x, weight, bias))
        if residual is not None and isinstance(residual, Tensor) and residual.dtype != x.dtype:
            return residual + compact_linear(x, weight, bias, in_idx, out_idx,
                                             out_features if out_features is not None else residual.shape[-1])
    x2, weight, bias, in_idx, out_idx, out_features, lead = _prepare(x, weight, bias, in_idx, out_idx,
                                                                      out_features, residual)
    r2 = None if residual is None else residual.reshape(-1, out_features)
    args = (x2, weight, bias, in_idx, out_idx, out_features, r2)
    if plain_eager(x2, weight, bias, in_idx, out_idx, r2):
        needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                     for t in (x2, weight, bias, r2))
        y = _EagerCompactLinear.apply(*args) if needs_grad else _compact_linear(*args)
    else:
        y = torch.ops.masked_dora.compact_linear(*args)
    return y.reshape(*lead, out_features)


# ---------------------------------------------------------------- in-place residual update (inference)

def _compact_linear_add(residual: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                        in_idx: Optional[Tensor], out_idx: Optional[Tensor]) -> None:
    """The in-place op's body (the custom op and the eager path alike)."""
    check_index_values("in_idx", in_idx, x.shape[1])
    check_index_values("out_idx", out_idx, residual.shape[1])
    if x.untyped_storage().data_ptr() == residual.untyped_storage().data_ptr():
        x = x.clone()  # x aliases the residual it updates (h += f(h)): the kernels would read what they write
    impl = _registry.select(OP, x.device, x.dtype)
    with _registry.no_autocast(x.device):
        impl.fn(x, weight, bias, in_idx, out_idx, residual, residual)


_compact_linear_add_op = torch.library.custom_op("masked_dora::compact_linear_add_", _compact_linear_add,
                                               mutates_args=("residual",))


@_compact_linear_add_op.register_fake
def _(residual, x, weight, bias, in_idx, out_idx):
    return None


def compact_linear_(residual: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                    in_idx: Optional[Tensor] = None, out_idx: Optional[Tensor] = None) -> Tensor:
    """In place: ``residual[..., out_idx] += x[..., in_idx] @ weight^T + bias``; returns ``residual``.

    The serving form of the residual add (DESIGN.md: an in-place ``index_add``
    into the residual stream; the kernels touch only the kept columns and
    write nothing else). ``residual`` must be contiguous. Inference only: it
    has no autograd formula, so it raises when grad mode is on and any input
    requires grad (use :func:`compact_linear` with ``residual=`` there).
    """
    if not isinstance(residual, Tensor):
        raise TypeError(f"residual: expected a tensor, got {type(residual).__name__}")
    x2, weight, bias, in_idx, out_idx, out_features, lead = _prepare(
        x, weight, bias, in_idx, out_idx, residual.shape[-1] if residual.dim() else None, residual)
    if not residual.is_contiguous():
        raise ValueError("residual: the in-place op needs a contiguous residual, got strides "
                         f"{tuple(residual.stride())}")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (residual, x, weight, bias)):
        raise RuntimeError("compact_linear_: the in-place residual update has no autograd formula; run it under "
                           "torch.no_grad() / inference_mode, or use compact_linear(..., residual=residual)")
    # as torch's own in-place ops refuse (eager only: dynamo cannot trace is_inference, and torch checks there)
    if not torch.compiler.is_compiling() and residual.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError("residual: an inference tensor cannot be updated in place outside InferenceMode "
                           "(made under torch.inference_mode(); clone it, or run this under inference_mode)")
    args = (residual.view(-1, out_features), x2, weight, bias, in_idx, out_idx)
    if plain_eager(residual, x2, weight, bias, in_idx, out_idx):
        _compact_linear_add(*args)
        torch.autograd.graph.increment_version(residual)  # as the custom op does for a mutated argument
    else:
        torch.ops.masked_dora.compact_linear_add_(*args)
    return residual
