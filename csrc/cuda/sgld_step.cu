// SGLD update on CUDA: one launch, one pass over memory (read x, grad [, noise], write out). One
// thread per Philox counter: four consecutive elements, noise generated in registers.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <limits>

#include "../common.h"
#include "../ops.h"
#include "cuda_common.cuh"

namespace ebjdat {
namespace {

using namespace ebjdat::cuda;

enum class NoiseSrc { kNone, kTensor, kPhilox };

template <typename scalar_t, NoiseSrc kSrc>
__global__ void sgld_kernel(const scalar_t* x, const scalar_t* grad, const scalar_t* noise,
                            scalar_t* out, int64_t n, bool vec, at::opmath_type<scalar_t> step,
                            at::opmath_type<scalar_t> clip, at::opmath_type<scalar_t> sd,
                            at::opmath_type<scalar_t> lo, at::opmath_type<scalar_t> hi,
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
      normals4(seed, offset + static_cast<uint64_t>(c), z);
#pragma unroll
      for (int j = 0; j < 4; ++j) nz[j] = static_cast<acc_t>(z[j]);
    }
    acc_t v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const acc_t g = clamp_nan(gv[j], -clip, clip);
      v[j] = clamp_nan(xv[j] + step * g + sd * nz[j], lo, hi);
    }
    store4(out, c, 0, n, vec, v);
  }
}

void sgld_into(const at::Tensor& out, const at::Tensor& x_in, const at::Tensor& grad_in,
               double step_size, std::optional<double> grad_clip, double noise_std,
               std::optional<double> clamp_min, std::optional<double> clamp_max,
               const OptTensor& noise_in, const OptGen& generator) {
  const SgldInputs in = prepare_sgld(out, x_in, grad_in, step_size, grad_clip, noise_std,
                                     clamp_min, clamp_max, noise_in);
  const at::Tensor &x = in.x, &grad = in.grad, &noise = in.noise;
  const Bounds& b = in.bounds;
  const int64_t n = out.numel();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  const NoiseSrc src = noise_in ? NoiseSrc::kTensor
                                : (noise_std != 0.0 ? NoiseSrc::kPhilox : NoiseSrc::kNone);
  at::PhiloxCudaState rng;
  if (src == NoiseSrc::kPhilox) rng = philox_state(generator, philox_blocks(n));
  const int blocks = flat_blocks(philox_blocks(n));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "sgld_step_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr acc_t inf = std::numeric_limits<acc_t>::infinity();
    const acc_t step = static_cast<acc_t>(step_size);
    const acc_t clip = grad_clip ? static_cast<acc_t>(*grad_clip) : inf;
    const acc_t sd = static_cast<acc_t>(noise_std);
    const acc_t lo = static_cast<acc_t>(b.lo);
    const acc_t hi = static_cast<acc_t>(b.hi);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* np = noise.defined() ? noise.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const bool vec = aligned4(xp) && aligned4(gp) && aligned4(np) && aligned4<scalar_t>(op);
    auto launch = [&](auto kernel) {
      kernel<<<blocks, kThreads, 0, stream>>>(xp, gp, np, op, n, vec, step, clip, sd, lo, hi, rng);
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

at::Tensor sgld_step_cuda(const at::Tensor& x, const at::Tensor& grad, double step_size,
                          std::optional<double> grad_clip, double noise_std,
                          std::optional<double> clamp_min, std::optional<double> clamp_max,
                          const OptTensor& noise, OptGen generator) {
  at::Tensor out = at::empty_like(x);
  sgld_into(out, x, grad, step_size, grad_clip, noise_std, clamp_min, clamp_max, noise, generator);
  return out;
}

void sgld_step__cuda(const at::Tensor& x, const at::Tensor& grad, double step_size,
                     std::optional<double> grad_clip, double noise_std,
                     std::optional<double> clamp_min, std::optional<double> clamp_max,
                     const OptTensor& noise, OptGen generator) {
  check_sgld_inplace(x, grad, noise);
  update_in_place(x, [&](const at::Tensor& out) {
    sgld_into(out, x, grad, step_size, grad_clip, noise_std, clamp_min, clamp_max, noise, generator);
  });
}

}  // namespace ebjdat
