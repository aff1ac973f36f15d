// Gather/scatter-fused compact GEMM on tensor cores (WMMA, bf16/fp16 in, fp32 accumulate):
//
//   out[i, out_idx[j]] = sum_k x[i, in_idx[k]] * w[j, k] + bias[j] (+ residual[i, out_idx[j]])
//
// The gather happens while a thread block stages its x tile into shared memory
// (one index load per thread per K tile: each thread owns one tile column), the
// scatter and the residual add in the epilogue, straight from the accumulator
// fragments. Columns of `out` that are not in out_idx are never touched, so
// `out` may alias `residual` (in-place accumulation into the residual stream).
//
// Tiles: 128 x 128 x 32 per block of 8 warps (2 x 4), 64 x 32 per warp (4 x 2
// WMMA 16x16x16 fragments); the next K tile is prefetched into registers while
// the current one is multiplied. Shared memory: 2 x 10 KiB tiles + 8 KiB
// epilogue scratch (static, < 48 KiB on every arch).
//
// STATUS: compile-checked for sm_80/sm_90 (CI: tests/test_cuda_sources.py). Ran on an H100 once
// (2026-11-27, bench/results/2026-11-27-h100.md): memcheck-clean and within tolerance of float64, but
// 10x slower than index_select + cuBLAS at M = 8192 and 0.74 ms at M = 1 (N/128 CTAs), so it runs only
// when forced (masked_dora/ops/compact_linear.py, GPU_SLOWER_THAN_REFERENCE).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#include <stdint.h>

#include "kernels_abi.h"

namespace {

using namespace nvcuda;

constexpr int BM = 128, BN = 128, BK = 32, PAD = 8, LDS = BK + PAD;
constexpr int kWarps = 8, kThreads = kWarps * 32;
constexpr int WM = 64, WN = 32;                                  // one warp's output tile
constexpr int kRowsPerPass = kThreads / BK;                      // 8 rows staged per pass
constexpr int kPasses = BM / kRowsPerPass;                       // 16 values per thread per tile

__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <typename T> __device__ __forceinline__ T zero() { return from_float<T>(0.f); }

template <typename T>
__global__ void __launch_bounds__(kThreads) compact_linear_kernel(
    const T* __restrict__ x, int64_t ldx, const int64_t* __restrict__ in_idx, const T* __restrict__ w,
    const float* __restrict__ bias, const int64_t* __restrict__ out_idx, const T* residual, int64_t ldr,
    T* out, int64_t ldo, int64_t m, int64_t n, int64_t k) {
  __shared__ __align__(32) T a_tile[BM * LDS];
  __shared__ __align__(32) T b_tile[BN * LDS];
  __shared__ __align__(32) float scratch[kWarps * 16 * 16];

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int warp_m = warp >> 2, warp_n = warp & 3;               // 2 x 4 warps
  const int64_t m0 = (int64_t)blockIdx.y * BM, n0 = (int64_t)blockIdx.x * BN;
  const int col = tid % BK, row_base = tid / BK;                 // each thread owns one tile column

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[WM / 16][WN / 16];
#pragma unroll
  for (int i = 0; i < WM / 16; ++i)
#pragma unroll
    for (int j = 0; j < WN / 16; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  T a_regs[kPasses], b_regs[kPasses];
  auto load_tiles = [&](int64_t k0) {
    const int64_t kk = k0 + col;
    const bool k_ok = kk < k;
    const int64_t src_k = k_ok ? (in_idx ? in_idx[kk] : kk) : 0;  // the gather: one index per thread
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      const int64_t r = row_base + p * kRowsPerPass;
      const int64_t gi = m0 + r, gj = n0 + r;
      a_regs[p] = (k_ok && gi < m) ? x[gi * ldx + src_k] : zero<T>();
      b_regs[p] = (k_ok && gj < n) ? w[gj * k + kk] : zero<T>();
    }
  };
  auto store_tiles = [&]() {
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      const int r = row_base + p * kRowsPerPass;
      a_tile[r * LDS + col] = a_regs[p];
      b_tile[r * LDS + col] = b_regs[p];
    }
  };

