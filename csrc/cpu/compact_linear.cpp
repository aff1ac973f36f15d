// CPU kernel of masked_dora::compact_linear:  out[:, out_idx] = x[:, in_idx] @ W^T + b (+ residual)
//
// The schema is defined in Python (masked_dora/ops/compact_linear.py, define_compiled_kernel), the
// C++ signature in csrc/kernel_signatures.h:
//   compact_linear_kernel(Tensor x, Tensor weight, Tensor? bias, Tensor? in_idx, Tensor? out_idx,
//                         Tensor? residual, Tensor(a!) out) -> ()
// Contract (checked cheaply here; indices are pre-validated by the caller: int64, unique, in range):
//   x (M, K_in) any strides; weight (N_kept, K_kept) contiguous; bias (N_kept) contiguous;
//   residual (M, out_features) any strides, or the very tensor `out`; out (M, out_features) contiguous.
//   With residual == out (in place): out[:, o_j] += y[:, j], no other column touched. Otherwise every
//   element of out is written: out = (residual or 0) with y[:, j] added at column o_j = out_idx[j]
//   (j without out_idx).
//
// Strategy:
//   * no indices: one multi-threaded BLAS call (addmm / mm into out), nothing else;
//   * with indices: OpenMP (at::parallel_for) over blocks of rows; each block gathers its rows of x
//     into a packed (rows x K_kept) tile (memcpy of runs when the kept indices come in runs), runs the
//     BLAS torch uses (at::addmm, single-threaded inside the parallel region), then writes its rows of
//     out -- residual copy (or zeros) plus the scattered result -- while they are still in cache.
//     With too few rows for every thread to get a block, one block runs with a multi-threaded GEMM.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <vector>

#include "../kernel_signatures.h"

namespace masked_dora {
namespace {

void check_index(const char* name, const std::optional<at::Tensor>& idx, int64_t length) {
  if (!idx.has_value()) return;
  TORCH_CHECK(idx->scalar_type() == at::kLong, "compact_linear_kernel: ", name, " must be int64, got ",
              idx->scalar_type());
  TORCH_CHECK(idx->dim() == 1 && idx->size(0) == length, "compact_linear_kernel: ", name,
              " must be 1-D of length ", length, ", got ", idx->sizes());
  TORCH_CHECK(idx->is_contiguous() && idx->device().is_cpu(), "compact_linear_kernel: ", name,
              " must be a contiguous CPU tensor");
}

// Runs of consecutive kept indices: (source column, packed column, length).
struct Run {
  int64_t src, dst, len;
};

std::vector<Run> index_runs(const int64_t* idx, int64_t n) {
  std::vector<Run> runs;
  for (int64_t k = 0; k < n;) {
    int64_t len = 1;
    while (k + len < n && idx[k + len] == idx[k] + len) ++len;
    runs.push_back({idx[k], k, len});
    k += len;
  }
  return runs;
}

// dst[r - r0, k] = x[r, idx[k]] for rows r0..r1 (dst contiguous, kk columns).
template <typename scalar_t>
void gather_rows(const scalar_t* x, int64_t sx0, int64_t sx1, const int64_t* idx, int64_t kk,
                 const std::vector<Run>& runs, bool use_runs, int64_t r0, int64_t r1, scalar_t* dst) {
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* src = x + r * sx0;
    scalar_t* d = dst + (r - r0) * kk;
    if (use_runs) {
      for (const Run& run : runs) std::memcpy(d + run.dst, src + run.src, run.len * sizeof(scalar_t));
    } else if (sx1 == 1) {
      for (int64_t k = 0; k < kk; ++k) d[k] = src[idx[k]];
    } else {
      for (int64_t k = 0; k < kk; ++k) d[k] = src[idx[k] * sx1];
    }
  }
}

// Rows r0..r1 of out (contiguous, n_out columns) from y (r1 - r0, nk) contiguous:
//   in place (res == out): out[r, o_j] += y[r, j];
//   otherwise:             out[r, :] = res[r, :] (or 0), then out[r, o_j] += y[r, j].
template <typename scalar_t>
void scatter_rows(const scalar_t* y, int64_t nk, const int64_t* oidx, const scalar_t* res, int64_t sr0,
                  int64_t sr1, bool in_place, scalar_t* out, int64_t n_out, int64_t r0, int64_t r1) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* yr = y + (r - r0) * nk;
    scalar_t* orow = out + r * n_out;
    if (!in_place) {
      if (res == nullptr) {
        std::memset(static_cast<void*>(orow), 0, n_out * sizeof(scalar_t));
      } else if (sr1 == 1) {
        std::memcpy(orow, res + r * sr0, n_out * sizeof(scalar_t));
      } else {
        const scalar_t* rrow = res + r * sr0;
        for (int64_t c = 0; c < n_out; ++c) orow[c] = rrow[c * sr1];
      }
    }
    if (res == nullptr && !in_place) {
      for (int64_t j = 0; j < nk; ++j) orow[oidx[j]] = yr[j];
    } else {
      for (int64_t j = 0; j < nk; ++j) {
        const int64_t o = oidx[j];
        orow[o] = static_cast<scalar_t>(static_cast<acc_t>(orow[o]) + static_cast<acc_t>(yr[j]));
      }
    }
  }
}

