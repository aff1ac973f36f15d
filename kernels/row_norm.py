r"""Triton kernel for the DoRA row norm (op ``row_norm``), one pass over ``W0``.

    n_j = max(sqrt(max(||W0_j||^2 + 2 s <(W0 A^T)_j, B_j> + s^2 B_j G B_j^T, 0)), eps),  G = A A^T

Each program owns ``BLOCK_N`` rows of ``W0``: it streams them once over K,
accumulating ``||W0_j||^2`` (unless the cached value is passed in) and
``W0 A^T`` (BLOCK_N x r) in float32 with ``tl.dot``; the epilogue loads the
rows of ``B`` and the r x r Gram matrix ``G`` (computed on the host in float32,
as the reference does: an r x K product) and finishes the norm. No N x K
temporary. Ranks above ``MAX_FUSED_RANK`` run the reference formula instead
(the whole r-wide slice must fit in registers).
"""

from __future__ import annotations

from typing import List, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from masked_dora.ops import _registry
from masked_dora.ops.row_norm import OP, check_row_norm_args, row_norm_reference

from ._common import (MAX_FUSED_RANK, SUPPORTED_DTYPES, TunedKernel, compile_precisions, device_guard,
                      dot_precision, make_predicates, rank_pad)
from ._compile import CompileTarget, ptr, specialize


@triton.jit
def _row_norm_kernel(w_ptr, a_ptr, b_ptr, gram_ptr, wsq_ptr, out_ptr, N, K, R, scaling, eps,
                     stride_wn, stride_wk, stride_ar, stride_ak, stride_bn, stride_br,
                     HAS_WSQ: tl.constexpr, R_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, R_PAD)
    offs_k = tl.arange(0, BLOCK_K)
    n_mask = offs_n < N
    r_mask = offs_r < R
    rows = offs_n.to(tl.int64)
    w_ptrs = w_ptr + rows[:, None] * stride_wn + offs_k[None, :] * stride_wk
    a_ptrs = a_ptr + offs_r[None, :] * stride_ar + offs_k[:, None] * stride_ak      # A^T tile, K x R
    sq = tl.zeros([BLOCK_N], dtype=tl.float32)
    wa = tl.zeros([BLOCK_N, R_PAD], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        w = tl.load(w_ptrs, mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        at = tl.load(a_ptrs, mask=k_mask[:, None] & r_mask[None, :], other=0.0)
        if not HAS_WSQ:
            wf = w.to(tl.float32)
            sq += tl.sum(wf * wf, axis=1)
        wa = tl.dot(w, at, wa, input_precision=DOT_PRECISION)
        w_ptrs += BLOCK_K * stride_wk
        a_ptrs += BLOCK_K * stride_ak
    if HAS_WSQ:
        sq = tl.load(wsq_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + rows[:, None] * stride_bn + offs_r[None, :] * stride_br,
                mask=n_mask[:, None] & r_mask[None, :], other=0.0).to(tl.float32)
    gram = tl.load(gram_ptr + offs_r[:, None] * R + offs_r[None, :],
                   mask=r_mask[:, None] & r_mask[None, :], other=0.0)
    cross = tl.sum(wa * b, axis=1)
    low_rank = tl.sum(tl.dot(b, gram, input_precision="ieee") * b, axis=1)
    total = sq + (2.0 * scaling) * cross + (scaling * scaling) * low_rank
    norm = tl.maximum(tl.sqrt(tl.maximum(total, 0.0)), eps)
    norm = tl.where(total != total, total, norm)  # NaN in W0, A, B or ||W0||^2 stays NaN (maximum drops it)
    tl.store(out_ptr + offs_n, norm, mask=n_mask)


_NAMES = ("BLOCK_N", "BLOCK_K")
# (BLOCK_N, BLOCK_K, num_warps, num_stages): a bandwidth-bound stream over W0
_CONFIGS_16 = [(32, 128, 4, 3), (64, 128, 4, 3)]
_CONFIGS_32 = [(32, 64, 4, 3), (64, 64, 4, 3)]

ROW_NORM = TunedKernel(_row_norm_kernel, _NAMES,
                       lambda dtype: _CONFIGS_32 if dtype == torch.float32 else _CONFIGS_16,
                       interpret=(64, 64, 4, 1), key=["N", "K", "R_PAD", "HAS_WSQ"])


def row_norm_triton(weight: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float,
                    weight_sq: Optional[Tensor], eps: float, *, out: Optional[Tensor] = None) -> Tensor:
    """Same contract as :func:`masked_dora.ops.row_norm.row_norm_reference` (float32 output).

    ``out``: an optional preallocated contiguous float32 buffer of length N.
    """
    check_row_norm_args(weight, lora_A, lora_B, weight_sq)
    n, k = weight.shape
    r = lora_A.shape[0]
    if weight.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"weight: the triton row_norm kernel supports {SUPPORTED_DTYPES}, got {weight.dtype}")
    if out is None:
        out = torch.empty(n, device=weight.device, dtype=torch.float32)
    elif out.shape != (n,) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out: expected a contiguous float32 tensor of shape ({n},), got "
                         f"{tuple(out.shape)} {out.dtype}")
    if r > MAX_FUSED_RANK or r == 0:  # the r-wide slice would not fit in registers: the reference formula
        return out.copy_(row_norm_reference(weight, lora_A, lora_B, scaling, weight_sq, eps))
    if n == 0:
        return out
    a32 = lora_A.to(torch.float32)
    gram = (a32 @ a32.t()).contiguous()
    wsq = None if weight_sq is None else weight_sq.to(torch.float32).contiguous()
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    with device_guard(weight):
        ROW_NORM.launch(grid, weight.dtype, weight, lora_A, lora_B, gram, out if wsq is None else wsq, out,
                        n, k, r, float(scaling), float(eps), weight.stride(0), weight.stride(1),
                        lora_A.stride(0), lora_A.stride(1), lora_B.stride(0), lora_B.stride(1),
                        HAS_WSQ=wsq is not None, R_PAD=rank_pad(r), DOT_PRECISION=dot_precision(weight.dtype))
    return out