  load_tiles(0);
  for (int64_t k0 = 0; k0 < k; k0 += BK) {
    store_tiles();
    __syncthreads();
    if (k0 + BK < k) load_tiles(k0 + BK);                        // prefetch the next tile into registers
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a_frag[WM / 16];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b_frag[WN / 16];
#pragma unroll
      for (int i = 0; i < WM / 16; ++i)
        wmma::load_matrix_sync(a_frag[i], a_tile + (warp_m * WM + i * 16) * LDS + kk, LDS);
#pragma unroll
      for (int j = 0; j < WN / 16; ++j)
        wmma::load_matrix_sync(b_frag[j], b_tile + (warp_n * WN + j * 16) * LDS + kk, LDS);
#pragma unroll
      for (int i = 0; i < WM / 16; ++i)
#pragma unroll
        for (int j = 0; j < WN / 16; ++j) wmma::mma_sync(acc[i][j], a_frag[i], b_frag[j], acc[i][j]);
    }
    __syncthreads();
  }

  // epilogue: bias, scatter through out_idx, fused residual add
  float* my_scratch = scratch + warp * 256;
#pragma unroll
  for (int i = 0; i < WM / 16; ++i) {
#pragma unroll
    for (int j = 0; j < WN / 16; ++j) {
      wmma::store_matrix_sync(my_scratch, acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
#pragma unroll
      for (int e = lane * 8; e < lane * 8 + 8; ++e) {
        const int64_t gi = m0 + warp_m * WM + i * 16 + e / 16;
        const int64_t gj = n0 + warp_n * WN + j * 16 + e % 16;
        if (gi < m && gj < n) {
          float v = my_scratch[e] + (bias ? bias[gj] : 0.f);
          const int64_t oj = out_idx ? out_idx[gj] : gj;
          if (residual) v += to_float(residual[gi * ldr + oj]);
          out[gi * ldo + oj] = from_float<T>(v);
        }
      }
      __syncwarp();
    }
  }
}

template <typename T>
int launch(const void* x, int64_t ldx, const int64_t* in_idx, const void* w, const float* bias,
           const int64_t* out_idx, const void* residual, int64_t ldr, void* out, int64_t ldo, int64_t m,
           int64_t n, int64_t k, cudaStream_t stream) {
  if (m == 0 || n == 0) return 0;
  const int64_t grid_m = (m + BM - 1) / BM;
  if (grid_m > 65535) return (int)cudaErrorInvalidConfiguration;
  dim3 grid((unsigned)((n + BN - 1) / BN), (unsigned)grid_m);
  compact_linear_kernel<T><<<grid, kThreads, 0, stream>>>((const T*)x, ldx, in_idx, (const T*)w, bias, out_idx,
                                                          (const T*)residual, ldr, (T*)out, ldo, m, n, k);
  return (int)cudaGetLastError();
}

}  // namespace

extern "C" int md_compact_linear(const void* x, int64_t ldx, const int64_t* in_idx, const void* w, int dtype,
                                 const float* bias, const int64_t* out_idx, const void* residual, int64_t ldr,
                                 void* out, int64_t ldo, int64_t m, int64_t n_kept, int64_t k_kept,
                                 cudaStream_t stream) {
  switch (dtype) {
    case MD_FLOAT16:
      return launch<__half>(x, ldx, in_idx, w, bias, out_idx, residual, ldr, out, ldo, m, n_kept, k_kept, stream);
    case MD_BFLOAT16:
      return launch<__nv_bfloat16>(x, ldx, in_idx, w, bias, out_idx, residual, ldr, out, ldo, m, n_kept, k_kept,
                                   stream);
    default:
      return (int)cudaErrorInvalidValue;  // fp32 has no WMMA path here: the dispatcher sends it elsewhere
  }
}
