// CUDA implementations of the masked_dora kernel ops. The schemas are defined
// once, in Python (masked_dora/ops/*.py, `_registry.define_compiled_kernel`), their C++
// signatures once in csrc/kernel_signatures.h (shared with the CPU kernels, so a mismatch is a
// compile error); this file only implements them for the CUDA dispatch key.
//
// Work split: the GEMMs are cuBLAS calls through ATen (at::mm / addmm_), the
// elementwise and reduction passes around them are the kernels of
// dora_kernels.cu, and compact_linear is the WMMA gather/scatter GEMM of
// compact_linear_kernels.cu. Inputs are validated by the Python entry points
// before they get here; the TORCH_CHECKs below guard the kernel contracts.
//
// STATUS: compile-checked (g++ -fsyntax-only against torch's and CUDA's headers,
// tests/test_cuda_sources.py) and built + imported against torch 2.11 CUDA 13.0 in CI
// (.ci/cuda_build_check.sh). Ran once on an H100 (2026-11-27, bench/results/2026-11-27-h100.md):
// memcheck-clean and within tolerance of float64 at the selftest's quick shapes. The backward's
// split count for 16-byte column strips came after that run: UNRUN on a GPU.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../kernel_signatures.h"
#include "kernels_abi.h"

namespace masked_dora {
namespace {

int dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return MD_FLOAT32;
    case at::kHalf: return MD_FLOAT16;
    case at::kBFloat16: return MD_BFLOAT16;
    default: TORCH_CHECK(false, "masked_dora CUDA kernels: unsupported dtype ", t.scalar_type(),
                         " (expected float32, float16 or bfloat16)");
  }
  return -1;
}

void check_launch(int err, const char* what) {
  TORCH_CHECK(err == 0, "masked_dora CUDA kernel ", what, " failed: ", cudaGetErrorString((cudaError_t)err));
}

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "masked_dora CUDA kernels: ", name, " must be a CUDA tensor, got ", t.device());
}

cudaStream_t stream_of(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.get_device()).stream(); }

at::Tensor f32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

// ---------------------------------------------------------------- row_norm

at::Tensor row_norm_cuda(const at::Tensor& weight, const at::Tensor& lora_A, const at::Tensor& lora_B,
                         double scaling, const std::optional<at::Tensor>& weight_sq, double eps) {
  check_cuda(weight, "weight");
  c10::cuda::CUDAGuard guard(weight.device());
  const int64_t rows = weight.size(0), cols = weight.size(1), rank = lora_A.size(0);
  auto opts = weight.options().dtype(at::kFloat);
  at::Tensor w2;
  if (weight_sq.has_value()) {
    w2 = f32(*weight_sq);
  } else {
    at::Tensor w = weight.stride(1) == 1 ? weight : weight.contiguous();
    w2 = at::empty({rows}, opts);
    check_launch(md_row_sq_norm(w.data_ptr(), dtype_code(w), rows, cols, w.stride(0), w2.data_ptr<float>(),
                                stream_of(w)),
                 "row_sq_norm");
  }
  // N x r: the one read of W0 (cuBLAS), products accumulated and returned in fp32 (never rounded to half)
  at::Tensor wa = (weight.scalar_type() == at::kFloat ? at::mm(weight, lora_A.t())
                                                      : at::mm(weight, lora_A.t(), at::kFloat)).contiguous();
  at::Tensor a = f32(lora_A), b = f32(lora_B);
  at::Tensor bg = at::mm(b, at::mm(a, a.t())).contiguous();  // B (A A^T), N x r
  at::Tensor out = at::empty({rows}, opts);
  check_launch(md_row_norm_finish(wa.data_ptr<float>(), bg.data_ptr<float>(), b.data_ptr<float>(),
                                  w2.data_ptr<float>(), rows, rank, (float)scaling, (float)eps,
                                  out.data_ptr<float>(), stream_of(weight)),
               "row_norm_finish");
  return out;
}

// ---------------------------------------------------------------- dora_linear forward / backward

