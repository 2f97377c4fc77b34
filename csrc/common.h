// Argument checks and layout rules shared by the CPU and CUDA kernels.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "philox.h"  // EBJDAT_HD

#include <algorithm>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ebjdat {

// Every kernel writes into at::empty_like(first input), as the fake kernels do, and reads its other
// inputs in that same memory layout (copied only when their strides differ). A dense layout is then
// walked as a flat buffer, so channels_last tensors run without any copy.
inline at::Tensor in_layout_of(const at::Tensor& t, const at::Tensor& out) {
  if (t.strides() == out.strides() && t.is_non_overlapping_and_dense()) return t;
  return at::empty_like(out).copy_(t);
}

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()),
                   "ebjdat: ", name, " must be a floating-point tensor, got ", t.scalar_type());
}

inline void check_like(const at::Tensor& t, const char* name, const at::Tensor& ref,
                       const char* ref_name) {
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), "ebjdat: ", name, " has shape ", t.sizes(),
                    " but ", ref_name, " has shape ", ref.sizes(), " (no broadcasting)");
  TORCH_CHECK_VALUE(t.device() == ref.device(), "ebjdat: ", name, " is on ", t.device(), " but ",
                    ref_name, " is on ", ref.device());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), "ebjdat: ", name, " has dtype ",
                   t.scalar_type(), " but ", ref_name, " has dtype ", ref.scalar_type());
}

enum class Norm { kLinf, kL2 };

inline Norm parse_norm(const std::string& norm) {
  if (norm == "linf") return Norm::kLinf;
  if (norm == "l2") return Norm::kL2;
  TORCH_CHECK_VALUE(false, "ebjdat: norm must be 'linf' or 'l2', got '", norm, "'");
}

// Clamp bounds, an absent one as -inf / +inf (which clamp_nan then leaves alone).
struct Bounds {
  double lo, hi;
};

inline Bounds make_bounds(std::optional<double> lo, std::optional<double> hi) {
  if (lo && hi) {
    TORCH_CHECK_VALUE(*lo <= *hi, "ebjdat: clamp lower bound ", *lo, " exceeds upper bound ", *hi);
  }
  constexpr double inf = std::numeric_limits<double>::infinity();
  return Bounds{lo.value_or(-inf), hi.value_or(inf)};
}

// NaN-propagating clamp (as torch.clamp: NaN stays NaN); an absent bound is passed as +-inf.
// Branch-free, so loops over it vectorise; shared with the CUDA kernels.
template <typename T>
EBJDAT_HD T clamp_nan(T v, T lo, T hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// The CPU kernels' Philox seed: one draw from the generator, the same call as the Python side's
// torch.randint(0, 2**62, (), generator=g) (ebjdat/ops/_philox.py), so every backend agrees.
inline uint64_t cpu_seed(const std::optional<at::Generator>& generator) {
  return static_cast<uint64_t>(
      at::randint(0, int64_t(1) << 62, {}, generator, at::TensorOptions().dtype(at::kLong))
          .item<int64_t>());
}

// Counters a call consumes: ceil(n / 4) Philox blocks, plus `extra` whole blocks.
inline uint64_t philox_blocks(int64_t n, int64_t extra = 0) {
  return static_cast<uint64_t>((n + 3) / 4 + extra);
}

}  // namespace ebjdat

namespace ebjdat {

// Output for the per-sample (PGD) ops: empty_like(x), made contiguous when the samples would not
// be contiguous blocks in it. ebjdat/ops/_layout.py applies the same rule for the fake kernels.
inline at::Tensor batch_major_like(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "ebjdat: x must have a batch dimension, got a 0-d tensor");
  at::Tensor out = at::empty_like(x);
  const int64_t n = x.size(0);
  if (n > 1 && out.numel() > 0 && out.stride(0) != out.numel() / n) {
    out = at::empty(x.sizes(), x.options());
  }
  return out;
}

}  // namespace ebjdat

