// SGLD update on CUDA: one launch, one pass over memory (read x, grad [, noise], write out). One
// thread per Philox counter: four consecutive elements, noise generated in registers. The element
// formula is SgldUpdate (csrc/sgld_step.h), the one the CPU kernel runs.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../sgld_step.h"
#include "cuda_common.cuh"

namespace ebjdat {
namespace {

using namespace ebjdat::cuda;

enum class NoiseSrc { kNone, kTensor, kPhilox };

template <typename scalar_t, NoiseSrc kSrc>
__global__ void sgld_kernel(const scalar_t* x, const scalar_t* grad, const scalar_t* noise,
                            scalar_t* out, int64_t n, bool vec,
                            SgldUpdate<at::opmath_type<scalar_t>> update,
                            at::PhiloxCudaState rng) {
  using acc_t = at::opmath_type<scalar_t>;
  uint64_t seed = 0, offset = 0;
  if constexpr (kSrc == NoiseSrc::kPhilox) {
    philox_seed_base(rng, seed, offset);
  }
  const int64_t groups = (n + 3) / 4;
  EBJDAT_GROUP_LOOP(c, groups) {
    acc_t xv[4], gv[4], nz[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
    load4(x, c, 0, n, vec, xv);
    load4(grad, c, 0, n, vec, gv);
    if constexpr (kSrc == NoiseSrc::kTensor) {
      load4(noise, c, 0, n, vec, nz);
    } else if constexpr (kSrc == NoiseSrc::kPhilox) {
      float z[4];
      philox::normals4(seed, offset + static_cast<uint64_t>(c), z);
#pragma unroll
      for (int j = 0; j < 4; ++j) nz[j] = static_cast<acc_t>(z[j]);
    }
    acc_t v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = update(xv[j], gv[j], nz[j]);
    store4(out, c, 0, n, vec, v);
  }
}

void sgld_into(const at::Tensor& out, const SgldInputs& in, const OptGen& generator) {
  const int64_t n = out.numel();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  const NoiseSrc src = in.noise.defined() ? NoiseSrc::kTensor
                                           : (in.draws() ? NoiseSrc::kPhilox : NoiseSrc::kNone);
  at::PhiloxCudaState rng;
  if (src == NoiseSrc::kPhilox) rng = philox_state(generator, philox_blocks(n));
  const int blocks = flat_blocks(philox_blocks(n));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "sgld_step_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const SgldUpdate<acc_t> update = in.update<acc_t>();
    const scalar_t* xp = in.x.const_data_ptr<scalar_t>();
    const scalar_t* gp = in.grad.const_data_ptr<scalar_t>();
    const scalar_t* np = in.noise.defined() ? in.noise.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const bool vec = aligned4(xp) && aligned4(gp) && aligned4(np) && aligned4<scalar_t>(op);
    auto launch = [&](auto kernel) {
      kernel<<<blocks, kThreads, 0, stream>>>(xp, gp, np, op, n, vec, update, rng);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    switch (src) {
      case NoiseSrc::kNone: launch(sgld_kernel<scalar_t, NoiseSrc::kNone>); break;
      case NoiseSrc::kTensor: launch(sgld_kernel<scalar_t, NoiseSrc::kTensor>); break;
      case NoiseSrc::kPhilox: launch(sgld_kernel<scalar_t, NoiseSrc::kPhilox>); break;
    }
  });
}

}  // namespace
}  // namespace ebjdat

TORCH_LIBRARY_IMPL(ebjdat, CUDA, m) {
  m.impl("sgld_step", &ebjdat::sgld_step_kernel<ebjdat::sgld_into>);
  m.impl("sgld_step_", &ebjdat::sgld_step__kernel<ebjdat::sgld_into>);
}
