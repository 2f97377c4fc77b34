// Fused energy head on CUDA: -T*logsumexp(l/T), -l[y] and the per-sample CE per row of logits,
// and its backward. One launch each. Rows go to groups of `width` threads: a power of two <= 32
// (several rows per 256-thread block, shuffle reductions) or a whole block for long rows (block
// reductions). The forward sweeps a row twice (max, then both sums; the second sweep hits L1/L2),
// the backward three times (the same two, then the write). The formulas are csrc/energy_head.h's,
// the ones the CPU kernel runs.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <limits>
#include <utility>

#include "../energy_head.h"
#include "cuda_common.cuh"

namespace ebjdat {
namespace {

using namespace ebjdat::cuda;

// This thread's row, its lane in the row's group, and whether the row exists (the last block's
// spare groups still take part in the shuffles, with an empty row).
struct RowSlot {
  int64_t row;
  int lane;
  bool valid;
};

__device__ __forceinline__ RowSlot row_slot(int64_t rows, int width) {
  if (width > 32) return RowSlot{static_cast<int64_t>(blockIdx.x), static_cast<int>(threadIdx.x), true};
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / width) + threadIdx.x / width;
  return RowSlot{row, static_cast<int>(threadIdx.x % width), row < rows};
}

template <typename T, typename Op>
__device__ __forceinline__ T row_allreduce(T v, Op op, int width, T* buf) {
  return width > 32 ? block_allreduce(v, op, buf) : group_allreduce(v, op, width);
}

// The label of `row`; the host cannot check the range without a sync, so the kernel asserts it.
__device__ __forceinline__ int64_t label_at(const int64_t* y, int64_t row, int64_t classes) {
  const int64_t v = y[row];
  CUDA_KERNEL_ASSERT(v >= 0 && v < classes && "ebjdat: label y out of range [0, K)");
  return v;
}

// The row's statistics (csrc/energy_head.h): a max sweep, then a sweep for both sums. `need_t` and
// `need_1` are uniform across the launch, as the reductions need.
template <typename scalar_t>
__device__ __forceinline__ RowStats<at::opmath_type<scalar_t>> row_stats(
    const scalar_t* logits, int64_t start, int64_t end, const RowSlot& rs, int width, bool vec,
    at::opmath_type<scalar_t> inv_t, bool need_t, bool need_1, at::opmath_type<scalar_t>* red) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr acc_t inf = std::numeric_limits<acc_t>::infinity();
  const int64_t c0 = start / 4, c1 = (end + 3) / 4;
  acc_t m = -inf;
  for (int64_t c = c0 + rs.lane; c < c1; c += width) {
    acc_t r[4];
    load4(logits, c, start, end, vec, r, -inf);
#pragma unroll
    for (int j = 0; j < 4; ++j) m = max_nan(m, r[j]);
  }
  m = row_shift(row_allreduce(m, MaxNanOp(), width, red));
  acc_t st = 0, s1 = 0;
  for (int64_t c = c0 + rs.lane; c < c1; c += width) {
    acc_t r[4];
    load4(logits, c, start, end, vec, r, -inf);  // lanes outside the row add exactly 0
#pragma unroll
    for (int j = 0; j < 4; ++j) add_row_terms(r[j] - m, inv_t, need_t, need_1, st, s1, ScalarExp{});
  }
  if (need_t) st = row_allreduce(st, SumOp(), width, red);
  if (need_1) s1 = row_allreduce(s1, SumOp(), width, red);
  return row_stats_of(m, st, s1, need_t, need_1);
}

template <typename scalar_t>
__global__ void energy_fwd_kernel(const scalar_t* logits, const int64_t* y,
                                  at::opmath_type<scalar_t>* energy,
                                  at::opmath_type<scalar_t>* cond, at::opmath_type<scalar_t>* ce,
                                  int64_t rows, int64_t classes, int width, bool vec,
                                  at::opmath_type<scalar_t> t, at::opmath_type<scalar_t> inv_t,
                                  bool unit_t) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t red[32];
  const RowSlot rs = row_slot(rows, width);
  const int64_t start = rs.valid ? rs.row * classes : 0;
  const int64_t end = rs.valid ? start + classes : 0;
  const RowStats<acc_t> st =
      row_stats(logits, start, end, rs, width, vec, inv_t, !unit_t, unit_t || y, red);

  if (rs.valid && rs.lane == 0) {
    acc_t ly = 0;
    if (y) {
      const int64_t yv = label_at(y, rs.row, classes);
      ly = (yv >= 0 && yv < classes) ? static_cast<acc_t>(logits[start + yv])
                                     : std::numeric_limits<acc_t>::quiet_NaN();
    }
    const EnergyRow<acc_t> out = energy_row(st, t, unit_t, ly);
    energy[rs.row] = out.energy;
    if (y) {
      cond[rs.row] = out.cond;
      ce[rs.row] = out.ce;
    }
  }
}

