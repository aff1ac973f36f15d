// CPU kernels of masked_dora::dora_linear and dora_linear_backward (the `cpp` backend).
//
// Schemas are defined in Python (masked_dora/ops/dora_linear.py, define_compiled_kernel), C++
// signatures in csrc/kernel_signatures.h:
//   dora_linear_kernel(x, weight, lora_A, lora_B, scaling, scale, bias?) -> (y, P, xA^T)
//   dora_linear_backward_kernel(grad_y, x, weight, lora_A, lora_B, scaling, scale, out, xa)
//       -> (dx, dA, dB, sum_t dy * out, dbias)
// The op passes its output y as `out` (it keeps y, not P, for the backward) and turns sum_t dy * y
// into dscale in Python (masked_dora/ops/dora_linear.py, grad_scale_from_output).
// The math is in masked_dora/ops/dora_linear.py. The GEMMs are the BLAS torch uses (at::mm /
// addmm_); what this file adds is the memory-bound part done in single passes:
//   * forward: y = P * c + zb, one pass over P (the reference does the same with addcmul);
//   * backward: one pass over dy and `out` that writes dP = dy * c and accumulates the column sums
//     sum_t dy * out and dbias = sum_t dy; the reference needs four passes and two M x N
//     temporaries for the same. Column sums are per block of 64 rows, then summed in block order:
//     deterministic whatever the thread count.
// float32/float64 run natively; bfloat16/float16 convert per element to float32 (opmath).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../kernel_signatures.h"

namespace masked_dora {
namespace {

constexpr int64_t kRowBlock = 64;

at::Tensor as_opmath(const at::Tensor& t, at::ScalarType op) { return t.to(op).contiguous(); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> dora_linear_cpu(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& lora_A, const at::Tensor& lora_B,
    double scaling, const at::Tensor& scale, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2, "dora_linear_kernel: x must be 2-D, got ", x.sizes());
  at::Tensor xa = at::mm(x, lora_A.t());
  at::Tensor pre = at::mm(x, weight.t());
  pre.addmm_(xa, lora_B.t(), /*beta=*/1.0, /*alpha=*/scaling);
  at::Tensor y = at::empty_like(pre);
  const int64_t m = pre.size(0), n = pre.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, pre.scalar_type(), "dora_linear_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto op = c10::CppTypeToScalarType<opmath_t>::value;
    at::Tensor c = as_opmath(scale, op);
    std::optional<at::Tensor> zb;
    if (bias.has_value()) zb = as_opmath(*bias, op);
    const opmath_t* cp = c.data_ptr<opmath_t>();
    const opmath_t* bp = zb ? zb->data_ptr<opmath_t>() : nullptr;
    const scalar_t* pp = pre.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, m, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        const scalar_t* prow = pp + i * n;
        scalar_t* yrow = yp + i * n;
        if (bp) {
          for (int64_t j = 0; j < n; ++j) yrow[j] = static_cast<scalar_t>(static_cast<opmath_t>(prow[j]) * cp[j] + bp[j]);
        } else {
          for (int64_t j = 0; j < n; ++j) yrow[j] = static_cast<scalar_t>(static_cast<opmath_t>(prow[j]) * cp[j]);
        }
      }
    });
  });
  return {y, pre, xa};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dora_linear_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& lora_A,
    const at::Tensor& lora_B, double scaling, const at::Tensor& scale, const at::Tensor& pre_scale,
    const at::Tensor& xa) {
  at::Tensor dy = grad_y.to(pre_scale.scalar_type()).contiguous();
  at::Tensor pre = pre_scale.contiguous();
  const int64_t m = dy.size(0), n = dy.size(1);
  const int64_t blocks = std::max<int64_t>(1, (m + kRowBlock - 1) / kRowBlock);
  at::Tensor dpre = at::empty_like(dy);
  at::Tensor grad_scale, grad_bias;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dy.scalar_type(), "dora_linear_backward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto op = c10::CppTypeToScalarType<opmath_t>::value;
    at::Tensor c = as_opmath(scale, op);
    at::Tensor partial_dc = at::zeros({blocks, n}, dy.options().dtype(op));
    at::Tensor partial_db = at::zeros({blocks, n}, dy.options().dtype(op));
    const opmath_t* cp = c.data_ptr<opmath_t>();
    const scalar_t* gp = dy.data_ptr<scalar_t>();
    const scalar_t* pp = pre.data_ptr<scalar_t>();
    scalar_t* dp = dpre.data_ptr<scalar_t>();
    opmath_t* dcp = partial_dc.data_ptr<opmath_t>();
    opmath_t* dbp = partial_db.data_ptr<opmath_t>();
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        opmath_t* dc = dcp + b * n;
        opmath_t* db = dbp + b * n;
        const int64_t r1 = std::min(m, (b + 1) * kRowBlock);
        for (int64_t i = b * kRowBlock; i < r1; ++i) {
          const scalar_t* grow = gp + i * n;
          const scalar_t* prow = pp + i * n;
          scalar_t* drow = dp + i * n;
          for (int64_t j = 0; j < n; ++j) {
            const opmath_t g = static_cast<opmath_t>(grow[j]);
            drow[j] = static_cast<scalar_t>(g * cp[j]);
            dc[j] += g * static_cast<opmath_t>(prow[j]);
            db[j] += g;
          }
        }
      }
    });
    // summed in block order, so the result does not depend on the thread count
    grad_scale = partial_dc.sum(0).to(scale.scalar_type());
    grad_bias = partial_db.sum(0);
  });
  at::Tensor dpre_b = at::mm(dpre, lora_B);
  at::Tensor grad_x = at::mm(dpre, weight);
  grad_x.addmm_(dpre_b, lora_A, 1.0, scaling);
  at::Tensor grad_B = at::mm(dpre.t(), xa).mul_(scaling).to(lora_B.scalar_type());
  at::Tensor grad_A = at::mm(dpre_b.t(), x).mul_(scaling).to(lora_A.scalar_type());
  return {grad_x, grad_A, grad_B, grad_scale, grad_bias};
}

}  // namespace

void register_dora_linear_cpu(torch::Library& m) {
  kernels::impl<kernels::DoraLinear>(m, &dora_linear_cpu);
  kernels::impl<kernels::DoraLinearBackward>(m, &dora_linear_backward_cpu);
}

}  // namespace masked_dora