namespace ebjdat {

// Temperatures the energy head accepts (as ebjdat/ops/_checks.py): in float32, T, 1/T, T * log(K)
// and the scaled logit gaps then stay normal numbers with a wide margin.
constexpr double kMinTemperature = 1e-30, kMaxTemperature = 1e30;

// Shared host-side checks of the energy head (CPU and CUDA).
inline void check_logits(const at::Tensor& logits, double temperature) {
  check_float(logits, "logits");
  TORCH_CHECK_VALUE(logits.dim() == 2, "ebjdat: logits must be 2-D [B, K], got shape ",
                    logits.sizes());
  TORCH_CHECK_VALUE(temperature > 0, "ebjdat: temperature must be > 0, got ", temperature);
  TORCH_CHECK_VALUE(temperature >= kMinTemperature && temperature <= kMaxTemperature,
                    "ebjdat: temperature must be finite and within [1e-30, 1e+30], got ",
                    temperature);
}

// Labels as contiguous int64 (undefined without y), after type, shape and device checks. The
// range [0, K) is checked here on CPU; CUDA kernels assert it (a host check would sync).
inline at::Tensor labels_long(const std::optional<at::Tensor>& y, const at::Tensor& logits) {
  if (!y) return at::Tensor();
  TORCH_CHECK_TYPE(!at::isFloatingType(y->scalar_type()) && !at::isComplexType(y->scalar_type()),
                   "ebjdat: y must be an integer tensor of labels, got ", y->scalar_type());
  TORCH_CHECK_VALUE(y->dim() == 1 && y->size(0) == logits.size(0), "ebjdat: y must have shape [",
                    logits.size(0), "], got ", y->sizes());
  TORCH_CHECK_VALUE(y->device() == logits.device(), "ebjdat: y is on ", y->device(),
                    " but logits is on ", logits.device());
  at::Tensor yl = y->to(at::kLong).contiguous();
  if (yl.is_cpu()) {
    const int64_t classes = logits.size(1);
    const int64_t* yp = yl.const_data_ptr<int64_t>();
    for (int64_t b = 0; b < yl.numel(); ++b) {
      TORCH_CHECK_VALUE(yp[b] >= 0 && yp[b] < classes, "ebjdat: labels y must lie in [0, ",
                        classes, "); y[", b, "] = ", yp[b]);
    }
  }
  return yl;
}

// A per-row input of the backward must hold one value per row, on logits' device.
inline void check_per_row(const at::Tensor& t, const char* name, const at::Tensor& logits) {
  TORCH_CHECK_VALUE(t.numel() == logits.size(0), "ebjdat: ", name, " must have ", logits.size(0),
                    " elements, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == logits.device(), "ebjdat: ", name, " is on ", t.device(),
                    " but logits is on ", logits.device());
}

}  // namespace ebjdat

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

// Memory overlap of an in-place update, as ebjdat/ops/_checks.py checks it for the other backends:
// the written tensor must not have two elements at one address, and every input must be either
// the written tensor itself (same memory, same strides: each element reads only itself) or share
// no element with it, since the kernels write while they read.

// Storage offsets (in elements) of every element of t, on the CPU.
inline at::Tensor element_offsets(const at::Tensor& t) {
  const auto opts = at::TensorOptions().dtype(at::kLong);
  at::Tensor offs = at::full({1}, t.storage_offset(), opts);
  for (int64_t d = 0; d < t.dim(); ++d) {
    offs = (offs.unsqueeze(1) + at::arange(t.size(d), opts) * t.stride(d)).reshape({-1});
  }
  return offs;
}

// 1: the strides prove the elements distinct; 0: they prove an overlap; -1: undecided.
inline int strides_disjoint(const at::Tensor& t) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size), sizes > 1
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) != 1) dims.emplace_back(t.stride(d), t.size(d));
  }
  std::sort(dims.begin(), dims.end());
  int64_t reach = 0;
  for (const auto& [stride, size] : dims) {
    if (stride == 0) return 0;
    if (stride <= reach) return -1;
    reach += (size - 1) * stride;
  }
  return 1;
}

