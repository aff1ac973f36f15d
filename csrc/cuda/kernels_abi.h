// C ABI between the CUDA kernels (*.cu, CUDA headers only) and the torch glue
// (ops_cuda.cpp, ATen + TORCH_LIBRARY_IMPL). Plain pointers, sizes and a stream:
// nothing here needs torch, so `nvcc -c` compile-checks every kernel on a
// machine with a CPU-only torch. Every launcher returns a cudaError_t as int
// (0 = success) from cudaGetLastError() after its launch.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// element types of the tensors a launcher reads or writes
enum md_dtype { MD_FLOAT32 = 0, MD_FLOAT16 = 1, MD_BFLOAT16 = 2 };

// out[j] = sum_k w[j * ld + k]^2 (fp32 accumulation), one block per row.
int md_row_sq_norm(const void* w, int dtype, int64_t rows, int64_t cols, int64_t ld, float* out,
                   cudaStream_t stream);

// out[j] = max(sqrt(max(w2[j] + sum_r (2 s wa[j,r] + s^2 bg[j,r]) b[j,r], 0)), eps)
// with wa = W0 A^T, bg = B (A A^T), b = B, all fp32 row-major (rows x rank).
int md_row_norm_finish(const float* wa, const float* bg, const float* b, const float* w2, int64_t rows,
                       int64_t rank, float scaling, float eps, float* out, cudaStream_t stream);

// y[i,j] = P[i,j] * scale[j] + (bias ? bias[j] : 0), fp32 math, P and y row-major M x N.
int md_dora_forward_epilogue(const void* pre_scale, int dtype, const float* scale, const float* bias,
                             int64_t m, int64_t n, void* y, cudaStream_t stream);

// One pass over dy and P (row-major M x N, same dtype): dP = dy * scale (written in that dtype),
// and per row-split s the column partial sums partial_dc[s, j] = sum_i dy*P, partial_db[s, j] = sum_i dy
// (fp32, deterministic: the caller sums the `splits` rows).
int md_dora_backward_prologue(const void* grad_y, const void* pre_scale, int dtype, const float* scale,
                              int64_t m, int64_t n, int64_t splits, void* grad_pre, float* partial_dc,
                              float* partial_db, cudaStream_t stream);

// Gather/scatter-fused compact GEMM (bf16/fp16 inputs, fp32 accumulation, tensor cores via WMMA):
//   out[i, o_j] = sum_k x[i, in_idx[k]] * w[j, k] + bias[j] + residual[i, o_j]
// x: M rows with row stride ldx (elements, last dim contiguous); in_idx: K_kept int64 or null
// (then columns 0..K_kept-1); w: N_kept x K_kept contiguous; bias: fp32 N_kept or null;
// out_idx: N_kept int64 or null (then column j); residual: row stride ldr or null; out: row stride ldo.
// residual may alias out. Columns of out not in out_idx are not touched.
int md_compact_linear(const void* x, int64_t ldx, const int64_t* in_idx, const void* w, int dtype,
                      const float* bias, const int64_t* out_idx, const void* residual, int64_t ldr,
                      void* out, int64_t ldo, int64_t m, int64_t n_kept, int64_t k_kept, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