void compact_linear_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                        const std::optional<at::Tensor>& bias_in, const std::optional<at::Tensor>& in_idx,
                        const std::optional<at::Tensor>& out_idx,
                        const std::optional<at::Tensor>& residual_in, const at::Tensor& out) {
  TORCH_CHECK(x_in.dim() == 2, "compact_linear_kernel: x must be 2-D, got ", x_in.sizes());
  TORCH_CHECK(weight_in.dim() == 2 && weight_in.is_contiguous(),
              "compact_linear_kernel: weight must be a contiguous 2-D tensor");
  const int64_t m = x_in.size(0), n_kept = weight_in.size(0), k_kept = weight_in.size(1);
  const auto dtype = x_in.scalar_type();
  TORCH_CHECK(weight_in.scalar_type() == dtype && out.scalar_type() == dtype,
              "compact_linear_kernel: x, weight and out must share one dtype");
  TORCH_CHECK(out.dim() == 2 && out.size(0) == m && out.is_contiguous(),
              "compact_linear_kernel: out must be contiguous (M, out_features)");
  const int64_t n_out = out.size(1);
  check_index("in_idx", in_idx, k_kept);
  check_index("out_idx", out_idx, n_kept);
  TORCH_CHECK(in_idx.has_value() || x_in.size(1) == k_kept,
              "compact_linear_kernel: x must have weight.size(1) columns without in_idx");
  TORCH_CHECK(out_idx.has_value() || n_out == n_kept,
              "compact_linear_kernel: out must have weight.size(0) columns without out_idx");
  if (bias_in.has_value()) {
    TORCH_CHECK(bias_in->scalar_type() == dtype && bias_in->dim() == 1 && bias_in->size(0) == n_kept &&
                    bias_in->is_contiguous(),
                "compact_linear_kernel: bias must be contiguous (N_kept,) in x's dtype");
  }
  if (residual_in.has_value()) {
    TORCH_CHECK(residual_in->scalar_type() == dtype && residual_in->dim() == 2 &&
                    residual_in->size(0) == m && residual_in->size(1) == n_out,
                "compact_linear_kernel: residual must be (M, out_features) in x's dtype");
  }
  if (m == 0) return;

  // The custom op runs below autograd already; detaching makes sure the ATen calls made from
  // worker threads (whose dispatch TLS may differ) never record a graph.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::Tensor x = x_in.detach();
  const at::Tensor wt = weight_in.detach().t();  // (K_kept, N_kept) view: BLAS reads W transposed
  const std::optional<at::Tensor> bias =
      bias_in.has_value() ? std::optional<at::Tensor>(bias_in->detach()) : std::nullopt;
  const bool has_res = residual_in.has_value();
  const bool in_place = has_res && residual_in->is_same(out);
  const at::Tensor residual = has_res ? residual_in->detach() : at::Tensor();
  at::Tensor out_d = out.detach();

  // out rows [r0, r1) = xg @ W^T (+ bias) (+ residual rows), no scatter
  auto gemm_rows = [&](const at::Tensor& xg, int64_t r0, int64_t r1) {
    at::Tensor ob = out_d.narrow(0, r0, r1 - r0);
    if (has_res) {
      if (in_place) ob.addmm_(xg, wt);
      else at::addmm_out(ob, residual.narrow(0, r0, r1 - r0), xg, wt);
      if (bias.has_value()) ob.add_(*bias);
    } else if (bias.has_value()) {
      at::addmm_out(ob, *bias, xg, wt);
    } else {
      at::mm_out(ob, xg, wt);
    }
  };

  if (!in_idx.has_value() && !out_idx.has_value()) {  // plain compact GEMM: one multi-threaded BLAS call
    gemm_rows(x, 0, m);
    return;
  }

  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const bool single_block = m < 32 * threads;
  int64_t rows_per_block = m;
  if (!single_block) {
    rows_per_block = (m + 2 * threads - 1) / (2 * threads);  // >= 2 blocks per thread
    rows_per_block = std::min<int64_t>(256, std::max<int64_t>(32, (rows_per_block + 15) / 16 * 16));
  }
  const int64_t blocks = (m + rows_per_block - 1) / rows_per_block;
  const int64_t* ip = in_idx.has_value() ? in_idx->const_data_ptr<int64_t>() : nullptr;
  const int64_t* op = out_idx.has_value() ? out_idx->const_data_ptr<int64_t>() : nullptr;
  const std::vector<Run> runs = ip != nullptr ? index_runs(ip, k_kept) : std::vector<Run>();
  // memcpy per run pays off once runs are a few elements long on average (e.g. 8-channel groups)
  const bool use_runs = ip != nullptr && x.stride(1) == 1 && static_cast<int64_t>(runs.size()) * 4 <= k_kept;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "compact_linear_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* rp = has_res ? residual.const_data_ptr<scalar_t>() : nullptr;
    const int64_t sr0 = has_res ? residual.stride(0) : 0, sr1 = has_res ? residual.stride(1) : 0;
    scalar_t* outp = out_d.mutable_data_ptr<scalar_t>();

    auto run_block = [&](int64_t r0, int64_t r1) {
      at::AutoDispatchBelowADInplaceOrView guard;
      const int64_t rb = r1 - r0;
      at::Tensor xg;
      if (ip != nullptr) {
        xg = at::empty({rb, k_kept}, x.options());
        gather_rows<scalar_t>(xp, x.stride(0), x.stride(1), ip, k_kept, runs, use_runs, r0, r1,
                              xg.mutable_data_ptr<scalar_t>());
      } else {
        xg = x.narrow(0, r0, rb);
      }
      if (op == nullptr) {
        gemm_rows(xg, r0, r1);
        return;
      }
      const at::Tensor y = bias.has_value() ? at::addmm(*bias, xg, wt) : at::mm(xg, wt);
      scatter_rows<scalar_t>(y.const_data_ptr<scalar_t>(), n_kept, op, rp, sr0, sr1, in_place, outp, n_out,
                             r0, r1);
    };

    if (single_block) {
      run_block(0, m);  // few rows: the GEMM itself is multi-threaded
    } else {
      at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) run_block(b * rows_per_block, std::min(m, (b + 1) * rows_per_block));
      });
    }
  });
}

}  // namespace

void register_compact_linear_cpu(torch::Library& m) {
  kernels::impl<kernels::CompactLinear>(m, &compact_linear_cpu);
}

}  // namespace masked_dora