inline void check_no_internal_overlap(const char* op, const at::Tensor& t, const char* name) {
  if (t.numel() == 0 || t.is_non_overlapping_and_dense()) return;
  int disjoint = strides_disjoint(t);
  if (disjoint < 0) {  // an unusual as_strided layout: look at the offsets themselves
    const at::Tensor offs = element_offsets(t);
    disjoint = std::get<0>(at::_unique(offs)).numel() == offs.numel();
  }
  TORCH_CHECK_VALUE(disjoint, "ebjdat: ", op, ": ", name,
                    " has elements that share memory (an expanded or overlapping view), so "
                    "writing it in place is ill-defined; pass ", name,
                    ".clone() or a contiguous tensor");
}

inline void check_no_partial_overlap(const char* op, const at::Tensor& t, const char* name,
                                     const at::Tensor& out, const char* out_name) {
  if (t.numel() == 0 || out.numel() == 0 || !t.storage().is_alias_of(out.storage())) return;
  auto span = [](const at::Tensor& v) {
    int64_t last = v.storage_offset();
    for (int64_t d = 0; d < v.dim(); ++d) last += (v.size(d) - 1) * v.stride(d);
    const int64_t item = static_cast<int64_t>(v.element_size());
    return std::pair<int64_t, int64_t>(v.storage_offset() * item, (last + 1) * item);
  };
  const auto [a0, a1] = span(t);
  const auto [b0, b1] = span(out);
  if (a1 <= b0 || b1 <= a0) return;
  const bool comparable = t.scalar_type() == out.scalar_type() && t.sizes() == out.sizes();
  if (comparable && t.storage_offset() == out.storage_offset()) {
    bool same = true;
    for (int64_t d = 0; d < t.dim(); ++d) {
      same = same && (t.size(d) == 1 || t.stride(d) == out.stride(d));
    }
    if (same) return;
  }
  if (comparable && !(t.is_non_overlapping_and_dense() && out.is_non_overlapping_and_dense())) {
    // Strided views can interleave within one span without sharing an element.
    if (!at::isin(element_offsets(t), element_offsets(out)).any().item<bool>()) return;
  }
  TORCH_CHECK_VALUE(false, "ebjdat: ", op, ": ", name, " partially overlaps ", out_name,
                    ", which is written in place; pass ", name, ".clone() (the very same tensor as ",
                    out_name, " is fine)");
}

// Host-side preparation shared by the CPU and CUDA entry points: argument checks, the output
// layout and the inputs laid out like it. The kernels then only compute.

struct SgldInputs {
  at::Tensor x, grad, noise;  // noise undefined unless given
  Bounds bounds;
};

inline SgldInputs prepare_sgld(const at::Tensor& out, const at::Tensor& x, const at::Tensor& grad,
                               double step_size, std::optional<double> grad_clip,
                               double noise_std, std::optional<double> clamp_min,
                               std::optional<double> clamp_max,
                               const std::optional<at::Tensor>& noise) {
  check_float(x, "x");
  check_like(grad, "grad", x, "x");
  TORCH_CHECK_VALUE(step_size >= 0, "ebjdat: step_size must be >= 0, got ", step_size);
  TORCH_CHECK_VALUE(noise_std >= 0, "ebjdat: noise_std must be >= 0, got ", noise_std);
  TORCH_CHECK_VALUE(!grad_clip || *grad_clip >= 0, "ebjdat: grad_clip must be >= 0, got ",
                    grad_clip.value_or(0));
  SgldInputs in{in_layout_of(x, out), in_layout_of(grad, out), at::Tensor(),
                make_bounds(clamp_min, clamp_max)};
  if (noise) {
    check_like(*noise, "noise", x, "x");
    in.noise = in_layout_of(*noise, out);
  }
  return in;
}

// Checks for the in-place sgld_step_ (before any write): what prepare_sgld checks, then overlap.
inline void check_sgld_inplace(const at::Tensor& x, const at::Tensor& grad,
                               const std::optional<at::Tensor>& noise) {
  check_float(x, "x");
  check_like(grad, "grad", x, "x");
  if (noise) check_like(*noise, "noise", x, "x");
  check_no_internal_overlap("sgld_step_", x, "x");
  check_no_partial_overlap("sgld_step_", grad, "grad", x, "x");
  if (noise) check_no_partial_overlap("sgld_step_", *noise, "noise", x, "x");
}

