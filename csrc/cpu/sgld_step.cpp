// SGLD update on the CPU: one pass over memory, noise generated in-register by vectorised Philox;
// the element formula is SgldUpdate (csrc/sgld_step.h), shared with the CUDA kernel.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../sgld_step.h"
#include "philox_cpu.h"

namespace ebjdat {
namespace {

constexpr int64_t kChunk = philox::kChunk;

void sgld_into(const at::Tensor& out, const SgldInputs& in, const OptGen& generator) {
  const int64_t n = out.numel();
  const bool draw = in.draws() && n > 0;
  uint64_t seed = 0;
  if (draw) seed = cpu_seed(generator);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "sgld_step_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const SgldUpdate<acc_t> update = in.update<acc_t>();
    const scalar_t* xp = in.x.const_data_ptr<scalar_t>();
    const scalar_t* gp = in.grad.const_data_ptr<scalar_t>();
    const scalar_t* np = in.noise.defined() ? in.noise.const_data_ptr<scalar_t>() : nullptr;
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
          op[s + i] = static_cast<scalar_t>(
              update(static_cast<acc_t>(xp[s + i]), static_cast<acc_t>(gp[s + i]), nb[i]));
        }
      }
    });
  });
}

}  // namespace
}  // namespace ebjdat

TORCH_LIBRARY_IMPL(ebjdat, CPU, m) {
  m.impl("sgld_step", &ebjdat::sgld_step_kernel<ebjdat::sgld_into>);
  m.impl("sgld_step_", &ebjdat::sgld_step__kernel<ebjdat::sgld_into>);
}
