"""Triton kernel of ``compact_linear``: gather in the load stage, scatter (+ residual add) in the epilogue.

    out[m, out_idx[j]] = sum_k x[m, in_idx[k]] * W[j, k] + b[j] (+ residual[m, out_idx[j]])

One tile kernel, specialised by constexpr flags (HAS_IN / HAS_OUT / HAS_RES /
HAS_BIAS): the K loop loads ``in_idx[k0:k0+BK]`` once per step and gathers the
``x`` tile through it (no index_select pass); the epilogue adds the bias,
loads the residual at the scattered columns and stores there. fp32
accumulation; bf16 / fp16 / fp32 inputs (fp32 uses tf32 only where torch
allows tf32 matmuls). Decode (M <= 16): when the N tiles alone cannot fill the
GPU, a split-K kernel (BLOCK_M = 16, programs over (n-tile, k-split), fp32
atomic adds into a workspace) plus a small epilogue kernel (bias, residual,
scatter); otherwise the tile kernel with BLOCK_M = 16 configs tuned separately.

Kernel boundary: see :mod:`masked_dora.ops.compact_linear` (x any strides,
weight contiguous, int64 indices pre-validated, residual may alias out). With
``out_idx`` and a residual that is not ``out``, the launcher first copies the
residual into ``out`` (zeros without a residual) and the kernel accumulates
into the kept columns.
Autotuning restores ``out`` between trials, so an in-place residual
accumulation is never applied twice.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import triton
import triton.language as tl

from masked_dora.ops import _registry
from masked_dora.ops.compact_linear import GPU_SLOWER_THAN_REFERENCE, OP

from ._common import (SUPPORTED_DTYPES, autotune_rows, dot_precision, grouped_pid, is_interpreted, make_predicates,
                      m_bucket)


@triton.jit
def _gathered_dot(acc, x_rows, w_cols, in_idx_ptr, k_start, k_stop, K, stride_xk, rk, m_mask, n_mask,
                  HAS_IN: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc += x[rows, in_idx[k_start:k_stop]] @ W[cols, k_start:k_stop]^T, gathering in the load stage."""
    for k0 in range(k_start, k_stop, BLOCK_K):
        kk = k0 + rk
        k_mask = kk < K
        if HAS_IN:
            cols = tl.load(in_idx_ptr + kk, mask=k_mask, other=0)
        else:
            cols = kk.to(tl.int64)
        a = tl.load(x_rows + cols[None, :] * stride_xk, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(w_cols + kk[:, None], mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _bias_scatter_store(acc, rm, rn, m_mask, n_mask, b_ptr, out_idx_ptr, res_ptr, out_ptr,
                        stride_rm, stride_rn, stride_om,
                        HAS_BIAS: tl.constexpr, HAS_OUT: tl.constexpr, HAS_RES: tl.constexpr):
    """The epilogue: + bias, scatter to out[:, out_idx] fused with the residual add, cast, store."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_OUT:
        ocols = tl.load(out_idx_ptr + rn, mask=n_mask, other=0)
    else:
        ocols = rn.to(tl.int64)
    mask = m_mask[:, None] & n_mask[None, :]
    if HAS_RES:
        r = tl.load(res_ptr + rm.to(tl.int64)[:, None] * stride_rm + ocols[None, :] * stride_rn,
                    mask=mask, other=0.0)
        acc += r.to(tl.float32)
    tl.store(out_ptr + rm.to(tl.int64)[:, None] * stride_om + ocols[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def compact_linear_kernel(
    x_ptr, w_ptr, b_ptr, in_idx_ptr, out_idx_ptr, res_ptr, out_ptr,
    M, N, K, M_BUCKET, stride_xm, stride_xk, stride_rm, stride_rn, stride_om,
    HAS_BIAS: tl.constexpr, HAS_IN: tl.constexpr, HAS_OUT: tl.constexpr, HAS_RES: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_m, pid_n = grouped_pid(pid, tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_mask = rm < M
    n_mask = rn < N
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * stride_xm
    w_cols = w_ptr + rn.to(tl.int64)[None, :] * K          # W is (N, K) contiguous; tile read as (BK, BN)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = _gathered_dot(acc, x_rows, w_cols, in_idx_ptr, 0, K, K, stride_xk, rk, m_mask, n_mask,
                        HAS_IN, DOT_PRECISION, BLOCK_K)
    _bias_scatter_store(acc, rm, rn, m_mask, n_mask, b_ptr, out_idx_ptr, res_ptr, out_ptr,
                        stride_rm, stride_rn, stride_om, HAS_BIAS, HAS_OUT, HAS_RES)


@triton.jit
def compact_linear_splitk_kernel(
    x_ptr, w_ptr, in_idx_ptr, ws_ptr, M, N, K, K_PER_SPLIT, stride_xm, stride_xk,
    HAS_IN: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Decode (M <= BLOCK_M): program (n-tile, k-split) adds its partial product into an fp32 workspace."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_mask = rm < M
    n_mask = rn < N
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * stride_xm
    w_cols = w_ptr + rn.to(tl.int64)[None, :] * K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_begin = pid_k * K_PER_SPLIT                         # K_PER_SPLIT is a multiple of BLOCK_K
    acc = _gathered_dot(acc, x_rows, w_cols, in_idx_ptr, k_begin, k_begin + K_PER_SPLIT, K, stride_xk, rk,
                        m_mask, n_mask, HAS_IN, DOT_PRECISION, BLOCK_K)
    tl.atomic_add(ws_ptr + rm[:, None] * N + rn[None, :], acc, mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def compact_linear_epilogue_kernel(
    ws_ptr, b_ptr, out_idx_ptr, res_ptr, out_ptr, M, N, stride_rm, stride_rn, stride_om,
    HAS_BIAS: tl.constexpr, HAS_OUT: tl.constexpr, HAS_RES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Split-K epilogue: bias, residual add at the scattered columns, cast, store."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = rm < M
    n_mask = rn < N
    acc = tl.load(ws_ptr + rm.to(tl.int64)[:, None] * N + rn[None, :], mask=m_mask[:, None] & n_mask[None, :],
                  other=0.0)
    _bias_scatter_store(acc, rm, rn, m_mask, n_mask, b_ptr, out_idx_ptr, res_ptr, out_ptr,
                        stride_rm, stride_rn, stride_om, HAS_BIAS, HAS_OUT, HAS_RES)


# ---------------------------------------------------------------- configs

CONFIG_NAMES = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")
# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages)
CONFIGS_16BIT = [(128, 256, 64, 8, 8, 3), (128, 128, 64, 8, 8, 3), (128, 128, 64, 8, 4, 4),
                 (64, 256, 32, 8, 4, 4), (128, 64, 64, 8, 4, 4), (64, 128, 64, 8, 4, 4), (64, 64, 64, 8, 4, 4)]
CONFIGS_FP32 = [(128, 128, 32, 8, 8, 3), (128, 64, 32, 8, 4, 4), (64, 128, 32, 8, 4, 4), (64, 64, 32, 8, 4, 4)]
# decode / small M: one 16-row tile, long K steps, narrow N tiles so every SM gets work
CONFIGS_SMALL_M = [(16, 32, 256, 1, 4, 4), (16, 64, 128, 1, 4, 4), (16, 64, 256, 1, 4, 3),
                   (16, 128, 128, 1, 4, 3)]
INTERPRET_CONFIG = (64, 64, 64, 8, 4, 1)
SMALL_M = 16
# split-K decode path: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); epilogue tile
SPLITK_CONFIG = (16, 64, 128, 4, 3)
EPILOGUE_BLOCK = (16, 128)


def split_k_for(m: int, n: int, k: int, device: torch.device) -> int:
    """How many K splits a decode GEMM (M <= 16) uses: enough (n-tile, k-split) programs to fill the
    GPU's SMs, at least 512 K per split; 1 (the tile kernel) on a CPU or when the n-tiles fill it."""
    if m > SMALL_M or device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    tiles = triton.cdiv(n, SPLITK_CONFIG[1])
    if tiles >= sms:
        return 1
    return max(1, min(triton.cdiv(sms, tiles), k // 512))


def configs_for(dtype: torch.dtype, small_m: bool) -> List[Tuple[int, ...]]:
    if small_m:
        return [c if dtype != torch.float32 else c[:2] + (min(c[2], 128),) + c[3:] for c in CONFIGS_SMALL_M]
    return CONFIGS_FP32 if dtype == torch.float32 else CONFIGS_16BIT


_tuned: Dict[Tuple[torch.dtype, bool, int], object] = {}


def _autotuned(dtype: torch.dtype, small_m: bool):
    # MASKED_DORA_AUTOTUNE=small (kernels/_common.py): the first configs of the list only; the compile
    # targets below keep every config of configs_for
    rows = autotune_rows(configs_for(dtype, small_m))
    key = (dtype, small_m, len(rows))
    if key not in _tuned:
        configs = [triton.Config(dict(zip(CONFIG_NAMES, c[:4])), num_warps=c[4], num_stages=c[5])
                   for c in rows]
        _tuned[key] = triton.autotune(configs, key=["M_BUCKET", "N", "K", "HAS_IN", "HAS_OUT", "HAS_RES"],
                                      restore_value=["out_ptr"])(compact_linear_kernel)
    return _tuned[key]


_dummy: Dict[torch.device, torch.Tensor] = {}


def _int64_dummy(device: torch.device) -> torch.Tensor:
    if device not in _dummy:
        _dummy[device] = torch.zeros(1, dtype=torch.int64, device=device)
    return _dummy[device]


def _launch_split_k(x, weight, bias, in_idx, out_idx, residual, out, split_k: int) -> None:
    m = x.shape[0]
    n, k = weight.shape
    bm, bn, bk, warps, stages = SPLITK_CONFIG
    per_split = triton.cdiv(triton.cdiv(k, split_k), bk) * bk
    splits = triton.cdiv(k, per_split)
    ws = torch.zeros(m, n, device=x.device, dtype=torch.float32)
    dummy = _int64_dummy(x.device)
    compact_linear_splitk_kernel[(triton.cdiv(n, bn), splits)](
        x, weight, in_idx if in_idx is not None else dummy, ws, m, n, k, per_split, x.stride(0), x.stride(1),
        HAS_IN=in_idx is not None, DOT_PRECISION=dot_precision(x.dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
        num_warps=warps, num_stages=stages)
    res = residual if residual is not None else out
    em, en = EPILOGUE_BLOCK
    compact_linear_epilogue_kernel[(triton.cdiv(m, em), triton.cdiv(n, en))](
        ws, bias if bias is not None else weight, out_idx if out_idx is not None else dummy, res, out,
        m, n, res.stride(0), res.stride(1), out.stride(0),
        HAS_BIAS=bias is not None, HAS_OUT=out_idx is not None, HAS_RES=residual is not None,
        BLOCK_M=em, BLOCK_N=en, num_warps=4, num_stages=1)


def compact_linear_triton(x, weight, bias, in_idx, out_idx, residual, out, split_k=None) -> None:
    """Run the kernels per the kernel-boundary contract of :mod:`masked_dora.ops.compact_linear`.

    ``split_k``: number of K splits for the decode path (M <= 16); ``None``
    picks it from the GPU's SM count (:func:`split_k_for`), 1 runs the tile kernel.
    """
    m = x.shape[0]
    n, k = weight.shape
    if m == 0:
        return
    if not (weight.is_contiguous() and out.stride(1) == 1):
        raise ValueError("compact_linear (triton): weight must be contiguous and out contiguous in its last dim")
    if split_k is None:
        split_k = split_k_for(m, n, k, x.device)
    if split_k > 1 and m > SMALL_M:
        raise ValueError(f"split_k: the split-K path runs M <= {SMALL_M} rows, got M={m}")
    if out_idx is not None and residual is not out:
        # the tiles cover the kept columns only: set the others first, then accumulate in place
        if residual is None:
            out.zero_()
        else:
            out.copy_(residual)
            residual = out
    if split_k > 1:
        _launch_split_k(x, weight, bias, in_idx, out_idx, residual, out, split_k)
        return
    dummy = _int64_dummy(x.device)
    res = residual if residual is not None else out
    args = (x, weight, bias if bias is not None else weight, in_idx if in_idx is not None else dummy,
            out_idx if out_idx is not None else dummy, res, out,
            m, n, k, m_bucket(m), x.stride(0), x.stride(1), res.stride(0), res.stride(1), out.stride(0))
    flags = dict(HAS_BIAS=bias is not None, HAS_IN=in_idx is not None, HAS_OUT=out_idx is not None,
                 HAS_RES=residual is not None, DOT_PRECISION=dot_precision(x.dtype))

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    if is_interpreted(compact_linear_kernel):
        c = INTERPRET_CONFIG
        compact_linear_kernel[grid(dict(zip(CONFIG_NAMES, c)))](
            *args, **flags, **dict(zip(CONFIG_NAMES, c[:4])), num_warps=c[4], num_stages=c[5])
    else:
        _autotuned(x.dtype, m <= SMALL_M)[grid](*args, **flags)


_supports, _why_not, _priority = make_predicates(OP, compact_linear_kernel)


def _gpu_ranked_below_reference(device: torch.device) -> int:
    """On a GPU the reference measured faster (see GPU_SLOWER_THAN_REFERENCE's note): run only when forced."""
    return GPU_SLOWER_THAN_REFERENCE if device.type == "cuda" else _priority(device)


_registry.register(OP, "triton", compact_linear_triton, supports=_supports, why_not=_why_not,
                   priority=_gpu_ranked_below_reference)


# ---------------------------------------------------------------- ahead-of-time compile targets

def compile_targets():
    """Every (config, dtype) the launcher can run on a GPU, all epilogue/gather flags on, plus the
    plain-GEMM specialisation (all flags off) per dtype (see :mod:`masked_dora.kernels._compile`)."""
    from ._compile import CompileTarget, ptr

    def target(dtype, c, small, flags_on, precision="ieee"):
        sig = {"x_ptr": ptr(dtype), "w_ptr": ptr(dtype), "b_ptr": ptr(dtype), "in_idx_ptr": "*i64",
               "out_idx_ptr": "*i64", "res_ptr": ptr(dtype), "out_ptr": ptr(dtype),
               "M": "i32", "N": "i32", "K": "i32", "M_BUCKET": "i32", "stride_xm": "i32", "stride_xk": "i32",
               "stride_rm": "i32", "stride_rn": "i32", "stride_om": "i32"}
        consts = dict(HAS_BIAS=flags_on, HAS_IN=flags_on, HAS_OUT=flags_on, HAS_RES=flags_on,
                      DOT_PRECISION=precision,
                      **dict(zip(CONFIG_NAMES, c[:4])))
        signature = {name: sig.get(name, "constexpr") for name in compact_linear_kernel.arg_names}
        tag = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
        name = (f"compact_linear[{tag},{'smallM,' if small else ''}{'gather+scatter+res+bias' if flags_on else 'plain'},"
                f"{precision + ',' if dtype == torch.float32 else ''}BM{c[0]},BN{c[1]},BK{c[2]},w{c[4]},s{c[5]}]")
        return CompileTarget(name=name, fn=compact_linear_kernel, signature=signature, constexprs=consts,
                             num_warps=c[4], num_stages=c[5])

    targets = []
    for dtype in SUPPORTED_DTYPES:
        # fp32 runs tf32 or ieee dots depending on torch.backends.cuda.matmul.allow_tf32
        for precision in (("ieee", "tf32") if dtype == torch.float32 else ("ieee",)):
            for small in (False, True):
                for c in configs_for(dtype, small):
                    targets.append(target(dtype, c, small, True, precision))
        targets.append(target(dtype, configs_for(dtype, False)[0], False, False))
        targets.extend(_split_k_targets(dtype, CompileTarget, ptr))
    return targets


def _split_k_targets(dtype, CompileTarget, ptr):
    tag = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    bm, bn, bk, warps, stages = SPLITK_CONFIG
    out = []
    for precision in (("ieee", "tf32") if dtype == torch.float32 else ("ieee",)):
        types = {"x_ptr": ptr(dtype), "w_ptr": ptr(dtype), "in_idx_ptr": "*i64", "ws_ptr": "*fp32", "M": "i32",
                 "N": "i32", "K": "i32", "K_PER_SPLIT": "i32", "stride_xm": "i32", "stride_xk": "i32"}
        out.append(CompileTarget(
            name=f"compact_linear_splitk[{tag},{precision},BM{bm},BN{bn},BK{bk},w{warps},s{stages}]",
            fn=compact_linear_splitk_kernel,
            signature={a: types.get(a, "constexpr") for a in compact_linear_splitk_kernel.arg_names},
            constexprs=dict(HAS_IN=True, DOT_PRECISION=precision, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk),
            num_warps=warps, num_stages=stages))
    types = {"ws_ptr": "*fp32", "b_ptr": ptr(dtype), "out_idx_ptr": "*i64", "res_ptr": ptr(dtype),
             "out_ptr": ptr(dtype), "M": "i32", "N": "i32", "stride_rm": "i32", "stride_rn": "i32",
             "stride_om": "i32"}
    em, en = EPILOGUE_BLOCK
    out.append(CompileTarget(
        name=f"compact_linear_epilogue[{tag},BM{em},BN{en},w4,s1]", fn=compact_linear_epilogue_kernel,
        signature={a: types.get(a, "constexpr") for a in compact_linear_epilogue_kernel.arg_names},
        constexprs=dict(HAS_BIAS=True, HAS_OUT=True, HAS_RES=True, BLOCK_M=em, BLOCK_N=en),
        num_warps=4, num_stages=1))
    return out
