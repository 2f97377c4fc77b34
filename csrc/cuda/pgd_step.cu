// PGD step + eps-ball projection + clamp on CUDA, one launch.
// L-inf: flat grid-stride over groups of four, one pass (read x_adv, grad, x_orig; write out).
// L2: one block per sample with three sweeps, as the CPU kernel: ||g||^2, then ||delta||^2, then
// the write (a norm that would overflow or underflow takes one more, scaled sweep, as on CPU).
// When the sample fits in shared memory (kCache), sweep 1 stages it there, so global memory is
// read once and written once; otherwise sweeps 2 and 3 re-read it from global memory (through L2
// when the resident samples fit): up to 7 reads + 1 write per element. The formulas are PgdStep's
// (csrc/pgd_step.h), the ones the CPU kernel runs.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../pgd_step.h"
#include "cuda_common.cuh"

namespace ebjdat {
namespace {

using namespace ebjdat::cuda;

template <typename scalar_t>
__global__ void pgd_step_linf_kernel(const scalar_t* xa, const scalar_t* g, const scalar_t* xo,
                                     scalar_t* out, int64_t n, bool vec, bool project,
                                     PgdStep<at::opmath_type<scalar_t>> op) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t groups = (n + 3) / 4;
  EBJDAT_GROUP_LOOP(c, groups) {
    acc_t av[4], gv[4], ov[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)}, v[4];
    load4(xa, c, 0, n, vec, av);
    load4(g, c, 0, n, vec, gv);
    if (project) load4(xo, c, 0, n, vec, ov);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      v[j] = project ? op.template linf<true>(av[j], gv[j], ov[j])
                     : op.template linf<false>(av[j], gv[j], ov[j]);
    }
    store4(out, c, 0, n, vec, v);
  }
}

// Shared-memory stage for one sample: per tensor, the groups [c0, c1) at offset 4 * (c - c0), so
// full groups stay 16-byte aligned and move as vectors.
template <typename scalar_t>
struct Stage {
  scalar_t* p;
  int64_t c0, lo, hi;  // lo/hi: the sample's range in stage coordinates
  __device__ void put(int64_t c, const at::opmath_type<scalar_t> (&v)[4]) const {
    store4(p, c - c0, lo, hi, true, v);
  }
  __device__ void get(int64_t c, at::opmath_type<scalar_t> (&v)[4]) const {
    load4(p, c - c0, lo, hi, true, v);
  }
};

template <typename scalar_t, bool kCache>
__global__ void pgd_step_l2_kernel(const scalar_t* xa, const scalar_t* g, const scalar_t* xo,
                                   scalar_t* out, int64_t d, bool vec, bool project,
                                   PgdStep<at::opmath_type<scalar_t>> op) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t red[32];
  extern __shared__ __align__(32) unsigned char stage_mem[];
  const int64_t start = static_cast<int64_t>(blockIdx.x) * d, end = start + d;
  const int64_t c0 = start / 4, c1 = (end + 3) / 4;
  const int64_t span = 4 * (c1 - c0);
  scalar_t* sp = reinterpret_cast<scalar_t*>(stage_mem);
  const Stage<scalar_t> sg{sp, c0, start - 4 * c0, end - 4 * c0};
  const Stage<scalar_t> sa{sp + span, c0, sg.lo, sg.hi};
  const Stage<scalar_t> so{sp + 2 * span, c0, sg.lo, sg.hi};

  // Sweep 1: ||g||^2 and max|g| (and, cached, stage the sample).
  acc_t gss = 0, gmax = 0;
  for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
    acc_t gv[4];
    load4(g, c, start, end, vec, gv);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      gss += gv[j] * gv[j];
      gmax = max_nan(gmax, gv[j] < 0 ? -gv[j] : gv[j]);
    }
    if constexpr (kCache) {
      acc_t av[4];
      sg.put(c, gv);
      load4(xa, c, start, end, vec, av);
      sa.put(c, av);
      if (project) {
        acc_t ov[4];
        load4(xo, c, start, end, vec, ov);
        so.put(c, ov);
      }
    }
  }
  gss = block_allreduce(gss, SumOp(), red);  // its barriers also publish the stage
  gmax = block_allreduce(gmax, MaxNanOp(), red);

  auto load = [&](int64_t c, acc_t(&av)[4], acc_t(&gv)[4], acc_t(&ov)[4]) {
    if constexpr (kCache) {
      sa.get(c, av);
      sg.get(c, gv);
      if (project) so.get(c, ov);
    } else {
      load4(xa, c, start, end, vec, av);
      load4(g, c, start, end, vec, gv);
      if (project) load4(xo, c, start, end, vec, ov);
    }
  };
  auto load_g = [&](int64_t c, acc_t(&gv)[4]) {
    if constexpr (kCache) {
      sg.get(c, gv);
    } else {
      load4(g, c, start, end, vec, gv);
    }
  };

  // A norm out of the direct range is summed again, scaled (l2_direct / l2_prescale in
  // csrc/pgd_step.h); the values are block-wide, so every thread takes the branch.
  L2Sample<acc_t> k;
  if (!l2_direct(gmax, gss)) {
    k.g_scale = l2_prescale(gmax);
    gss = 0;
    for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
      acc_t gv[4];
      load_g(c, gv);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const acc_t q = gv[j] * k.g_scale;
        if (lane_on(c, j, start, end)) gss += q * q;
      }
    }
    gss = block_allreduce(gss, SumOp(), red);
  }
  k.g_coeff = op.l2_coeff(gss);

  // Sweep 2: ||delta|| with delta = l2_stepped - x_orig, the same way.
  if (project) {
    acc_t dss = 0, dmax = 0;
    for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
      acc_t av[4], gv[4], ov[4];
      load(c, av, gv, ov);  // project: ov is loaded
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const acc_t dv = op.l2_stepped(av[j], gv[j], k) - ov[j];
        if (lane_on(c, j, start, end)) {
          dss += dv * dv;
          dmax = max_nan(dmax, dv < 0 ? -dv : dv);
        }
      }
    }
    dss = block_allreduce(dss, SumOp(), red);
    dmax = block_allreduce(dmax, MaxNanOp(), red);
    acc_t t = 1;
    if (!l2_direct(dmax, dss)) {
      t = l2_prescale(dmax);
      dss = 0;
      for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
        acc_t av[4], gv[4], ov[4];
        load(c, av, gv, ov);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const acc_t dv = (op.l2_stepped(av[j], gv[j], k) - ov[j]) * t;
          if (lane_on(c, j, start, end)) dss += dv * dv;
        }
      }
      dss = block_allreduce(dss, SumOp(), red);
    }
    op.l2_ball(dss, t, k);
  }

  // Sweep 3: step, project, clamp, write.
  for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
    acc_t av[4], gv[4], ov[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)}, v[4];
    load(c, av, gv, ov);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      v[j] = project ? op.template l2<true>(av[j], gv[j], ov[j], k)
                     : op.template l2<false>(av[j], gv[j], ov[j], k);
    }
    store4(out, c, start, end, vec, v);
  }
}

