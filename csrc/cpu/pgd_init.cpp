// PGD random start: uniform in the L-inf box or the L2 ball, then clamped. Parallel over samples
// for L2 (one cache-resident sample per task), over flat chunks for L-inf.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common.h"
#include "../ops.h"
#include "philox_cpu.h"

namespace ebjdat {

at::Tensor pgd_init_cpu(const at::Tensor& x_in, double eps, std::string norm_s,
                        std::optional<double> clamp_min, std::optional<double> clamp_max,
                        OptGen generator) {
  const PgdInitInputs in = prepare_pgd_init(x_in, eps, norm_s, clamp_min, clamp_max);
  const at::Tensor &out = in.s.out, &x = in.x;
  const int64_t n = in.s.n, batch = in.s.batch, d = in.s.d;
  const Norm norm = in.norm;
  const Bounds& b = in.bounds;
  if (n == 0) return out;
  const uint64_t seed = cpu_seed(generator);
  constexpr int64_t kChunk = philox::kChunk;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "pgd_init_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t e = static_cast<acc_t>(eps);
    const acc_t lo = static_cast<acc_t>(b.lo);
    const acc_t hi = static_cast<acc_t>(b.hi);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    if (norm == Norm::kLinf) {
      const int64_t chunks = (n + kChunk - 1) / kChunk;
      at::parallel_for(0, chunks, 64, [&](int64_t c0, int64_t c1) {
        float u[kChunk];
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t s = c * kChunk;
          const int64_t len = std::min(kChunk, n - s);
          philox::uniforms32(seed, static_cast<uint64_t>(s / 4), u);
          for (int64_t i = 0; i < len; ++i) {
            const acc_t v = static_cast<acc_t>(xp[s + i]) + e * (acc_t(2) * acc_t(u[i]) - acc_t(1));
            op[s + i] = static_cast<scalar_t>(clamp_nan(v, lo, hi));
          }
        }
      });
      return;
    }
    // L2: direction z / ||z|| from normals, radius eps * u^(1/d) from one extra block per sample.
    const uint64_t radius_base = philox_blocks(n);
    at::parallel_for(0, batch, 1, [&](int64_t s0, int64_t s1) {
      std::vector<float> z;
      float raw[kChunk];
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t start = s * d;
        // Normals for this sample's elements: the chunks overlapping [start, start + d).
        z.resize(d);
        for (int64_t i = 0; i < d;) {
          const int64_t g = start + i;
          const int64_t chunk_start = g - g % kChunk;
          philox::normals32(seed, static_cast<uint64_t>(chunk_start / 4), raw);
          const int64_t take = std::min(kChunk - (g - chunk_start), d - i);
          std::copy(raw + (g - chunk_start), raw + (g - chunk_start) + take, z.data() + i);
          i += take;
        }
        acc_t ss = 0;
        _Pragma("omp simd reduction(+ : ss)")
        for (int64_t i = 0; i < d; ++i) ss += acc_t(z[i]) * acc_t(z[i]);
        const philox::Block blk = philox::philox4x32_10(seed, radius_base + s);
        const double r = std::pow(static_cast<double>(philox::to_uniform(blk.v[0])), 1.0 / d);
        // Normals are bounded (|z| < 6), so ||z|| needs no scaling; z == 0 gives no offset.
        const acc_t scale = ss > 0 ? static_cast<acc_t>(eps * r) / std::sqrt(ss) : acc_t(0);
        for (int64_t i = 0; i < d; ++i) {
          const acc_t v = static_cast<acc_t>(xp[start + i]) + scale * acc_t(z[i]);
          op[start + i] = static_cast<scalar_t>(clamp_nan(v, lo, hi));
        }
      }
    });
  });
  return out;
}

}  // namespace ebjdat
