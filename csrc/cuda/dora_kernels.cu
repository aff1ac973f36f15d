// CUDA kernels for masked-DoRA training: the row-norm pieces, the forward
// epilogue and the backward prologue (dP = dy * c fused with the column
// reductions sum dy * out and sum dy; the op passes its output y as `out`).
// The GEMMs around them are cuBLAS calls made by ops_cuda.cpp. CUDA headers
// only (see kernels_abi.h).
//
// STATUS: compile-checked for sm_80/sm_90 (CI: tests/test_cuda_sources.py). The scalar versions ran on
// an H100 once (2026-11-27: memcheck-clean, within tolerance of float64 at the selftest's quick shapes);
// the 16-byte (Pack) epilogue and prologue were written after that run and are UNRUN on a GPU.
// See README "C++/CUDA extension".
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "kernels_abi.h"

namespace {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

constexpr int kThreads = 256;

// ---------------------------------------------------------------- row norm

template <typename T>
__global__ void row_sq_norm_kernel(const T* __restrict__ w, int64_t cols, int64_t ld, float* __restrict__ out) {
  const T* row = w + blockIdx.x * ld;
  float acc = 0.f;
  for (int64_t k = threadIdx.x; k < cols; k += blockDim.x) {
    float v = to_float(row[k]);
    acc = fmaf(v, v, acc);
  }
  __shared__ float partial[kThreads / 32];
  acc = warp_sum(acc);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < (blockDim.x >> 5) ? partial[threadIdx.x] : 0.f;
    v = warp_sum(v);
    if (threadIdx.x == 0) out[blockIdx.x] = v;
  }
}

// one warp per row: n^2 = w2 + sum_r (2 s wa + s^2 bg) * b, clamp, sqrt, eps floor
__global__ void row_norm_finish_kernel(const float* __restrict__ wa, const float* __restrict__ bg,
                                       const float* __restrict__ b, const float* __restrict__ w2, int64_t rows,
                                       int64_t rank, float s, float eps, float* __restrict__ out) {
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;  // whole warps exit together: row is uniform within a warp
  float acc = 0.f;
  for (int64_t r = lane; r < rank; r += 32) {
    const int64_t i = row * rank + r;
    acc = fmaf(fmaf(2.f * s, wa[i], s * s * bg[i]), b[i], acc);
  }
  acc = warp_sum(acc);
  // fmaxf drops a NaN: keep it, as the reference does (a NaN in W0, A, B or ||W0||^2 must not become eps)
  if (lane == 0) {
    const float total = w2[row] + acc;
    out[row] = isnan(total) ? total : fmaxf(sqrtf(fmaxf(total, 0.f)), eps);
  }
}

// ---------------------------------------------------------------- vector access

// VEC consecutive elements moved as one access: 16 bytes for VEC = 16 / sizeof(T) (8 halves, 4 floats), so a
// warp moves 512 contiguous bytes per instruction (the scalar form moved 2 bytes per thread for half types).
// The launchers use VEC > 1 only where n % VEC == 0 and every pointer is 16-byte aligned.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, VEC>*>(p);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, VEC>& v) {
  *reinterpret_cast<Pack<T, VEC>*>(p) = v;
}

template <typename T>
constexpr int vec_width() { return 16 / (int)sizeof(T); }

bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// ---------------------------------------------------------------- forward epilogue

template <typename T, int VEC>
__global__ void forward_epilogue_kernel(const T* __restrict__ pre, const float* __restrict__ scale,
                                        const float* __restrict__ bias, int64_t m, int64_t n, T* __restrict__ y) {
  // 2-D grid: blockIdx.y walks rows, x covers columns (VEC per thread), so the column needs no division
  const int64_t j = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
  if (j >= n) return;
  float c[VEC], b[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    c[v] = scale[j + v];
    b[v] = bias ? bias[j + v] : 0.f;
  }
  for (int64_t i = blockIdx.y; i < m; i += gridDim.y) {
    const int64_t idx = i * n + j;
    const Pack<T, VEC> p = load_pack<T, VEC>(pre + idx);
    Pack<T, VEC> out;
#pragma unroll
    for (int v = 0; v < VEC; ++v) out.v[v] = from_float<T>(fmaf(to_float(p.v[v]), c[v], b[v]));
    store_pack<T, VEC>(y + idx, out);
  }
}

// ---------------------------------------------------------------- backward prologue

template <typename T, int VEC>
__global__ void backward_prologue_kernel(const T* __restrict__ dy, const T* __restrict__ pre,
                                         const float* __restrict__ scale, int64_t m, int64_t n,
                                         int64_t rows_per_split, T* __restrict__ dpre,
                                         float* __restrict__ partial_dc, float* __restrict__ partial_db) {
  const int64_t j = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
  if (j >= n) return;
  float c[VEC], dc[VEC], db[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    c[v] = scale[j + v];
    dc[v] = 0.f;
    db[v] = 0.f;
  }
  const int64_t begin = (int64_t)blockIdx.y * rows_per_split;
  const int64_t end = begin + rows_per_split < m ? begin + rows_per_split : m;
  for (int64_t i = begin; i < end; ++i) {  // consecutive threads read consecutive column packs: coalesced
    const int64_t idx = i * n + j;
    const Pack<T, VEC> g = load_pack<T, VEC>(dy + idx);
    const Pack<T, VEC> p = load_pack<T, VEC>(pre + idx);
    Pack<T, VEC> out;
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const float gv = to_float(g.v[v]);
      dc[v] = fmaf(gv, to_float(p.v[v]), dc[v]);
      db[v] += gv;
      out.v[v] = from_float<T>(gv * c[v]);
    }
    store_pack<T, VEC>(dpre + idx, out);
  }
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    partial_dc[blockIdx.y * n + j + v] = dc[v];
    partial_db[blockIdx.y * n + j + v] = db[v];
  }
}

