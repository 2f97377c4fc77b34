// PGD random start on CUDA, one launch; the formulas and counter layout are csrc/pgd_init.h's.
// L-inf: flat grid-stride, one thread per Philox counter, one pass (read x, write out).
// L2: one block per sample. Pass 1 generates the sample's normals and reduces ||z||^2 (no memory
// traffic); pass 2 regenerates them and reads x / writes out, so memory is touched once.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../pgd_init.h"
#include "cuda_common.cuh"

namespace ebjdat {
namespace {

using namespace ebjdat::cuda;

template <typename scalar_t>
__global__ void pgd_init_linf_kernel(const scalar_t* x, scalar_t* out, int64_t n, bool vec,
                                     PgdStart<at::opmath_type<scalar_t>> start,
                                     at::PhiloxCudaState rng) {
  using acc_t = at::opmath_type<scalar_t>;
  uint64_t seed, offset;
  philox_seed_base(rng, seed, offset);
  const int64_t groups = (n + 3) / 4;
  EBJDAT_GROUP_LOOP(c, groups) {
    const philox::Block blk = philox::philox4x32_10(seed, offset + static_cast<uint64_t>(c));
    acc_t xv[4], v[4];
    load4(x, c, 0, n, vec, xv);
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = start.linf(xv[j], philox::to_uniform(blk.v[j]));
    store4(out, c, 0, n, vec, v);
  }
}

// Sample s = blockIdx.x covers flat elements [s*d, s*d + d); element i draws lane i % 4 of
// counter offset + i / 4, exactly as in the flat kernels, so the groups cut by the sample
// boundaries are shared (each block keeps only its own lanes).
template <typename scalar_t>
__global__ void pgd_init_l2_kernel(const scalar_t* x, scalar_t* out, int64_t d, bool vec,
                                   PgdStart<at::opmath_type<scalar_t>> start,
                                   uint64_t radius_base, at::PhiloxCudaState rng) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t red[32];
  uint64_t seed, offset;
  philox_seed_base(rng, seed, offset);
  const int64_t s = blockIdx.x;
  const int64_t first = s * d, end = first + d;
  const int64_t c0 = first / 4, c1 = (end + 3) / 4;

  acc_t ss = 0;
  for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
    float z[4];
    philox::normals4(seed, offset + static_cast<uint64_t>(c), z);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (lane_on(c, j, first, end)) ss += acc_t(z[j]) * acc_t(z[j]);
    }
  }
  ss = block_allreduce(ss, SumOp(), red);
  // Every thread computes the sample's radius and scale.
  const acc_t scale = start.l2_scale(ss, l2_radius(seed, offset + radius_base + s, d));

  for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
    float z[4];
    philox::normals4(seed, offset + static_cast<uint64_t>(c), z);
    acc_t xv[4], v[4];
    load4(x, c, first, end, vec, xv);
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = start.l2(xv[j], scale, z[j]);
    store4(out, c, first, end, vec, v);
  }
}

void pgd_init_into(const PgdInitInputs& in, const OptGen& generator) {
  const at::Tensor &out = in.s.out, &x = in.x;
  const int64_t n = in.s.n, batch = in.s.batch, d = in.s.d;
  const c10::cuda::CUDAGuard guard(out.device());
  const at::PhiloxCudaState rng = philox_state(generator, in.counters());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "pgd_init_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const PgdStart<acc_t> start = in.start<acc_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const bool vec = aligned4(xp) && aligned4<scalar_t>(op);
    if (in.norm == Norm::kLinf) {
      pgd_init_linf_kernel<scalar_t><<<flat_blocks(philox_blocks(n)), kThreads, 0, stream>>>(
          xp, op, n, vec, start, rng);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    const int threads = per_item_threads(philox_blocks(d) + 1);
    pgd_init_l2_kernel<scalar_t><<<item_grid(batch), threads, 0, stream>>>(
        xp, op, d, vec, start, philox_blocks(n), rng);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace ebjdat

TORCH_LIBRARY_IMPL(ebjdat, CUDA, m) {
  m.impl("pgd_init", &ebjdat::pgd_init_kernel<ebjdat::pgd_init_into>);
}
