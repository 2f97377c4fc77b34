// SGLD update: one pass over memory, noise generated in-register by vectorised Philox.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>

#include "../common.h"
#include "../ops.h"
#include "philox_cpu.h"

namespace ebjdat {
namespace {

constexpr int64_t kChunk = philox::kChunk;

void sgld_into(const at::Tensor& out, const at::Tensor& x_in, const at::Tensor& grad_in,
               double step_size, std::optional<double> grad_clip, double noise_std,
               std::optional<double> clamp_min, std::optional<double> clamp_max,
               const OptTensor& noise_in, const OptGen& generator) {
  const SgldInputs in = prepare_sgld(out, x_in, grad_in, step_size, grad_clip, noise_std,
                                     clamp_min, clamp_max, noise_in);
  const at::Tensor &x = in.x, &grad = in.grad, &noise = in.noise;
  const Bounds& b = in.bounds;
  const int64_t n = out.numel();
  const bool draw = !noise_in && noise_std != 0.0 && n > 0;
  uint64_t seed = 0;
  if (draw) seed = cpu_seed(generator);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "sgld_step_cpu", [&] {
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
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    at::parallel_for(0, chunks, 64, [&](int64_t c0, int64_t c1) {
      acc_t nb[kChunk];
      float raw[kChunk];
      std::fill(nb, nb + kChunk, acc_t(0));
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t s = c * kChunk;
        const int64_t len = std::min(kChunk, n - s);
        if (draw) {
          philox::normals32(seed, static_cast<uint64_t>(s / 4), raw);
          for (int64_t i = 0; i < kChunk; ++i) nb[i] = static_cast<acc_t>(raw[i]);
        } else if (np) {
          for (int64_t i = 0; i < len; ++i) nb[i] = static_cast<acc_t>(np[s + i]);
        }
        for (int64_t i = 0; i < len; ++i) {
          acc_t g = static_cast<acc_t>(gp[s + i]);
          g = clamp_nan(g, -clip, clip);
          acc_t v = static_cast<acc_t>(xp[s + i]) + step * g + sd * nb[i];
          op[s + i] = static_cast<scalar_t>(clamp_nan(v, lo, hi));
        }
      }
    });
  });
}

}  // namespace

at::Tensor sgld_step_cpu(const at::Tensor& x, const at::Tensor& grad, double step_size,
                         std::optional<double> grad_clip, double noise_std,
                         std::optional<double> clamp_min, std::optional<double> clamp_max,
                         const OptTensor& noise, OptGen generator) {
  at::Tensor out = at::empty_like(x);
  sgld_into(out, x, grad, step_size, grad_clip, noise_std, clamp_min, clamp_max, noise, generator);
  return out;
}

void sgld_step__cpu(const at::Tensor& x, const at::Tensor& grad, double step_size,
                    std::optional<double> grad_clip, double noise_std,
                    std::optional<double> clamp_min, std::optional<double> clamp_max,
                    const OptTensor& noise, OptGen generator) {
  check_sgld_inplace(x, grad, noise);
  update_in_place(x, [&](const at::Tensor& out) {
    sgld_into(out, x, grad, step_size, grad_clip, noise_std, clamp_min, clamp_max, noise, generator);
  });
}

}  // namespace ebjdat
