r"""Triton backward of the masked-DoRA linear op (op ``dora_linear_backward``).

``dP = dy * c`` is never stored: every kernel that reads ``dy`` scales it by
``c`` as it loads it (float32, then rounded to the compute dtype, as the
reference does). No gradient for ``W0`` is formed:

1. ``_dgrad_kernel`` (the big GEMM, grouped tile order): for an M x K tile of
   ``dx`` it streams ``dy`` and ``W0`` over N, accumulating ``dP W0``; the
   epilogue adds ``s (dP B) A``. ``dP B`` (M x r, compute dtype, also needed
   for ``dA``) comes from ``_dpb_kernel`` (a skinny GEMM over N, one more read
   of ``dy``) or, for few tokens (``FUSE_DPB_MAX_TOKENS``, where the GEMM is
   bandwidth-bound) and r <= ``MAX_FUSED_RANK``, is accumulated in the dgrad
   loop itself and stored by the programs of the first K tile.
2. ``_cols_kernel``: column reductions over the tokens, split over M into
   ``SPLIT`` partial sums (deterministic, no atomics): ``sum_t dy * out`` (the op passes its
   output ``y`` as ``out``; :func:`masked_dora.ops.dora_linear.grad_scale_from_output` makes ``dc``),
   ``d(zb) = sum_t dy`` and ``dB = s dP^T (x A^T)``.
3. ``_da_kernel``: ``dA = s (dP B)^T x``, split over M the same way.

Four kernels in all (three when fused). Returns exactly what
:func:`masked_dora.ops.dora_linear.dora_linear_backward_reference` returns.

GPU status: ran on an H100 once inside the benchmark (2026-11-27); not yet checked against float64 there
(the run's selftest did not reach it). The dgrad epilogue accumulating ``(s dP B) A`` into the main
accumulator (written after that run) is UNRUN on a GPU.
"""

from __future__ import annotations

import functools
from typing import List, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from masked_dora.ops import _checks, _registry
from masked_dora.ops.dora_linear import OP_BACKWARD

from ._common import (INTERPRET_GEMM, MAX_FUSED_RANK, SUPPORTED_DTYPES, TunedKernel, compile_precisions,
                      device_guard, dot_precision, gemm_configs, grouped_pid, m_bucket, make_predicates,
                      rank_pad)
from ._compile import CompileTarget, ptr, specialize
from .dora_linear import MAX_R_BLOCK, check_forward_args, r_block


