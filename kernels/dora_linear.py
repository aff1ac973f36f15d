r"""Triton forward of the masked-DoRA linear op (op ``dora_linear``).

Two launches:

1. ``_xa_kernel``: the skinny GEMM ``xa = x A^T`` (M x r), stored in the compute
   dtype (it is also saved for the backward).
2. ``_dora_fwd_kernel``: one tiled GEMM ``x W0^T`` (fp32 accumulation, grouped
   tile order for L2 reuse) whose epilogue adds ``s xa B^T`` into the same
   accumulator (rank chunks of ``R_BLOCK``, so any r works; the accumulator is
   divided by ``s`` before and multiplied after, in fp32), rounds ``P`` to the
   compute dtype and stores it, then stores ``y = P * c + zb`` (float32 epilogue
   math).

``x`` may have any strides (they are passed to the kernels). Outputs ``(y, P,
xa)`` exactly as :func:`masked_dora.ops.dora_linear.dora_linear_forward_reference`.

GPU status: ran on an H100 once (2026-11-27, bench/results/2026-11-27-h100.md): within 2.9e-3 of the
reference at Llama size in bf16, forward+backward 1.56x PEFT LoRA's time. The single-accumulator epilogue
(no spill at 128x256 on sm_90) was written after that run and is UNRUN on a GPU.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from masked_dora.ops import _checks, _registry
from masked_dora.ops.dora_linear import OP, check_dora_linear_args

from ._common import (INTERPRET_GEMM, SUPPORTED_DTYPES, TunedKernel, compile_precisions, device_guard,
                      dot_precision, gemm_configs, grouped_pid, m_bucket, make_predicates, rank_pad)
from ._compile import CompileTarget, ptr, specialize

MAX_R_BLOCK = 64


@triton.jit
def _xa_kernel(x_ptr, a_ptr, xa_ptr, M, K, R, stride_xm, stride_xk, stride_ar, stride_ak,
               R_BLOCK: tl.constexpr, DOT_PRECISION: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_r = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_r = pid_r * R_BLOCK + tl.arange(0, R_BLOCK)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    r_mask = offs_r < R
    rows = offs_m.to(tl.int64)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k[None, :] * stride_xk
    a_ptrs = a_ptr + offs_r[None, :] * stride_ar + offs_k[:, None] * stride_ak     # A^T tile, K x R
    acc = tl.zeros([BLOCK_M, R_BLOCK], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        x = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        at = tl.load(a_ptrs, mask=k_mask[:, None] & r_mask[None, :], other=0.0)
        acc = tl.dot(x, at, acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        a_ptrs += BLOCK_K * stride_ak
    tl.store(xa_ptr + rows[:, None] * R + offs_r[None, :], acc.to(xa_ptr.dtype.element_ty),
             mask=m_mask[:, None] & r_mask[None, :])


@triton.jit
def _dora_fwd_kernel(x_ptr, w_ptr, xa_ptr, b_ptr, c_ptr, zb_ptr, y_ptr, p_ptr,
                     M, N, K, R, M_BUCKET, scaling,
                     stride_xm, stride_xk, stride_wn, stride_wk, stride_bn, stride_br,
                     HAS_BIAS: tl.constexpr, R_BLOCK: tl.constexpr, DOT_PRECISION: tl.constexpr,
                     GROUP_M: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_n = grouped_pid(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < N
    rows = offs_m.to(tl.int64)
    cols = offs_n.to(tl.int64)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + cols[None, :] * stride_wn + offs_k[:, None] * stride_wk        # W0^T tile, K x N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        x = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(x, w, acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    # epilogue: + s (x A^T) B^T, in rank chunks, into the same accumulator (a second BLOCK_M x BLOCK_N
    # fp32 accumulator made the 128x256 tiles spill: 255 registers and a 1 KB stack on sm_90), scaled in
    # fp32 around the dots (acc / s + xa B^T, times s) so the low-rank inputs are used as stored
    acc = acc * (1.0 / scaling)
    for r0 in range(0, R, R_BLOCK):
        offs_r = r0 + tl.arange(0, R_BLOCK)
        r_mask = offs_r < R
        xa = tl.load(xa_ptr + rows[:, None] * R + offs_r[None, :], mask=m_mask[:, None] & r_mask[None, :],
                     other=0.0)
        bt = tl.load(b_ptr + cols[None, :] * stride_bn + offs_r[:, None] * stride_br,
                     mask=r_mask[:, None] & n_mask[None, :], other=0.0)                 # B^T chunk, R x N
        acc = tl.dot(xa, bt, acc, input_precision=DOT_PRECISION)
    pre = (acc * scaling).to(p_ptr.dtype.element_ty)
    out_mask = m_mask[:, None] & n_mask[None, :]
    out_offs = rows[:, None] * N + cols[None, :]
    tl.store(p_ptr + out_offs, pre, mask=out_mask)
    c = tl.load(c_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    y = pre.to(tl.float32) * c[None, :]
    if HAS_BIAS:
        y += tl.load(zb_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + out_offs, y.to(y_ptr.dtype.element_ty), mask=out_mask)


_XA_NAMES = ("BLOCK_M", "BLOCK_K")
_XA_16 = [(64, 128, 4, 3), (128, 64, 4, 3)]
_XA_32 = [(64, 64, 4, 3), (128, 32, 4, 3)]
XA = TunedKernel(_xa_kernel, _XA_NAMES, lambda d: _XA_32 if d == torch.float32 else _XA_16,
                 interpret=(64, 64, 4, 1), key=["K", "R", "R_BLOCK"])
FWD = TunedKernel(_dora_fwd_kernel, ("BLOCK_M", "BLOCK_N", "BLOCK_K"), gemm_configs, INTERPRET_GEMM,
                  key=["M_BUCKET", "N", "K", "R_BLOCK", "HAS_BIAS"])


def r_block(r: int) -> int:
    return min(rank_pad(r), MAX_R_BLOCK)


def check_forward_args(x: Tensor, weight: Tensor, lora_A: Tensor, lora_B: Tensor, scale: Tensor,
                       bias: Optional[Tensor]) -> None:
    check_dora_linear_args(x, weight, lora_A, lora_B, scale, bias)
    _checks.check_ndim("x", x, 2)
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"x: the triton dora_linear kernels support {SUPPORTED_DTYPES}, got {x.dtype}")


def dora_linear_triton(x: Tensor, weight: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float,
                       scale: Tensor, bias: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """``(y, P, x A^T)`` for a 2-D ``x``; same contract as the reference forward."""
    check_forward_args(x, weight, lora_A, lora_B, scale, bias)
    m, k = x.shape
    n, r = lora_B.shape
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    pre = torch.empty(m, n, device=x.device, dtype=x.dtype)
    xa = torch.empty(m, r, device=x.device, dtype=x.dtype)
    launch_forward(x, weight, lora_A, lora_B, scaling, scale, bias, y, pre, xa)
    return y, pre, xa


def launch_forward(x, weight, lora_A, lora_B, scaling, scale, bias, y, pre, xa) -> None:
    """Run the two forward kernels into preallocated contiguous ``y``, ``pre`` (M x N) and ``xa`` (M x r)."""
    m, k = x.shape
    n, r = lora_B.shape
    for name, t, shape in (("y", y, (m, n)), ("pre", pre, (m, n)), ("xa", xa, (m, r))):
        _checks.check_shape(name, t, shape)
        if not t.is_contiguous() or t.dtype != x.dtype:
            raise ValueError(f"{name}: expected a contiguous {x.dtype} buffer")
    if m == 0 or n == 0:
        return
    prec = dot_precision(x.dtype)
    rb = r_block(r)
    scale = scale.contiguous()
    zb = scale if bias is None else bias.contiguous()
    with device_guard(x):
        if r > 0:
            XA.launch(lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(r, rb)), x.dtype,
                      x, lora_A, xa, m, k, r, x.stride(0), x.stride(1), lora_A.stride(0), lora_A.stride(1),
                      R_BLOCK=rb, DOT_PRECISION=prec)
        FWD.launch(lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),), x.dtype,
                   x, weight, xa, lora_B, scale, zb, y, pre, m, n, k, r, m_bucket(m), float(scaling),
                   x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
                   lora_B.stride(0), lora_B.stride(1),
                   HAS_BIAS=bias is not None, R_BLOCK=rb, DOT_PRECISION=prec, GROUP_M=8)


def compile_targets() -> List[CompileTarget]:
    """Every autotune config x dtype (x fp32 dot precision) of both forward kernels, R_BLOCK = 64."""
    strides = ("stride_xm", "stride_xk", "stride_wn", "stride_wk", "stride_bn", "stride_br",
               "stride_ar", "stride_ak")
    targets = []
    for dtype in SUPPORTED_DTYPES:
        p = ptr(dtype)
        for prec in compile_precisions(dtype):
            for cfg in XA.configs_for(dtype):
                types = {"x_ptr": p, "a_ptr": p, "xa_ptr": p, "M": "i32", "K": "i32", "R": "i32",
                         **{s: "i32" for s in strides}}
                consts = {"R_BLOCK": MAX_R_BLOCK, "DOT_PRECISION": prec, "BLOCK_M": cfg[0], "BLOCK_K": cfg[1]}
                sig, consts, aligned = specialize(_xa_kernel, types, consts, unit=("stride_xk", "stride_ak"))
                targets.append(CompileTarget(f"dora_xa[{dtype},{prec},BM{cfg[0]},BK{cfg[1]},w{cfg[2]},s{cfg[3]}]",
                                             _xa_kernel, sig, consts, cfg[2], cfg[3], aligned))
            for cfg in FWD.configs_for(dtype):
                types = {"x_ptr": p, "w_ptr": p, "xa_ptr": p, "b_ptr": p, "c_ptr": "*fp32", "zb_ptr": "*fp32",
                         "y_ptr": p, "p_ptr": p, "M": "i32", "N": "i32", "K": "i32", "R": "i32",
                         "M_BUCKET": "i32", "scaling": "fp32", **{s: "i32" for s in strides}}
                consts = {"HAS_BIAS": True, "R_BLOCK": MAX_R_BLOCK, "DOT_PRECISION": prec, "GROUP_M": 8,
                          "BLOCK_M": cfg[0], "BLOCK_N": cfg[1], "BLOCK_K": cfg[2]}
                sig, consts, aligned = specialize(_dora_fwd_kernel, types, consts,
                                                  unit=("stride_xk", "stride_wk", "stride_br"))
                targets.append(CompileTarget(
                    f"dora_fwd[{dtype},{prec},BM{cfg[0]},BN{cfg[1]},BK{cfg[2]},w{cfg[3]},s{cfg[4]}]",
                    _dora_fwd_kernel, sig, consts, cfg[3], cfg[4], aligned))
    return targets


_supports, _why_not, _priority = make_predicates(OP, _dora_fwd_kernel)
_registry.register(OP, "triton", dora_linear_triton, supports=_supports, priority=_priority, why_not=_why_not)