// Dynamic shared memory for staging one sample, or 0 when staging would cost occupancy: it must
// leave room for two blocks per SM so one block's loads overlap another's compute.
size_t stage_bytes(int64_t d, size_t elem, bool project) {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const int64_t span = 4 * ((d + 3) / 4 + 1);
  const size_t bytes = static_cast<size_t>(span) * elem * (project ? 3 : 2);
  const size_t reserve = 2048;  // static reduction buffer + per-block system use
  const size_t per_sm = prop->sharedMemPerMultiprocessor / 2;
  const size_t limit = std::min<size_t>(prop->sharedMemPerBlockOptin, per_sm);
  return bytes + reserve <= limit ? bytes : 0;
}

void pgd_step_into(const PgdStepInputs& in) {
  const at::Tensor& out = in.s.out;
  const int64_t n = in.s.n, batch = in.s.batch, d = in.s.d;
  const bool project = in.project();
  const c10::cuda::CUDAGuard guard(out.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "pgd_step_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const PgdStep<acc_t> op = in.step<acc_t>();
    const scalar_t* ap = in.x_adv.const_data_ptr<scalar_t>();
    const scalar_t* gp = in.grad.const_data_ptr<scalar_t>();
    const scalar_t* xo = in.x_orig.const_data_ptr<scalar_t>();
    scalar_t* rp = out.mutable_data_ptr<scalar_t>();
    const bool vec = aligned4(ap) && aligned4(gp) && aligned4(xo) && aligned4<scalar_t>(rp);
    if (in.norm == Norm::kLinf) {
      pgd_step_linf_kernel<scalar_t><<<flat_blocks(philox_blocks(n)), kThreads, 0, stream>>>(
          ap, gp, xo, rp, n, vec, project, op);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    const int threads = per_item_threads(philox_blocks(d) + 1);
    const size_t smem = stage_bytes(d, sizeof(scalar_t), project);
    if (smem > 0) {
      auto kernel = pgd_step_l2_kernel<scalar_t, true>;
      if (smem > 48 * 1024) {  // above the default limit a kernel must opt in
        C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem)));
      }
      kernel<<<item_grid(batch), threads, smem, stream>>>(ap, gp, xo, rp, d, vec, project, op);
    } else {
      pgd_step_l2_kernel<scalar_t, false><<<item_grid(batch), threads, 0, stream>>>(
          ap, gp, xo, rp, d, vec, project, op);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace ebjdat

TORCH_LIBRARY_IMPL(ebjdat, CUDA, m) {
  m.impl("pgd_step", &ebjdat::pgd_step_kernel<ebjdat::pgd_step_into>);
}
