// sgld_step / sgld_step_: clamp(x + step_size * clip(grad) + noise_std * z, lo, hi) per element,
// z from Philox (philox.h) or an explicit noise tensor. Everything but the loop is written once
// here: the entry points, the argument checks and the element formula. csrc/cpu/sgld_step.cpp and
// csrc/cuda/sgld_step.cu each supply only `into` (walk the buffer, draw the noise) and register.
#pragma once
#include "common.h"
#include "philox.h"

#include <limits>
#include <optional>

namespace ebjdat {

// The op's scalars in the accumulation type, and the element update.
template <typename T>
struct SgldUpdate {
  T step, clip, sd, lo, hi;

  // NaN in x, g or z propagates (clamp_nan keeps it); clip = +inf and sd = 0 switch parts off.
  EBJDAT_HD T operator()(T x, T g, T z) const {
    g = clamp_nan(g, -clip, clip);
    return clamp_nan(x + step * g + sd * z, lo, hi);
  }
};

struct SgldInputs {
  at::Tensor x, grad, noise;  // in the output's layout; noise undefined unless given
  double step_size, noise_std;
  std::optional<double> grad_clip;
  Bounds bounds;

  // Whether the kernel draws z itself (no noise tensor, noise_std > 0).
  bool draws() const { return !noise.defined() && noise_std != 0.0; }

  template <typename T>
  SgldUpdate<T> update() const {
    constexpr T inf = std::numeric_limits<T>::infinity();
    return SgldUpdate<T>{static_cast<T>(step_size), grad_clip ? static_cast<T>(*grad_clip) : inf,
                         static_cast<T>(noise_std), static_cast<T>(bounds.lo),
                         static_cast<T>(bounds.hi)};
  }
};

inline SgldInputs prepare_sgld(const at::Tensor& out, const at::Tensor& x, const at::Tensor& grad,
                               double step_size, std::optional<double> grad_clip,
                               double noise_std, std::optional<double> clamp_min,
                               std::optional<double> clamp_max, const OptTensor& noise) {
  check_float(x, "x");
  check_like(grad, "grad", x, "x");
  TORCH_CHECK_VALUE(step_size >= 0, "ebjdat: step_size must be >= 0, got ", step_size);
  TORCH_CHECK_VALUE(noise_std >= 0, "ebjdat: noise_std must be >= 0, got ", noise_std);
  TORCH_CHECK_VALUE(!grad_clip || *grad_clip >= 0, "ebjdat: grad_clip must be >= 0, got ",
                    grad_clip.value_or(0));
  SgldInputs in{in_layout_of(x, out), in_layout_of(grad, out), at::Tensor(),
                step_size,           noise_std,                grad_clip,
                make_bounds(clamp_min, clamp_max)};
  if (noise) {
    check_like(*noise, "noise", x, "x");
    in.noise = in_layout_of(*noise, out);
  }
  return in;
}

// Checks for the in-place sgld_step_ (before any write): what prepare_sgld checks, then overlap.
inline void check_sgld_inplace(const at::Tensor& x, const at::Tensor& grad,
                               const OptTensor& noise) {
  check_float(x, "x");
  check_like(grad, "grad", x, "x");
  if (noise) check_like(*noise, "noise", x, "x");
  check_no_internal_overlap("sgld_step_", x, "x");
  check_no_partial_overlap("sgld_step_", grad, "grad", x, "x");
  if (noise) check_no_partial_overlap("sgld_step_", *noise, "noise", x, "x");
}

}  // namespace ebjdat

namespace ebjdat {

// A backend's loop: writes the update of `in` into `out` (already laid out; n > 0 or not).
using SgldInto = void (*)(const at::Tensor& out, const SgldInputs& in, const OptGen& generator);

template <SgldInto kInto>
at::Tensor sgld_step_kernel(const at::Tensor& x, const at::Tensor& grad, double step_size,
                            std::optional<double> grad_clip, double noise_std,
                            std::optional<double> clamp_min, std::optional<double> clamp_max,
                            const OptTensor& noise, OptGen generator) {
  at::Tensor out = at::empty_like(x);
  kInto(out, prepare_sgld(out, x, grad, step_size, grad_clip, noise_std, clamp_min, clamp_max,
                          noise),
        generator);
  return out;
}

template <SgldInto kInto>
void sgld_step__kernel(const at::Tensor& x, const at::Tensor& grad, double step_size,
                       std::optional<double> grad_clip, double noise_std,
                       std::optional<double> clamp_min, std::optional<double> clamp_max,
                       const OptTensor& noise, OptGen generator) {
  check_sgld_inplace(x, grad, noise);
  update_in_place(x, [&](const at::Tensor& out) {
    kInto(out, prepare_sgld(out, x, grad, step_size, grad_clip, noise_std, clamp_min, clamp_max,
                            noise),
          generator);
  });
}

}  // namespace ebjdat
