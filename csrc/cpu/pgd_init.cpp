// PGD random start on the CPU. Parallel over samples for L2 (one cache-resident sample per task),
// over flat chunks for L-inf; the formulas and counter layout are csrc/pgd_init.h's.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../pgd_init.h"
#include "philox_cpu.h"

namespace ebjdat {
namespace {

void pgd_init_into(const PgdInitInputs& in, const OptGen& generator) {
  const at::Tensor &out = in.s.out, &x = in.x;
  const int64_t n = in.s.n, batch = in.s.batch, d = in.s.d;
  const uint64_t seed = cpu_seed(generator);
  constexpr int64_t kChunk = philox::kChunk;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "pgd_init_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const PgdStart<acc_t> start = in.start<acc_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    if (in.norm == Norm::kLinf) {
      const int64_t chunks = (n + kChunk - 1) / kChunk;
      at::parallel_for(0, chunks, 64, [&](int64_t c0, int64_t c1) {
        float u[kChunk];
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t s = c * kChunk;
          const int64_t len = std::min(kChunk, n - s);
          philox::uniforms32(seed, static_cast<uint64_t>(s / 4), u);
          for (int64_t i = 0; i < len; ++i) {
            op[s + i] = static_cast<scalar_t>(start.linf(static_cast<acc_t>(xp[s + i]), u[i]));
          }
        }
      });
      return;
    }
    const uint64_t radius_base = philox_blocks(n);
    at::parallel_for(0, batch, 1, [&](int64_t s0, int64_t s1) {
      std::vector<float> z;
      float raw[kChunk];
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t first = s * d;
        // Normals for this sample's elements: the chunks overlapping [first, first + d).
        z.resize(d);
        for (int64_t i = 0; i < d;) {
          const int64_t g = first + i;
          const int64_t chunk_start = g - g % kChunk;
          philox::normals32(seed, static_cast<uint64_t>(chunk_start / 4), raw);
          const int64_t take = std::min(kChunk - (g - chunk_start), d - i);
          std::copy(raw + (g - chunk_start), raw + (g - chunk_start) + take, z.data() + i);
          i += take;
        }
        acc_t ss = 0;
        _Pragma("omp simd reduction(+ : ss)")
        for (int64_t i = 0; i < d; ++i) ss += acc_t(z[i]) * acc_t(z[i]);
        const acc_t scale = start.l2_scale(ss, l2_radius(seed, radius_base + s, d));
        for (int64_t i = 0; i < d; ++i) {
          op[first + i] = static_cast<scalar_t>(start.l2(static_cast<acc_t>(xp[first + i]), scale, z[i]));
        }
      }
    });
  });
}

}  // namespace
}  // namespace ebjdat

TORCH_LIBRARY_IMPL(ebjdat, CPU, m) {
  m.impl("pgd_init", &ebjdat::pgd_init_kernel<ebjdat::pgd_init_into>);
}