// The gradient of energy_grad and energy_grad_at_label. The row's shift and log-sums are
// recomputed (see prepare_energy_backward in csrc/energy_head.h), so the
// backward sweeps a row three times (the last two hit L1/L2), like the forward plus the write.
template <typename scalar_t>
__global__ void energy_bwd_kernel(const scalar_t* logits, const int64_t* y,
                                  const at::opmath_type<scalar_t>* ge,
                                  const at::opmath_type<scalar_t>* gc,
                                  const at::opmath_type<scalar_t>* gx, scalar_t* grad,
                                  int64_t rows, int64_t classes, int width, bool vec,
                                  at::opmath_type<scalar_t> inv_t) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t red[32];
  // Spare groups of the last block still take part in the row reductions, with an empty row.
  const RowSlot rs = row_slot(rows, width);
  const int64_t b = rs.row;
  const int64_t start = rs.valid ? b * classes : 0;
  const int64_t end = rs.valid ? start + classes : 0;
  const RowStats<acc_t> st =
      row_stats(logits, start, end, rs, width, vec, inv_t, ge != nullptr, gx != nullptr, red);
  if (!rs.valid) return;
  const int64_t yv = y ? label_at(y, b, classes) : -1;
  const acc_t se = ge ? ge[b] : acc_t(0);
  const acc_t sx = gx ? gx[b] : acc_t(0);
  const acc_t at_y = energy_grad_at_label(gc != nullptr, gc ? gc[b] : acc_t(0), sx);

  for (int64_t c = start / 4 + rs.lane; c < (end + 3) / 4; c += width) {
    acc_t r[4], v[4];
    load4(logits, c, start, end, vec, r);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      acc_t o = energy_grad(r[j] - st.shift, se, sx, inv_t, st.log_sum_t, st.log_sum_1,
                            ge != nullptr, gx != nullptr, ScalarExp{});
      if (y && 4 * c + j - start == yv) o += at_y;
      v[j] = o;
    }
    store4(grad, c, start, end, vec, v);
  }
}

// Threads per row: a power of two <= 32 for short rows (about two groups of four per thread),
// else a block of 64..1024 threads (a multiple of 32) for one row.
int row_width(int64_t classes) {
  const int64_t groups = (classes + 3) / 4 + 1;  // + 1: a row may straddle one extra group
  if (groups <= 64) {
    int w = 1;
    while (w < (groups + 1) / 2) w *= 2;
    return w;
  }
  return per_item_threads(groups, 64, 1024);
}

// Launch shape for `rows` rows of `width` threads each.
std::pair<unsigned int, int> row_launch(int64_t rows, int width) {
  if (width > 32) return {item_grid(rows), width};
  const int64_t per_block = kThreads / width;
  return {item_grid((rows + per_block - 1) / per_block), kThreads};
}

void energy_forward_into(const EnergyForward& f, double temperature) {
  const at::Tensor& logits = f.logits;
  const int64_t batch = logits.size(0), classes = logits.size(1);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int width = row_width(classes);
  const std::pair<unsigned int, int> shape = row_launch(batch, width);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "energy_head_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t t = static_cast<acc_t>(temperature);
    const scalar_t* lp = logits.const_data_ptr<scalar_t>();
    const int64_t* yp = f.y.defined() ? f.y.const_data_ptr<int64_t>() : nullptr;
    acc_t* cp = yp ? f.cond.mutable_data_ptr<acc_t>() : nullptr;
    acc_t* xp = yp ? f.ce.mutable_data_ptr<acc_t>() : nullptr;
    energy_fwd_kernel<scalar_t><<<shape.first, shape.second, 0, stream>>>(
        lp, yp, f.energy.mutable_data_ptr<acc_t>(), cp, xp, batch, classes, width, aligned4(lp), t,
        static_cast<acc_t>(1.0 / temperature), temperature == 1.0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void energy_backward_into(const EnergyBackward& in, double temperature) {
  const at::Tensor& logits = in.logits;
  const int64_t batch = logits.size(0), classes = logits.size(1);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int width = row_width(classes);
  const std::pair<unsigned int, int> shape = row_launch(batch, width);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "energy_head_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* lp = logits.const_data_ptr<scalar_t>();
    scalar_t* gp = in.grad.mutable_data_ptr<scalar_t>();
    auto ptr = [](const at::Tensor& v) { return v.defined() ? v.const_data_ptr<acc_t>() : nullptr; };
    energy_bwd_kernel<scalar_t><<<shape.first, shape.second, 0, stream>>>(
        lp, in.y.defined() ? in.y.const_data_ptr<int64_t>() : nullptr, ptr(in.grad_energy),
        ptr(in.grad_cond), ptr(in.grad_ce), gp, batch, classes, width,
        aligned4(lp) && aligned4<scalar_t>(gp), static_cast<acc_t>(1.0 / temperature));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace ebjdat

TORCH_LIBRARY_IMPL(ebjdat, CUDA, m) {
  m.impl("energy_head", &ebjdat::energy_head_kernel<ebjdat::energy_forward_into>);
  m.impl("energy_head_backward",
         &ebjdat::energy_head_backward_kernel<ebjdat::energy_backward_into>);
}
