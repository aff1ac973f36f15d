// The C++ signature of every compiled kernel op, declared once for the CPU and the CUDA
// implementations alike.
//
// The schemas are defined in Python (masked_dora/ops/*.py, `_registry.define_compiled_kernel`).
// PyTorch requires every backend's implementation of one op to have the same C++ signature, and
// checks it only when the second one registers: at import, where a mismatch used to abort the
// interpreter ("Mismatch in kernel C++ signatures"). Registering through `impl<Kernel>(m, fn)`
// turns that into a compile error: `fn` must convert to `Kernel::fn*` exactly.
//
// Registration runs inside PyInit__C (csrc/module.cpp), not in static initialisers, so an error
// that only the dispatcher can see (a schema that changed in Python, say) becomes an ImportError
// that masked_dora records and falls back from, never a crash.
#pragma once

#include <ATen/Tensor.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace masked_dora {
namespace kernels {

// row_norm_kernel(weight, lora_A, lora_B, scaling, weight_sq?, eps) -> norm (fp32)
struct RowNorm {
  static constexpr const char* name = "row_norm_kernel";
  using fn = at::Tensor(const at::Tensor& weight, const at::Tensor& lora_A, const at::Tensor& lora_B,
                        double scaling, const std::optional<at::Tensor>& weight_sq, double eps);
};

// dora_linear_kernel(x, weight, lora_A, lora_B, scaling, scale, bias?) -> (y, P, x A^T)
struct DoraLinear {
  static constexpr const char* name = "dora_linear_kernel";
  using fn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor& x, const at::Tensor& weight, const at::Tensor& lora_A, const at::Tensor& lora_B,
      double scaling, const at::Tensor& scale, const std::optional<at::Tensor>& bias);
};

// dora_linear_backward_kernel(grad_y, x, weight, lora_A, lora_B, scaling, scale, out, xa)
//     -> (dx, dA, dB, sum_t dy * out, dbias)   (the op passes its output y as `out`)
struct DoraLinearBackward {
  static constexpr const char* name = "dora_linear_backward_kernel";
  using fn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& lora_A,
      const at::Tensor& lora_B, double scaling, const at::Tensor& scale, const at::Tensor& pre_scale,
      const at::Tensor& xa);
};

// compact_linear_kernel(x, weight, bias?, in_idx?, out_idx?, residual?, Tensor(a!) out) -> ()
struct CompactLinear {
  static constexpr const char* name = "compact_linear_kernel";
  using fn = void(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                  const std::optional<at::Tensor>& in_idx, const std::optional<at::Tensor>& out_idx,
                  const std::optional<at::Tensor>& residual, const at::Tensor& out);
};

// Register `fn` as this backend's implementation of `Kernel` (a compile error unless its
// signature is exactly Kernel::fn).
template <class Kernel>
void impl(torch::Library& m, typename Kernel::fn* fn) {
  m.impl(Kernel::name, fn);
}

}  // namespace kernels

// The registrars, one per source file, called by PyInit__C (csrc/module.cpp).
void register_dora_linear_cpu(torch::Library& m);
void register_compact_linear_cpu(torch::Library& m);
#ifdef MASKED_DORA_WITH_CUDA
void register_cuda_kernels(torch::Library& m);
#endif

}  // namespace masked_dora