std::tuple<at::Tensor, at::Tensor, at::Tensor> dora_linear_cuda(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& lora_A, const at::Tensor& lora_B,
    double scaling, const at::Tensor& scale, const std::optional<at::Tensor>& bias) {
  check_cuda(x, "x");
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor xa = at::mm(x, lora_A.t());                              // M x r
  at::Tensor pre = at::mm(x, weight.t());                             // cuBLAS
  pre.addmm_(xa, lora_B.t(), /*beta=*/1.0, /*alpha=*/scaling);        // + s (x A^T) B^T, in place
  at::Tensor y = at::empty_like(pre);
  at::Tensor c = f32(scale);
  std::optional<at::Tensor> zb = bias.has_value() ? std::optional<at::Tensor>(f32(*bias)) : std::nullopt;
  check_launch(md_dora_forward_epilogue(pre.data_ptr(), dtype_code(pre), c.data_ptr<float>(),
                                        zb ? zb->data_ptr<float>() : nullptr, pre.size(0), pre.size(1),
                                        y.data_ptr(), stream_of(x)),
               "dora_forward_epilogue");
  return {y, pre, xa};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dora_linear_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& lora_A,
    const at::Tensor& lora_B, double scaling, const at::Tensor& scale, const at::Tensor& pre_scale,
    const at::Tensor& xa) {
  check_cuda(x, "x");
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor dy = grad_y.to(pre_scale.scalar_type()).contiguous();
  at::Tensor pre = pre_scale.contiguous();
  const int64_t m = dy.size(0), n = dy.size(1);
  // enough row splits to fill the GPU with column strips, few enough that the partials stay small; a thread
  // covers 16 bytes of columns where the kernel can use 16-byte accesses (n a multiple of them)
  const int64_t vec = n % (16 / dy.element_size()) == 0 ? 16 / dy.element_size() : 1;
  const int64_t col_blocks = (n / vec + 255) / 256;
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>((m + 31) / 32, (1024 + col_blocks - 1) / col_blocks));
  auto f32_opts = dy.options().dtype(at::kFloat);
  at::Tensor partial_dc = at::empty({splits, n}, f32_opts), partial_db = at::empty({splits, n}, f32_opts);
  at::Tensor dpre = at::empty_like(dy);
  at::Tensor c = f32(scale);
  check_launch(md_dora_backward_prologue(dy.data_ptr(), pre.data_ptr(), dtype_code(dy), c.data_ptr<float>(), m, n,
                                         splits, dpre.data_ptr(), partial_dc.data_ptr<float>(),
                                         partial_db.data_ptr<float>(), stream_of(x)),
               "dora_backward_prologue");
  at::Tensor grad_scale = partial_dc.sum(0).to(scale.scalar_type());
  at::Tensor grad_bias = partial_db.sum(0);
  at::Tensor dpre_b = at::mm(dpre, lora_B);                          // M x r
  at::Tensor grad_x = at::mm(dpre, weight);
  grad_x.addmm_(dpre_b, lora_A, 1.0, scaling);
  at::Tensor grad_B = at::mm(dpre.t(), xa).mul_(scaling).to(lora_B.scalar_type());
  at::Tensor grad_A = at::mm(dpre_b.t(), x).mul_(scaling).to(lora_A.scalar_type());
  return {grad_x, grad_A, grad_B, grad_scale, grad_bias};
}

// ---------------------------------------------------------------- compact_linear

void compact_linear_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& in_idx, const std::optional<at::Tensor>& out_idx,
                         const std::optional<at::Tensor>& residual, const at::Tensor& out) {
  check_cuda(x, "x");
  c10::cuda::CUDAGuard guard(x.device());
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && out.dim() == 2, "compact_linear CUDA kernel: 2-D x, weight, out");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type() && out.scalar_type() == x.scalar_type(),
              "compact_linear CUDA kernel: x, weight and out must share one dtype");
  TORCH_CHECK(out.stride(1) == 1, "compact_linear CUDA kernel: out must be contiguous in its last dimension");
  at::Tensor xc = x.stride(1) == 1 ? x : x.contiguous();
  at::Tensor w = weight.contiguous();
  std::optional<at::Tensor> b = bias.has_value() ? std::optional<at::Tensor>(f32(*bias)) : std::nullopt;
  std::optional<at::Tensor> res;
  if (residual.has_value()) res = residual->stride(1) == 1 ? *residual : residual->contiguous();
  std::optional<at::Tensor> ii, oi;
  if (in_idx.has_value()) ii = in_idx->to(at::kLong).contiguous();
  if (out_idx.has_value()) oi = out_idx->to(at::kLong).contiguous();
  check_launch(md_compact_linear(xc.data_ptr(), xc.stride(0), ii ? ii->data_ptr<int64_t>() : nullptr, w.data_ptr(),
                                 dtype_code(w), b ? b->data_ptr<float>() : nullptr,
                                 oi ? oi->data_ptr<int64_t>() : nullptr, res ? res->data_ptr() : nullptr,
                                 res ? res->stride(0) : 0, out.data_ptr(), out.stride(0), xc.size(0), w.size(0),
                                 w.size(1), stream_of(x)),
               "compact_linear");
}

}  // namespace

void register_cuda_kernels(torch::Library& m) {
  kernels::impl<kernels::RowNorm>(m, &row_norm_cuda);
  kernels::impl<kernels::DoraLinear>(m, &dora_linear_cuda);
  kernels::impl<kernels::DoraLinearBackward>(m, &dora_linear_backward_cuda);
  kernels::impl<kernels::CompactLinear>(m, &compact_linear_cuda);
}

}  // namespace masked_dora
