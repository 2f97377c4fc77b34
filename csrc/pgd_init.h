// pgd_init: the PGD random start, x + delta clamped, with delta uniform in the L-inf box of radius
// eps or uniform in the L2 ball (direction z / ||z|| from normals, radius eps * u^(1/d)). The
// entry point, checks, Philox counter layout and element formulas are written once here;
// csrc/cpu/pgd_init.cpp and csrc/cuda/pgd_init.cu supply only the loops and their reductions.
#pragma once
#include "common.h"
#include "philox.h"

#include <optional>
#include <string>

namespace ebjdat {

template <typename T>
struct PgdStart {
  T e;         // eps in the accumulation type, for the L-inf box
  double eps;  // the L2 radius takes eps in double
  T lo, hi;

  // L-inf: element i takes the uniform u of its own Philox lane.
  EBJDAT_HD T linf(T x, float u) const {
    return clamp_nan(x + e * (T(2) * T(u) - T(1)), lo, hi);
  }

  // L2: scale = radius / ||z|| of the sample (l2_scale), z the element's normal.
  EBJDAT_HD T l2(T x, T scale, float z) const { return clamp_nan(x + scale * T(z), lo, hi); }

  // sum_sq = ||z||^2 of the sample. Normals are bounded (|z| < 6), so it needs no rescaling;
  // z == 0 gives no offset.
  EBJDAT_HD T l2_scale(T sum_sq, double radius) const {
    return sum_sq > 0 ? static_cast<T>(eps * radius) / sqrt_of(sum_sq) : T(0);
  }
};

// Sample s of d elements draws its radius u^(1/d) from lane 0 of one extra counter,
// radius_base + s, after the ceil(n / 4) counters of the normals (radius_base = philox_blocks(n)).
EBJDAT_HD double l2_radius(uint64_t seed, uint64_t counter, int64_t d) {
  const philox::Block blk = philox::philox4x32_10(seed, counter);
  return ::pow(static_cast<double>(philox::to_uniform(blk.v[0])), 1.0 / static_cast<double>(d));
}

struct PgdInitInputs {
  Samples s;
  at::Tensor x;  // in the output's layout
  Norm norm;
  double eps;
  Bounds bounds;

  // Counters a call takes: the normals' or uniforms', and for L2 one radius counter per sample.
  uint64_t counters() const { return philox_blocks(s.n, norm == Norm::kL2 ? s.batch : 0); }

  template <typename T>
  PgdStart<T> start() const {
    return PgdStart<T>{static_cast<T>(eps), eps, static_cast<T>(bounds.lo),
                       static_cast<T>(bounds.hi)};
  }
};

inline PgdInitInputs prepare_pgd_init(const at::Tensor& x, double eps, const std::string& norm,
                                      std::optional<double> clamp_min,
                                      std::optional<double> clamp_max) {
  check_float(x, "x");
  const Norm parsed = parse_norm(norm);
  TORCH_CHECK_VALUE(eps >= 0, "ebjdat: eps must be >= 0, got ", eps);
  const Bounds bounds = make_bounds(clamp_min, clamp_max);
  Samples s = samples_of(batch_major_like(x));
  at::Tensor xl = in_layout_of(x, s.out);
  return PgdInitInputs{std::move(s), std::move(xl), parsed, eps, bounds};
}

// A backend's loop: writes the start of `in` into in.s.out (called only when n > 0).
using PgdInitInto = void (*)(const PgdInitInputs& in, const OptGen& generator);

template <PgdInitInto kInto>
at::Tensor pgd_init_kernel(const at::Tensor& x, double eps, std::string norm,
                           std::optional<double> clamp_min, std::optional<double> clamp_max,
                           OptGen generator) {
  const PgdInitInputs in = prepare_pgd_init(x, eps, norm, clamp_min, clamp_max);
  if (in.s.n > 0) kInto(in, generator);
  return in.s.out;
}

}  // namespace ebjdat