// The in-place op through its out-of-place body: a dense x is written directly (each element
// reads only itself, and check_sgld_inplace has ruled out inputs that alias it otherwise), any
// other x through a temporary.
template <typename Into>
void update_in_place(const at::Tensor& x, Into into) {
  at::Tensor out = x.is_non_overlapping_and_dense() ? x : at::empty_like(x);
  into(out);
  if (!out.is_same(x)) x.copy_(out);
}

// Per-sample geometry of a batch-major output.
struct Samples {
  at::Tensor out;
  int64_t n, batch, d;
};

inline Samples samples_of(at::Tensor out) {
  const int64_t n = out.numel();
  const int64_t batch = out.size(0);
  return Samples{std::move(out), n, batch, batch > 0 ? n / batch : 0};
}

struct PgdInitInputs {
  Samples s;
  at::Tensor x;
  Norm norm;
  Bounds bounds;
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
  return PgdInitInputs{std::move(s), std::move(xl), parsed, bounds};
}

struct PgdStepInputs {
  Samples s;
  at::Tensor x_adv, grad, x_orig;
  Norm norm;
  Bounds bounds;
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
  return PgdStepInputs{std::move(s), std::move(a), std::move(g), std::move(o), parsed, bounds};
}

}  // namespace ebjdat

namespace ebjdat {

struct EnergyForward {
  at::Tensor logits, y;              // row-major logits; int64 labels or undefined
  at::Tensor energy, cond, ce;       // outputs in the accumulation dtype; cond/ce empty without y
};

inline EnergyForward prepare_energy_forward(const at::Tensor& logits_in,
                                            const std::optional<at::Tensor>& y,
                                            double temperature) {
  check_logits(logits_in, temperature);
  EnergyForward f;
  f.logits = logits_in.contiguous();
  f.y = labels_long(y, f.logits);
  const int64_t batch = f.logits.size(0);
  const auto options = f.logits.options().dtype(at::toOpMathType(f.logits.scalar_type()));
  f.energy = at::empty({batch}, options);
  f.cond = at::empty({f.y.defined() ? batch : 0}, options);
  f.ce = at::empty({f.y.defined() ? batch : 0}, options);
  TORCH_CHECK_VALUE(batch == 0 || f.logits.size(1) > 0,
                    "ebjdat: logits must have at least one class");
  return f;
}

// The backward recomputes each row's max and exp-sums from the logits instead of taking them from
// the saved energy: -energy / T rebuilt from a rounded energy is off by |energy| / T ulps, which
// for a small T is more than the whole softmax.
struct EnergyBackward {
  at::Tensor logits, y;                          // as in the forward
  at::Tensor grad_energy, grad_cond, grad_ce;    // accumulation dtype, undefined when absent
  at::Tensor grad;                               // row-major, logits' dtype
};

inline EnergyBackward prepare_energy_backward(
    const at::Tensor& logits_in, const std::optional<at::Tensor>& y,
    const std::optional<at::Tensor>& grad_energy, const std::optional<at::Tensor>& grad_cond,
    const std::optional<at::Tensor>& grad_ce, double temperature) {
  check_logits(logits_in, temperature);
  EnergyBackward b;
  b.logits = logits_in.contiguous();
  b.y = labels_long(y, b.logits);
  TORCH_CHECK_VALUE(b.y.defined() || (!grad_cond && !grad_ce),
                    "ebjdat: grad_cond and grad_ce need labels y");
  const auto acc_type = at::toOpMathType(b.logits.scalar_type());
  auto per_row = [&](const std::optional<at::Tensor>& t, const char* name) {
    if (!t) return at::Tensor();
    check_per_row(*t, name, b.logits);
    return t->to(acc_type).contiguous();
  };
  b.grad_energy = per_row(grad_energy, "grad_energy");
  b.grad_cond = per_row(grad_cond, "grad_cond");
  b.grad_ce = per_row(grad_ce, "grad_ce");
  b.grad = at::empty(b.logits.sizes(), b.logits.options());
  return b;
}

}  // namespace ebjdat
