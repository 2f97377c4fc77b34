// pgd_step: x_adv + step_size * direction(grad), projected onto the eps-ball around x_orig (when
// eps is given) and clamped. L-inf steps by sign(grad) and clamps to the box; L2 steps by
// grad / ||grad|| and rescales delta = x - x_orig onto the sphere when it lies outside. The entry
// point, checks and every formula are written once here; csrc/cpu/pgd_step.cpp and
// csrc/cuda/pgd_step.cu supply only their sweeps and reductions.
#pragma once
#include "common.h"

#include <limits>
#include <optional>
#include <string>

namespace ebjdat {

// L2 norms of a sample without overflow or underflow (pgd_step, as ebjdat/ops/pgd_step.py
// defines them). sum(v^2) is exact enough when max|v| lies in [2^-32, 2^32] (2^-256..2^256 for
// double): no square overflows, and those that underflow are < 2^-60 of the largest. Any other
// sample is summed again as (v * s)^2 with s = l2_prescale(max|v|); v / ||v|| = (v * s) / ||v * s||
// holds for any s > 0, so the direction does not depend on which way it was computed.
template <typename T>
EBJDAT_HD bool l2_direct(T vmax, T sum_sq) {
  T lo, hi;
  if constexpr (sizeof(T) == sizeof(double)) {
    lo = T(0x1p-256);
    hi = T(0x1p256);
  } else {
    lo = T(0x1p-32);
    hi = T(0x1p32);
  }
  return vmax >= lo && vmax <= hi && sum_sq == sum_sq;  // a NaN sum takes the rescale too
}

// 1 / vmax with vmax clamped to the normal range [tiny, 1 / tiny], so that s stays a normal number
// (a flush-to-zero unit would zero a subnormal one) and max|v * s| lies in [2^-23, 4]; an infinite
// vmax gives 0, so that inf * 0 makes the sample NaN: it has no direction.
template <typename T>
EBJDAT_HD T l2_prescale(T vmax) {
  constexpr T tiny = std::numeric_limits<T>::min();
  constexpr T huge = T(1) / tiny;
  if (vmax == std::numeric_limits<T>::infinity()) return T(0);
  return T(1) / (vmax < tiny ? tiny : (vmax > huge ? huge : vmax));
}

// An L2 sample's coefficients, found by its reductions: the step writes
// stepped = a + (g * g_scale) * g_coeff, the projection x_orig + ((stepped - x_orig) * d_scale) *
// d_factor. g_scale and d_scale are 1 unless a norm needed l2_prescale.
template <typename T>
struct L2Sample {
  T g_scale = 1, g_coeff = 0, d_scale = 1, d_factor = 1;
};

template <typename T>
struct PgdStep {
  T step, e, lo, hi;  // e: eps (0 when absent: then there is no projection)

  template <bool kProject>
  EBJDAT_HD T linf(T a, T g, T o) const {
    const T sgn = g > 0 ? T(1) : (g < 0 ? T(-1) : g);  // NaN stays NaN
    T v = a + step * sgn;
    if constexpr (kProject) {
      v = clamp_nan(v, o - e, o + e);
      v = o != o ? o : v;
    }
    return clamp_nan(v, lo, hi);
  }

  // g_coeff from ||g * g_scale||^2: a zero gradient takes no step.
  EBJDAT_HD T l2_coeff(T g_sum_sq) const {
    return g_sum_sq == 0 ? T(0) : step / sqrt_of(g_sum_sq);
  }

  EBJDAT_HD T l2_stepped(T a, T g, const L2Sample<T>& k) const {
    return a + (g * k.g_scale) * k.g_coeff;
  }

  // d_scale and d_factor from ||delta * t||^2, t the prescale of delta (1 when summed directly).
  // e * t may overflow to inf: then the sample is inside. A NaN norm makes the sample NaN.
  EBJDAT_HD void l2_ball(T d_sum_sq, T t, L2Sample<T>& k) const {
    const T dn = sqrt_of(d_sum_sq);  // t * ||delta||
    const bool outside = dn > e * t;
    k.d_scale = outside ? t : T(1);
    k.d_factor = outside ? e / dn : (dn != dn ? dn : T(1));
  }

  template <bool kProject>
  EBJDAT_HD T l2(T a, T g, T o, const L2Sample<T>& k) const {
    T r = l2_stepped(a, g, k);
    if constexpr (kProject) r = o + ((r - o) * k.d_scale) * k.d_factor;
    return clamp_nan(r, lo, hi);
  }
};

struct PgdStepInputs {
  Samples s;
  at::Tensor x_adv, grad, x_orig;  // in the output's layout
  Norm norm;
  double step_size;
  std::optional<double> eps;
  Bounds bounds;

  bool project() const { return eps.has_value(); }

  template <typename T>
  PgdStep<T> step() const {
    return PgdStep<T>{static_cast<T>(step_size), static_cast<T>(eps.value_or(0.0)),
                      static_cast<T>(bounds.lo), static_cast<T>(bounds.hi)};
  }
};

inline PgdStepInputs prepare_pgd_step(const at::Tensor& x_adv, const at::Tensor& grad,
                                      const at::Tensor& x_orig, double step_size,
                                      std::optional<double> eps, const std::string& norm,
                                      std::optional<double> clamp_min,
                                      std::optional<double> clamp_max) {
  check_float(x_adv, "x_adv");
  check_like(grad, "grad", x_adv, "x_adv");
  check_like(x_orig, "x_orig", x_adv, "x_adv");
  const Norm parsed = parse_norm(norm);
  TORCH_CHECK_VALUE(step_size >= 0, "ebjdat: step_size must be >= 0, got ", step_size);
  TORCH_CHECK_VALUE(!eps || *eps >= 0, "ebjdat: eps must be >= 0, got ", eps.value_or(0));
  const Bounds bounds = make_bounds(clamp_min, clamp_max);
  Samples s = samples_of(batch_major_like(x_adv));
  at::Tensor a = in_layout_of(x_adv, s.out), g = in_layout_of(grad, s.out),
             o = in_layout_of(x_orig, s.out);
  return PgdStepInputs{std::move(s), std::move(a), std::move(g), std::move(o),
                       parsed,       step_size,    eps,          bounds};
}

// A backend's sweeps: writes the step of `in` into in.s.out (called only when n > 0).
using PgdStepInto = void (*)(const PgdStepInputs& in);

template <PgdStepInto kInto>
at::Tensor pgd_step_kernel(const at::Tensor& x_adv, const at::Tensor& grad,
                           const at::Tensor& x_orig, double step_size, std::optional<double> eps,
                           std::string norm, std::optional<double> clamp_min,
                           std::optional<double> clamp_max) {
  const PgdStepInputs in =
      prepare_pgd_step(x_adv, grad, x_orig, step_size, eps, norm, clamp_min, clamp_max);
  if (in.s.n > 0) kInto(in);
  return in.s.out;
}

}  // namespace ebjdat
