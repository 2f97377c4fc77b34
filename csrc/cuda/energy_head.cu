// Fused energy head on CUDA: -T*logsumexp(l/T), -l[y] and the per-sample CE per row of logits,
// and its backward. One launch each. Rows go to groups of `width` threads: a power of two <= 32
// (several rows per 256-thread block, shuffle reductions) or a whole block for long rows (block
// reductions). The forward sweeps a row twice (max, then both sums; the second sweep hits L1/L2),
// the backward once. Outputs are in the accumulation dtype (float32 for half types), as on CPU.
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

template <typename scalar_t>
__global__ void energy_fwd_kernel(const scalar_t* logits, const int64_t* y,
                                  at::opmath_type<scalar_t>* energy,
                                  at::opmath_type<scalar_t>* cond, at::opmath_type<scalar_t>* ce,
                                  int64_t rows, int64_t classes, int width, bool vec,
                                  at::opmath_type<scalar_t> t, at::opmath_type<scalar_t> inv_t,
                                  bool unit_t) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr acc_t inf = std::numeric_limits<acc_t>::infinity();
  __shared__ acc_t red[32];
  const RowSlot rs = row_slot(rows, width);
  const int64_t start = rs.valid ? rs.row * classes : 0;
  const int64_t end = rs.valid ? start + classes : 0;
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

  // The max shift of torch.logsumexp: an infinite max is not subtracted, so +inf rows give +inf
  // and all -inf rows give -inf (row_lse in the CPU kernel).
  acc_t m1 = m, mt = inv_t * m;
  m1 = is_inf_d(m1) ? acc_t(0) : m1;
  mt = is_inf_d(mt) ? acc_t(0) : mt;
  acc_t s1 = 0, st = 0;
  for (int64_t c = c0 + rs.lane; c < c1; c += width) {
    acc_t r[4];
    load4(logits, c, start, end, vec, r);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (lane_on(c, j, start, end)) {
        s1 += exp_d(r[j] - m1);
        if (!unit_t) st += exp_d(inv_t * r[j] - mt);
      }
    }
  }
  s1 = row_allreduce(s1, SumOp(), width, red);
  if (!unit_t) st = row_allreduce(st, SumOp(), width, red);

  if (rs.valid && rs.lane == 0) {
    const acc_t lse1 = log_d(s1) + m1;
    energy[rs.row] = unit_t ? -lse1 : -t * (log_d(st) + mt);
    if (y) {
      const int64_t yv = label_at(y, rs.row, classes);
      const acc_t ly = (yv >= 0 && yv < classes) ? static_cast<acc_t>(logits[start + yv])
                                                 : std::numeric_limits<acc_t>::quiet_NaN();
      cond[rs.row] = -ly;
      ce[rs.row] = lse1 - ly;
    }
  }
}

// d energy / dl = -softmax(l / T) with logsumexp(l / T) = -energy / T; d ce / dl = softmax(l) -
// onehot(y) with logsumexp(l) = ce + l[y]; d cond / dl = -onehot(y). No reductions needed.
template <typename scalar_t>
__global__ void energy_bwd_kernel(const scalar_t* logits, const int64_t* y,
                                  const at::opmath_type<scalar_t>* ge,
                                  const at::opmath_type<scalar_t>* gc,
                                  const at::opmath_type<scalar_t>* gx,
                                  const at::opmath_type<scalar_t>* energy,
                                  const at::opmath_type<scalar_t>* ce, scalar_t* grad,
                                  int64_t rows, int64_t classes, int width, bool vec,
                                  at::opmath_type<scalar_t> t, at::opmath_type<scalar_t> inv_t) {
  using acc_t = at::opmath_type<scalar_t>;
  const RowSlot rs = row_slot(rows, width);
  if (!rs.valid) return;
  const int64_t b = rs.row;
  const int64_t start = b * classes, end = start + classes;
  const int64_t yv = y ? label_at(y, b, classes) : -1;
  const bool y_ok = yv >= 0 && yv < classes;
  const acc_t se = ge ? ge[b] : acc_t(0);
  const acc_t lse_t = -energy[b] / t;
  const acc_t sx = gx ? gx[b] : acc_t(0);
  acc_t lse1 = 0;
  if (gx) {
    lse1 = y_ok ? ce[b] + static_cast<acc_t>(logits[start + yv])
                : std::numeric_limits<acc_t>::quiet_NaN();
  }
  const acc_t at_y = (gc ? -gc[b] : acc_t(0)) - sx;

  for (int64_t c = start / 4 + rs.lane; c < (end + 3) / 4; c += width) {
    acc_t r[4], v[4];
    load4(logits, c, start, end, vec, r);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      acc_t o = 0;
      if (ge) o -= se * exp_d(r[j] * inv_t - lse_t);
      if (gx) o += sx * exp_d(r[j] - lse1);
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
        acc_t(1) / t, temperature == 1.0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {energy, cond, ce};
}

at::Tensor energy_head_backward_cuda(const at::Tensor& logits_in, const OptTensor& y,
                                    const at::Tensor& energy_in, const at::Tensor& ce_in,
                                    const OptTensor& grad_energy, const OptTensor& grad_cond,
                                    const OptTensor& grad_ce, double temperature) {
  const EnergyBackward in = prepare_energy_backward(logits_in, y, energy_in, ce_in, grad_energy,
                                                    grad_cond, grad_ce, temperature);
  const at::Tensor &logits = in.logits, &yl = in.y, &energy = in.energy, &ce = in.ce;
  const at::Tensor &ge = in.grad_energy, &gc = in.grad_cond, &gx = in.grad_ce, &grad = in.grad;
  const int64_t batch = logits.size(0), classes = logits.size(1);
  if (grad.numel() == 0) return grad;
  const c10::cuda::CUDAGuard guard(logits.device());
  const int width = row_width(classes);
  const std::pair<unsigned int, int> shape = row_launch(batch, width);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "energy_head_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t t = static_cast<acc_t>(temperature);
    const scalar_t* lp = logits.const_data_ptr<scalar_t>();
    scalar_t* gp = grad.mutable_data_ptr<scalar_t>();
    auto ptr = [](const at::Tensor& v) { return v.defined() ? v.const_data_ptr<acc_t>() : nullptr; };
    energy_bwd_kernel<scalar_t><<<shape.first, shape.second, 0, stream>>>(
        lp, yl.defined() ? yl.const_data_ptr<int64_t>() : nullptr, ptr(ge), ptr(gc), ptr(gx),
        ptr(energy), ptr(ce), gp, batch, classes, width, aligned4(lp) && aligned4<scalar_t>(gp),
        t, acc_t(1) / t);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace ebjdat