int grid_cols(int64_t n, int vec) { return (int)((n / vec + kThreads - 1) / kThreads); }

template <typename T>
int launch_row_sq_norm(const void* w, int64_t rows, int64_t cols, int64_t ld, float* out, cudaStream_t stream) {
  if (rows > 0) row_sq_norm_kernel<T><<<(unsigned)rows, kThreads, 0, stream>>>((const T*)w, cols, ld, out);
  return (int)cudaGetLastError();
}

template <typename T>
int launch_forward_epilogue(const void* pre, const float* scale, const float* bias, int64_t m, int64_t n, void* y,
                            cudaStream_t stream) {
  if (m == 0 || n == 0) return 0;
  constexpr int V = vec_width<T>();
  const bool vec = n % V == 0 && aligned16(pre) && aligned16(y);
  dim3 grid(grid_cols(n, vec ? V : 1), (unsigned)(m < 65535 ? m : 65535));
  if (vec) {
    forward_epilogue_kernel<T, V><<<grid, kThreads, 0, stream>>>((const T*)pre, scale, bias, m, n, (T*)y);
  } else {
    forward_epilogue_kernel<T, 1><<<grid, kThreads, 0, stream>>>((const T*)pre, scale, bias, m, n, (T*)y);
  }
  return (int)cudaGetLastError();
}

template <typename T>
int launch_backward_prologue(const void* dy, const void* pre, const float* scale, int64_t m, int64_t n,
                             int64_t splits, void* dpre, float* partial_dc, float* partial_db, cudaStream_t stream) {
  if (n == 0) return 0;
  constexpr int V = vec_width<T>();
  const bool vec = n % V == 0 && aligned16(dy) && aligned16(pre) && aligned16(dpre);
  const int64_t rows_per_split = (m + splits - 1) / splits;
  const int64_t rps = rows_per_split > 0 ? rows_per_split : 1;
  dim3 grid(grid_cols(n, vec ? V : 1), (unsigned)splits);
  if (vec) {
    backward_prologue_kernel<T, V><<<grid, kThreads, 0, stream>>>((const T*)dy, (const T*)pre, scale, m, n, rps,
                                                                   (T*)dpre, partial_dc, partial_db);
  } else {
    backward_prologue_kernel<T, 1><<<grid, kThreads, 0, stream>>>((const T*)dy, (const T*)pre, scale, m, n, rps,
                                                                   (T*)dpre, partial_dc, partial_db);
  }
  return (int)cudaGetLastError();
}

}  // namespace

#define MD_DISPATCH(dtype, fn, ...)                                     \
  switch (dtype) {                                                      \
    case MD_FLOAT32: return fn<float>(__VA_ARGS__);                     \
    case MD_FLOAT16: return fn<__half>(__VA_ARGS__);                    \
    case MD_BFLOAT16: return fn<__nv_bfloat16>(__VA_ARGS__);            \
    default: return (int)cudaErrorInvalidValue;                         \
  }

extern "C" int md_row_sq_norm(const void* w, int dtype, int64_t rows, int64_t cols, int64_t ld, float* out,
                              cudaStream_t stream) {
  MD_DISPATCH(dtype, launch_row_sq_norm, w, rows, cols, ld, out, stream)
}

extern "C" int md_row_norm_finish(const float* wa, const float* bg, const float* b, const float* w2, int64_t rows,
                                  int64_t rank, float scaling, float eps, float* out, cudaStream_t stream) {
  if (rows == 0) return 0;
  const int warps = kThreads / 32;
  row_norm_finish_kernel<<<(unsigned)((rows + warps - 1) / warps), kThreads, 0, stream>>>(
      wa, bg, b, w2, rows, rank, scaling, eps, out);
  return (int)cudaGetLastError();
}

extern "C" int md_dora_forward_epilogue(const void* pre_scale, int dtype, const float* scale, const float* bias,
                                        int64_t m, int64_t n, void* y, cudaStream_t stream) {
  MD_DISPATCH(dtype, launch_forward_epilogue, pre_scale, scale, bias, m, n, y, stream)
}

extern "C" int md_dora_backward_prologue(const void* grad_y, const void* pre_scale, int dtype, const float* scale,
                                         int64_t m, int64_t n, int64_t splits, void* grad_pre, float* partial_dc,
                                         float* partial_db, cudaStream_t stream) {
  MD_DISPATCH(dtype, launch_backward_prologue, grad_y, pre_scale, scale, m, n, splits, grad_pre, partial_dc,
              partial_db, stream)
}