@triton.jit
def _dgrad_kernel(dy_ptr, c_ptr, w_ptr, b_ptr, a_ptr, dpb_ptr, dx_ptr,
                  M, N, K, R, M_BUCKET, scaling,
                  stride_dym, stride_dyn, stride_wn, stride_wk, stride_bn, stride_br, stride_ar, stride_ak,
                  FUSE_DPB: tl.constexpr, R_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
                  GROUP_M: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m, pid_k = grouped_pid(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(K, BLOCK_K), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, R_PAD)
    m_mask = offs_m < M
    k_mask = offs_k < K
    r_mask = offs_r < R
    rows = offs_m.to(tl.int64)
    dy_ptrs = dy_ptr + rows[:, None] * stride_dym + offs_n[None, :] * stride_dyn
    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk
    b_ptrs = b_ptr + offs_n[:, None] * stride_bn + offs_r[None, :] * stride_br
    acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
    dpb = tl.zeros([BLOCK_M, R_PAD], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n_mask = offs_n < N - n0
        dy = tl.load(dy_ptrs, mask=m_mask[:, None] & n_mask[None, :], other=0.0)
        c = tl.load(c_ptr + n0 + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        dp = (dy.to(tl.float32) * c[None, :]).to(w_ptr.dtype.element_ty)
        w = tl.load(w_ptrs, mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        acc = tl.dot(dp, w, acc, input_precision=DOT_PRECISION)
        if FUSE_DPB:
            b = tl.load(b_ptrs, mask=n_mask[:, None] & r_mask[None, :], other=0.0)
            dpb = tl.dot(dp, b, dpb, input_precision=DOT_PRECISION)
        dy_ptrs += BLOCK_N * stride_dyn
        w_ptrs += BLOCK_N * stride_wn
        b_ptrs += BLOCK_N * stride_bn
    if FUSE_DPB:
        dpb_c = dpb.to(w_ptr.dtype.element_ty)
        if pid_k == 0:
            tl.store(dpb_ptr + rows[:, None] * R + offs_r[None, :], dpb_c, mask=m_mask[:, None] & r_mask[None, :])
        a = tl.load(a_ptr + offs_r[:, None] * stride_ar + offs_k[None, :] * stride_ak,
                    mask=r_mask[:, None] & k_mask[None, :], other=0.0)
        # into acc, scaled in fp32 around the dot (no second tile accumulator, no extra rounding)
        acc = tl.dot(dpb_c, a, acc * (1.0 / scaling), input_precision=DOT_PRECISION) * scaling
    else:  # dP B was computed before the launch: read it in rank chunks of R_PAD, accumulate into acc
        acc = acc * (1.0 / scaling)
        for r0 in range(0, R, R_PAD):
            rr = r0 + offs_r
            rr_mask = rr < R
            dpb_c = tl.load(dpb_ptr + rows[:, None] * R + rr[None, :], mask=m_mask[:, None] & rr_mask[None, :],
                            other=0.0)
            a = tl.load(a_ptr + rr[:, None] * stride_ar + offs_k[None, :] * stride_ak,
                        mask=rr_mask[:, None] & k_mask[None, :], other=0.0)
            acc = tl.dot(dpb_c, a, acc, input_precision=DOT_PRECISION)
        acc = acc * scaling
    tl.store(dx_ptr + rows[:, None] * K + offs_k[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=m_mask[:, None] & k_mask[None, :])


@triton.jit
def _dpb_kernel(dy_ptr, c_ptr, b_ptr, dpb_ptr, M, N, R, stride_dym, stride_dyn, stride_bn, stride_br,
                R_BLOCK: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """``dP B`` (M x r, compute dtype) with ``dP = dy * c`` formed as ``dy`` is loaded."""
    pid_m = tl.program_id(0)
    pid_r = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_r = pid_r * R_BLOCK + tl.arange(0, R_BLOCK)
    offs_n = tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    r_mask = offs_r < R
    rows = offs_m.to(tl.int64)
    dy_ptrs = dy_ptr + rows[:, None] * stride_dym + offs_n[None, :] * stride_dyn
    b_ptrs = b_ptr + offs_n[:, None] * stride_bn + offs_r[None, :] * stride_br
    acc = tl.zeros([BLOCK_M, R_BLOCK], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n_mask = offs_n < N - n0
        dy = tl.load(dy_ptrs, mask=m_mask[:, None] & n_mask[None, :], other=0.0)
        c = tl.load(c_ptr + n0 + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        dp = (dy.to(tl.float32) * c[None, :]).to(b_ptr.dtype.element_ty)
        b = tl.load(b_ptrs, mask=n_mask[:, None] & r_mask[None, :], other=0.0)
        acc = tl.dot(dp, b, acc, input_precision=DOT_PRECISION)
        dy_ptrs += BLOCK_N * stride_dyn
        b_ptrs += BLOCK_N * stride_bn
    tl.store(dpb_ptr + rows[:, None] * R + offs_r[None, :], acc.to(dpb_ptr.dtype.element_ty),
             mask=m_mask[:, None] & r_mask[None, :])


@triton.jit
def _cols_kernel(dy_ptr, p_ptr, c_ptr, xa_ptr, dc_ptr, dzb_ptr, db_ptr,
                 M, N, R, ROWS_PER_SPLIT, scaling, stride_dym, stride_dyn,
                 R_BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 BLOCK_M: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_r = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = pid_r * R_BLOCK + tl.arange(0, R_BLOCK)
    n_mask = offs_n < N
    r_mask = offs_r < R
    c = tl.load(c_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    dc = tl.zeros([BLOCK_N], dtype=tl.float32)
    dzb = tl.zeros([BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_N, R_BLOCK], dtype=tl.float32)
    m_start = pid_s * ROWS_PER_SPLIT
    m_end = tl.minimum(M, m_start + ROWS_PER_SPLIT)
    for m0 in range(m_start, m_end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_mask = offs_m < m_end
        rows = offs_m.to(tl.int64)
        tile_mask = m_mask[:, None] & n_mask[None, :]
        dy = tl.load(dy_ptr + rows[:, None] * stride_dym + offs_n[None, :] * stride_dyn, mask=tile_mask,
                     other=0.0).to(tl.float32)
        p = tl.load(p_ptr + rows[:, None] * N + offs_n[None, :], mask=tile_mask, other=0.0).to(tl.float32)
        dc += tl.sum(dy * p, axis=0)
        dzb += tl.sum(dy, axis=0)
        dp = (dy * c[None, :]).to(xa_ptr.dtype.element_ty)
        xa = tl.load(xa_ptr + rows[:, None] * R + offs_r[None, :], mask=m_mask[:, None] & r_mask[None, :],
                     other=0.0)
        db = tl.dot(tl.trans(dp), xa, db, input_precision=DOT_PRECISION)
    if pid_r == 0:
        tl.store(dc_ptr + pid_s * N + offs_n, dc, mask=n_mask)
        tl.store(dzb_ptr + pid_s * N + offs_n, dzb, mask=n_mask)
    tl.store(db_ptr + (pid_s * N + offs_n.to(tl.int64))[:, None] * R + offs_r[None, :], scaling * db,
             mask=n_mask[:, None] & r_mask[None, :])


@triton.jit
def _da_kernel(dpb_ptr, x_ptr, da_ptr, M, K, R, ROWS_PER_SPLIT, scaling, stride_xm, stride_xk,
               R_BLOCK: tl.constexpr, DOT_PRECISION: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_k = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_r = tl.program_id(2)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_r = pid_r * R_BLOCK + tl.arange(0, R_BLOCK)
    k_mask = offs_k < K
    r_mask = offs_r < R
    acc = tl.zeros([R_BLOCK, BLOCK_K], dtype=tl.float32)
    m_start = pid_s * ROWS_PER_SPLIT
    m_end = tl.minimum(M, m_start + ROWS_PER_SPLIT)
    for m0 in range(m_start, m_end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_mask = offs_m < m_end
        rows = offs_m.to(tl.int64)
        dpbt = tl.load(dpb_ptr + rows[None, :] * R + offs_r[:, None], mask=r_mask[:, None] & m_mask[None, :],
                       other=0.0)                                                     # (dP B)^T, R x M
        x = tl.load(x_ptr + rows[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        acc = tl.dot(dpbt, x, acc, input_precision=DOT_PRECISION)
    tl.store(da_ptr + (pid_s * R + offs_r.to(tl.int64))[:, None] * K + offs_k[None, :], scaling * acc,
             mask=r_mask[:, None] & k_mask[None, :])


DGRAD = TunedKernel(_dgrad_kernel, ("BLOCK_M", "BLOCK_K", "BLOCK_N"), gemm_configs, INTERPRET_GEMM,
                    key=["M_BUCKET", "N", "K", "R_PAD", "FUSE_DPB"])
_COLS_16 = [(64, 4, 3), (128, 8, 3)]          # (BLOCK_M, num_warps, num_stages); BLOCK_N fixed
_COLS_32 = [(32, 4, 3), (64, 4, 3)]
COLS = TunedKernel(_cols_kernel, ("BLOCK_M",), lambda d: _COLS_32 if d == torch.float32 else _COLS_16,
                   interpret=(64, 4, 1), key=["N", "R", "ROWS_PER_SPLIT"])
COLS_BLOCK_N = 64
_DA_16 = [(64, 128, 4, 3), (128, 64, 4, 3)]   # (BLOCK_M, BLOCK_K, num_warps, num_stages)
_DA_32 = [(32, 128, 4, 3), (64, 64, 4, 3)]
DA = TunedKernel(_da_kernel, ("BLOCK_M", "BLOCK_K"), lambda d: _DA_32 if d == torch.float32 else _DA_16,
                 interpret=(64, 64, 4, 1), key=["K", "R", "ROWS_PER_SPLIT"])
_DPB_16 = [(64, 128, 4, 3), (32, 128, 4, 4)]  # (BLOCK_M, BLOCK_N, num_warps, num_stages)
_DPB_32 = [(64, 64, 4, 3), (32, 64, 4, 3)]
DPB = TunedKernel(_dpb_kernel, ("BLOCK_M", "BLOCK_N"), lambda d: _DPB_32 if d == torch.float32 else _DPB_16,
                  interpret=(64, 64, 4, 1), key=["N", "R", "R_BLOCK"])
_SPLIT_ROWS = 256  # a multiple of every BLOCK_M above
# dgrad recomputes dP B in every K tile (extra tensor-core work ~ r / BLOCK_K of the GEMM): worth it only
# while the GEMM is bandwidth-bound (few tokens); otherwise _dpb_kernel computes it once (one more read of dy)
FUSE_DPB_MAX_TOKENS = 512


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _rows_per_split(m: int, programs_per_split: int, device: torch.device) -> int:
    """Rows of the token dimension per partial sum: enough splits to fill the GPU, few enough to stay cheap."""
    sms = _num_sms(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 4
    splits = max(1, min(triton.cdiv(m, _SPLIT_ROWS), triton.cdiv(2 * sms, max(programs_per_split, 1)), 64))
    return max(1, triton.cdiv(triton.cdiv(m, splits), _SPLIT_ROWS)) * _SPLIT_ROWS


def dora_linear_backward_triton(grad_y: Tensor, x: Tensor, weight: Tensor, lora_A: Tensor, lora_B: Tensor,
                                scaling: float, scale: Tensor, pre_scale: Tensor, xa: Tensor
                                ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(dx, dA, dB, dc, d(zb))``; same contract (and dtypes) as the reference backward."""
    check_forward_args(x, weight, lora_A, lora_B, scale, None)
    m, k = x.shape
    n, r = lora_B.shape
    for name, t, shape in (("grad_y", grad_y, (m, n)), ("pre_scale", pre_scale, (m, n)), ("xa", xa, (m, r))):
        _checks.check_floating(name, t)
        _checks.check_shape(name, t, shape)
        if t.dtype != x.dtype:
            raise TypeError(f"{name}: expected dtype {x.dtype} (the dtype of x), got {t.dtype}")
    _checks.check_same_device([("x", x), ("grad_y", grad_y), ("pre_scale", pre_scale), ("xa", xa)])
    dx = torch.empty(m, k, device=x.device, dtype=x.dtype)
    dpb = torch.empty(m, r, device=x.device, dtype=x.dtype)
    splits_m, dc_part, dzb_part, db_part, da_part = _launch(grad_y, x, weight, lora_A, lora_B, scaling, scale,
                                                            pre_scale.contiguous(), xa.contiguous(), dx, dpb)
    return (dx, da_part.sum(0).to(lora_A.dtype), db_part.sum(0).to(lora_B.dtype),
            dc_part.sum(0).to(scale.dtype), dzb_part.sum(0))


def _launch(grad_y, x, weight, lora_A, lora_B, scaling, scale, pre, xa, dx, dpb, alloc=None):
    """Run the backward kernels into ``dx`` (M x K) and ``dpb`` (M x r); returns the partial sums.

    ``alloc(*shape, device=, dtype=)`` allocates the partial-sum buffers (tests pass a NaN-filling one).
    """
    m, k = x.shape
    n, r = lora_B.shape
    dev = x.device
    prec = dot_precision(x.dtype)
    scale = scale.contiguous()
    scaling = float(scaling)
    fuse = r <= MAX_FUSED_RANK and m <= FUSE_DPB_MAX_TOKENS
    rows_cols = _rows_per_split(m, triton.cdiv(n, COLS_BLOCK_N), dev)
    rows_da = _rows_per_split(m, triton.cdiv(k, 128), dev)
    s_cols, s_da = max(1, triton.cdiv(m, rows_cols)), max(1, triton.cdiv(m, rows_da))
    f32 = {"device": dev, "dtype": torch.float32}
    if alloc is None:
        alloc = torch.empty if m > 0 else torch.zeros  # every partial is written when there are tokens
    dc_part, dzb_part = alloc(s_cols, n, **f32), alloc(s_cols, n, **f32)
    db_part, da_part = alloc(s_cols, n, r, **f32), alloc(s_da, r, k, **f32)
    if m == 0:
        dx.zero_()
        return s_cols, dc_part, dzb_part, db_part, da_part
    rb = r_block(r)
    with device_guard(x):
        if not fuse and r > 0:
            DPB.launch(lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(r, rb)), x.dtype,
                       grad_y, scale, lora_B, dpb, m, n, r, grad_y.stride(0), grad_y.stride(1),
                       lora_B.stride(0), lora_B.stride(1), R_BLOCK=rb, DOT_PRECISION=prec)
        DGRAD.launch(lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(k, meta["BLOCK_K"]),), x.dtype,
                     grad_y, scale, weight, lora_B, lora_A, dpb, dx, m, n, k, r, m_bucket(m), scaling,
                     grad_y.stride(0), grad_y.stride(1), weight.stride(0), weight.stride(1),
                     lora_B.stride(0), lora_B.stride(1), lora_A.stride(0), lora_A.stride(1),
                     FUSE_DPB=fuse, R_PAD=rank_pad(r) if fuse else rb, DOT_PRECISION=prec, GROUP_M=8)
        if n > 0:
            COLS.launch((triton.cdiv(n, COLS_BLOCK_N), s_cols, max(1, triton.cdiv(r, rb))), x.dtype,
                        grad_y, pre, scale, xa, dc_part, dzb_part, db_part, m, n, r, rows_cols, scaling,
                        grad_y.stride(0), grad_y.stride(1),
                        R_BLOCK=rb, BLOCK_N=COLS_BLOCK_N, DOT_PRECISION=prec)
        if r > 0 and k > 0:
            DA.launch(lambda meta: (triton.cdiv(k, meta["BLOCK_K"]), s_da, triton.cdiv(r, rb)), x.dtype,
                      dpb, x, da_part, m, k, r, rows_da, scaling, x.stride(0), x.stride(1),
                      R_BLOCK=rb, DOT_PRECISION=prec)
    return s_cols, dc_part, dzb_part, db_part, da_part


def _spec(fn, types, consts, unit, cfg):
    sig, consts, aligned = specialize(fn, types, consts, unit=unit)
    return sig, consts, cfg[-2], cfg[-1], aligned


def compile_targets() -> List[CompileTarget]:
    """Every autotune config x dtype (x fp32 dot precision) of the three backward kernels.

    The dgrad kernel is compiled with the fused rank slice at its largest
    (``R_PAD = MAX_FUSED_RANK``: most registers and shared memory) and in its
    unfused form (ranks above that, 64-wide rank chunks).
    """
    targets = []
    i32 = "i32"
    for dtype in SUPPORTED_DTYPES:
        p = ptr(dtype)
        for prec in compile_precisions(dtype):
            tag = f"{dtype},{prec}"
            for cfg in DGRAD.configs_for(dtype):
                types = {"dy_ptr": p, "c_ptr": "*fp32", "w_ptr": p, "b_ptr": p, "a_ptr": p, "dpb_ptr": p,
                         "dx_ptr": p, "scaling": "fp32"}
                types.update({a: i32 for a in _dgrad_kernel.arg_names if a.startswith("stride_")
                              or a in ("M", "N", "K", "R", "M_BUCKET")})
                for fuse, r_pad in ((True, rank_pad(MAX_FUSED_RANK)), (False, MAX_R_BLOCK)):
                    consts = {"FUSE_DPB": fuse, "R_PAD": r_pad, "DOT_PRECISION": prec, "GROUP_M": 8,
                              "BLOCK_M": cfg[0], "BLOCK_K": cfg[1], "BLOCK_N": cfg[2]}
                    targets.append(CompileTarget(
                        f"dora_dgrad[{tag},fuse={fuse},BM{cfg[0]},BK{cfg[1]},BN{cfg[2]},w{cfg[3]},s{cfg[4]}]",
                        _dgrad_kernel, *_spec(_dgrad_kernel, types, consts,
                                              ("stride_dyn", "stride_wk", "stride_br", "stride_ak"), cfg)))
            for cfg in DPB.configs_for(dtype):
                types = {"dy_ptr": p, "c_ptr": "*fp32", "b_ptr": p, "dpb_ptr": p, "M": i32, "N": i32, "R": i32,
                         "stride_dym": i32, "stride_dyn": i32, "stride_bn": i32, "stride_br": i32}
                consts = {"R_BLOCK": MAX_R_BLOCK, "DOT_PRECISION": prec, "BLOCK_M": cfg[0], "BLOCK_N": cfg[1]}
                targets.append(CompileTarget(f"dora_dpb[{tag},BM{cfg[0]},BN{cfg[1]},w{cfg[2]},s{cfg[3]}]",
                                             _dpb_kernel, *_spec(_dpb_kernel, types, consts,
                                                                 ("stride_dyn", "stride_br"), cfg)))
            for cfg in COLS.configs_for(dtype):
                types = {"dy_ptr": p, "p_ptr": p, "c_ptr": "*fp32", "xa_ptr": p, "dc_ptr": "*fp32",
                         "dzb_ptr": "*fp32", "db_ptr": "*fp32", "M": i32, "N": i32, "R": i32,
                         "ROWS_PER_SPLIT": i32, "scaling": "fp32", "stride_dym": i32, "stride_dyn": i32}
                consts = {"R_BLOCK": MAX_R_BLOCK, "BLOCK_N": COLS_BLOCK_N, "DOT_PRECISION": prec,
                          "BLOCK_M": cfg[0]}
                targets.append(CompileTarget(f"dora_cols[{tag},BM{cfg[0]},w{cfg[1]},s{cfg[2]}]", _cols_kernel,
                                             *_spec(_cols_kernel, types, consts, ("stride_dyn",), cfg)))
            for cfg in DA.configs_for(dtype):
                types = {"dpb_ptr": p, "x_ptr": p, "da_ptr": "*fp32", "M": i32, "K": i32, "R": i32,
                         "ROWS_PER_SPLIT": i32, "scaling": "fp32", "stride_xm": i32, "stride_xk": i32}
                consts = {"R_BLOCK": MAX_R_BLOCK, "DOT_PRECISION": prec, "BLOCK_M": cfg[0], "BLOCK_K": cfg[1]}
                targets.append(CompileTarget(f"dora_da[{tag},BM{cfg[0]},BK{cfg[1]},w{cfg[2]},s{cfg[3]}]",
                                             _da_kernel, *_spec(_da_kernel, types, consts, ("stride_xk",), cfg)))
    return targets


_supports, _why_not, _priority = make_predicates(OP_BACKWARD, _dgrad_kernel)
_registry.register(OP_BACKWARD, "triton", dora_linear_backward_triton, supports=_supports, priority=_priority,
                   why_not=_why_not)
