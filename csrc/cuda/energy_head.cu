// Fused energy head on CUDA: -T*logsumexp(l/T), -l[y] and the per-sample CE per row of logits,
// and its backward. One launch each. Rows go to groups of `width` threads: a power of two <= 32
// (several rows per 256-thread block, shuffle reductions) or a whole block for long rows (block
// reductions). The forward sweeps a row twice (max, then both sums; the second sweep hits L1/L2),
// the backward three times (the same two, then the write). Outputs are in the accumulation dtype (float32 for half types), as on CPU.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <cmath>
#include <limits>
#include <utility>

#include "../common.h"
#include "../ops.h"
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

template <typename T>
__device__ __forceinline__ bool is_inf_d(T v) {
  return v == std::numeric_limits<T>::infinity() || v == -std::numeric_limits<T>::infinity();
}

// The label of `row`; the host cannot check the range without a sync, so the kernel asserts it.
__device__ __forceinline__ int64_t label_at(const int64_t* y, int64_t row, int64_t classes) {
  const int64_t v = y[row];
  CUDA_KERNEL_ASSERT(v >= 0 && v < classes && "ebjdat: label y out of range [0, K)");
  return v;
}

// A row's shift m (its max, or 0 when that is infinite, as torch.logsumexp: +inf rows give +inf
// and all -inf rows give -inf) and the logs of sum(exp((l - m) * inv_t)) and sum(exp(l - m)),
// each only when asked for (uniform across the launch, as the reductions need). Shifting in
// logit units keeps every exponent <= 0 for any temperature (energy_head.cpp row_stats).
template <typename scalar_t>
struct RowStats {
  at::opmath_type<scalar_t> shift, log_sum_t, log_sum_1;
};

template <typename scalar_t>
__device__ __forceinline__ RowStats<scalar_t> row_stats(
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
    for (int j = 0; j < 4; ++j) {
      if (lane_on(c, j, start, end)) m = max_nan(m, r[j]);
    }
  }
  m = row_allreduce(m, MaxNanOp(), width, red);
  m = is_inf_d(m) ? acc_t(0) : m;
  acc_t st = 0, s1 = 0;
  for (int64_t c = c0 + rs.lane; c < c1; c += width) {
    acc_t r[4];
    load4(logits, c, start, end, vec, r);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (lane_on(c, j, start, end)) {
        const acc_t z = r[j] - m;
        if (need_t) st += exp_d(z * inv_t);
        if (need_1) s1 += exp_d(z);
      }
    }
  }
  if (need_t) st = row_allreduce(st, SumOp(), width, red);
  if (need_1) s1 = row_allreduce(s1, SumOp(), width, red);
  return RowStats<scalar_t>{m, log_d(st), log_d(s1)};
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
  const RowStats<scalar_t> st =
      row_stats(logits, start, end, rs, width, vec, inv_t, !unit_t, unit_t || y, red);

  if (rs.valid && rs.lane == 0) {
    const acc_t lse1 = st.shift + st.log_sum_1;
    energy[rs.row] = unit_t ? -lse1 : -(st.shift + t * st.log_sum_t);
    if (y) {
      const int64_t yv = label_at(y, rs.row, classes);
      const acc_t ly = (yv >= 0 && yv < classes) ? static_cast<acc_t>(logits[start + yv])
                                                 : std::numeric_limits<acc_t>::quiet_NaN();
      cond[rs.row] = -ly;
      ce[rs.row] = lse1 - ly;
    }
  }
}

// d energy / dl = -softmax(l / T); d ce / dl = softmax(l) - onehot(y); d cond / dl = -onehot(y).
// The row's shift and log-sums are recomputed (see prepare_energy_backward in common.h), so the
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
  const RowStats<scalar_t> st =
      row_stats(logits, start, end, rs, width, vec, inv_t, ge != nullptr, gx != nullptr, red);
  if (!rs.valid) return;
  const int64_t yv = y ? label_at(y, b, classes) : -1;
  const acc_t se = ge ? ge[b] : acc_t(0);
  const acc_t sx = gx ? gx[b] : acc_t(0);
  const acc_t at_y = (gc ? -gc[b] : acc_t(0)) - sx;

  for (int64_t c = start / 4 + rs.lane; c < (end + 3) / 4; c += width) {
    acc_t r[4], v[4];
    load4(logits, c, start, end, vec, r);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const acc_t z = r[j] - st.shift;
      acc_t o = 0;
      if (ge) o -= se * exp_d(z * inv_t - st.log_sum_t);
      if (gx) o += sx * exp_d(z - st.log_sum_1);
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

}  // namespace

EnergyOut energy_head_cuda(const at::Tensor& logits_in, const OptTensor& y, double temperature) {
  const EnergyForward f = prepare_energy_forward(logits_in, y, temperature);
  const at::Tensor &logits = f.logits, &yl = f.y, &energy = f.energy, &cond = f.cond, &ce = f.ce;
  const int64_t batch = logits.size(0), classes = logits.size(1);
  if (batch == 0) return {energy, cond, ce};
  const c10::cuda::CUDAGuard guard(logits.device());
  const int width = row_width(classes);
  const std::pair<unsigned int, int> shape = row_launch(batch, width);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "energy_head_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t t = static_cast<acc_t>(temperature);
    const scalar_t* lp = logits.const_data_ptr<scalar_t>();
    const int64_t* yp = yl.defined() ? yl.const_data_ptr<int64_t>() : nullptr;
    acc_t* cp = yp ? cond.mutable_data_ptr<acc_t>() : nullptr;
    acc_t* xp = yp ? ce.mutable_data_ptr<acc_t>() : nullptr;
    energy_fwd_kernel<scalar_t><<<shape.first, shape.second, 0, stream>>>(
        lp, yp, energy.mutable_data_ptr<acc_t>(), cp, xp, batch, classes, width, aligned4(lp), t,
        static_cast<acc_t>(1.0 / temperature), temperature == 1.0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {energy, cond, ce};
}

at::Tensor energy_head_backward_cuda(const at::Tensor& logits_in, const OptTensor& y,
                                    const OptTensor& grad_energy, const OptTensor& grad_cond,
                                    const OptTensor& grad_ce, double temperature) {
  const EnergyBackward in =
      prepare_energy_backward(logits_in, y, grad_energy, grad_cond, grad_ce, temperature);
  const at::Tensor &logits = in.logits, &yl = in.y;
  const at::Tensor &ge = in.grad_energy, &gc = in.grad_cond, &gx = in.grad_ce, &grad = in.grad;
  const int64_t batch = logits.size(0), classes = logits.size(1);
  if (grad.numel() == 0) return grad;
  const c10::cuda::CUDAGuard guard(logits.device());
  const int width = row_width(classes);
  const std::pair<unsigned int, int> shape = row_launch(batch, width);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "energy_head_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* lp = logits.const_data_ptr<scalar_t>();
    scalar_t* gp = grad.mutable_data_ptr<scalar_t>();
    auto ptr = [](const at::Tensor& v) { return v.defined() ? v.const_data_ptr<acc_t>() : nullptr; };
    energy_bwd_kernel<scalar_t><<<shape.first, shape.second, 0, stream>>>(
        lp, yl.defined() ? yl.const_data_ptr<int64_t>() : nullptr, ptr(ge), ptr(gc), ptr(gx), gp,
        batch, classes, width, aligned4(lp) && aligned4<scalar_t>(gp),
        static_cast<acc_t>(1.0 / temperature));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace ebjdat