def compile_targets() -> List[CompileTarget]:
    """Every autotune config x dtype x (cached ||W0||^2 or not), at the largest fused rank."""
    targets = []
    for dtype in SUPPORTED_DTYPES:
        for prec in compile_precisions(dtype):
            for cfg in ROW_NORM.configs_for(dtype):
                for has_wsq in (False,):  # True only removes code (the ||W0||^2 accumulation)
                    types = {"w_ptr": ptr(dtype), "a_ptr": ptr(dtype), "b_ptr": ptr(dtype),
                             "gram_ptr": "*fp32", "wsq_ptr": "*fp32", "out_ptr": "*fp32",
                             "N": "i32", "K": "i32", "R": "i32", "scaling": "fp32", "eps": "fp32",
                             **{s: "i32" for s in ("stride_wn", "stride_wk", "stride_ar", "stride_ak",
                                                   "stride_bn", "stride_br")}}
                    consts = {"HAS_WSQ": has_wsq, "R_PAD": rank_pad(MAX_FUSED_RANK), "DOT_PRECISION": prec,
                              "BLOCK_N": cfg[0], "BLOCK_K": cfg[1]}
                    sig, consts, aligned = specialize(_row_norm_kernel, types, consts,
                                                      unit=("stride_wk", "stride_ak", "stride_br"))
                    targets.append(CompileTarget(
                        f"row_norm[{dtype},{prec},wsq={has_wsq},BN{cfg[0]},BK{cfg[1]},w{cfg[2]},s{cfg[3]}]",
                        _row_norm_kernel, sig, consts, cfg[2], cfg[3], aligned))
    return targets


_supports, _why_not, _priority = make_predicates(OP, _row_norm_kernel)
_registry.register(OP, "triton", row_norm_triton, supports=_supports, priority=_priority, why_not=_why_not)
