// energy_head: per row of logits l, energy = -T * logsumexp(l / T), cond = -l[y] and the
// per-sample cross-entropy logsumexp(l) - l[y], and the backward of all three. Outputs are in the
// accumulation dtype (float32 for half types), as autocast does for logsumexp and cross-entropy.
// The entry points, checks and formulas are written once here; csrc/cpu/energy_head.cpp and
// csrc/cuda/energy_head.cu supply only their row sweeps and reductions.
#pragma once
#include <ATen/OpMathType.h>

#include "common.h"

#include <optional>
#include <tuple>

namespace ebjdat {

using EnergyOut = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

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

// --- the formulas ----------------------------------------------------------------------------
// A row's statistics: its shift m (the max, or 0 when that is infinite, as torch.logsumexp does
// not subtract an infinite max: +inf rows give +inf and all -inf rows give -inf) and the logs of
// sum(exp((l - m) / T)) and sum(exp(l - m)). Shifting in logit units keeps every exponent <= 0 and
// the sums in [1, K] for any temperature. Each sum is computed only when needed.

template <typename T>
EBJDAT_HD T row_shift(T row_max) {
  return is_inf(row_max) ? T(0) : row_max;
}

// Adds one element's terms, z = l - m, to the two sums. V is a scalar or a CPU vector type; an
// element of value -inf (a padding lane) adds exactly 0.
template <typename V, typename Exp>
EBJDAT_HD void add_row_terms(V z, V inv_t, bool need_t, bool need_1, V& sum_t, V& sum_1, Exp exp) {
  if (need_t) sum_t = sum_t + exp(z * inv_t);
  if (need_1) sum_1 = sum_1 + exp(z);
}

template <typename T>
struct RowStats {
  T shift, log_sum_t, log_sum_1;
};

template <typename T>
EBJDAT_HD RowStats<T> row_stats_of(T shift, T sum_t, T sum_1, bool need_t, bool need_1) {
  return RowStats<T>{shift, need_t ? log_of(sum_t) : T(0), need_1 ? log_of(sum_1) : T(0)};
}

template <typename T>
struct EnergyRow {
  T energy, cond, ce;
};

// The forward outputs of a row; l_y = l[y] (ignored without labels). At T = 1 the energy is the
// CE's logsumexp, so only one sum is needed.
template <typename T>
EBJDAT_HD EnergyRow<T> energy_row(const RowStats<T>& st, T t, bool unit_t, T l_y) {
  const T lse1 = st.shift + st.log_sum_1;
  return EnergyRow<T>{unit_t ? -lse1 : -(st.shift + t * st.log_sum_t), -l_y, lse1 - l_y};
}

// d/dl of grad_energy * energy + grad_ce * ce at one element, z = l - shift:
// -grad_energy * softmax(l / T) + grad_ce * softmax(l). V as in add_row_terms.
template <typename V, typename Exp>
EBJDAT_HD V energy_grad(V z, V grad_energy, V grad_ce, V inv_t, V log_sum_t, V log_sum_1,
                        bool has_energy, bool has_ce, Exp exp) {
  V o(0);
  if (has_energy) o = o - grad_energy * exp(z * inv_t - log_sum_t);
  if (has_ce) o = o + grad_ce * exp(z - log_sum_1);
  return o;
}

// What the label's element adds: d cond / dl = -onehot(y) and the -onehot(y) of d ce / dl.
template <typename T>
EBJDAT_HD T energy_grad_at_label(bool has_cond, T grad_cond, T grad_ce) {
  return (has_cond ? -grad_cond : T(0)) - grad_ce;
}

// --- host side -------------------------------------------------------------------------------

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

// A backend's loops: the forward fills f's outputs (batch > 0), the backward b.grad (numel > 0).
using EnergyForwardInto = void (*)(const EnergyForward& f, double temperature);
using EnergyBackwardInto = void (*)(const EnergyBackward& b, double temperature);

template <EnergyForwardInto kInto>
EnergyOut energy_head_kernel(const at::Tensor& logits, const OptTensor& y, double temperature) {
  const EnergyForward f = prepare_energy_forward(logits, y, temperature);
  if (f.logits.size(0) > 0) kInto(f, temperature);
  return {f.energy, f.cond, f.ce};
}

template <EnergyBackwardInto kInto>
at::Tensor energy_head_backward_kernel(const at::Tensor& logits, const OptTensor& y,
                                       const OptTensor& grad_energy, const OptTensor& grad_cond,
                                       const OptTensor& grad_ce, double temperature) {
  const EnergyBackward b =
      prepare_energy_backward(logits, y, grad_energy, grad_cond, grad_ce, temperature);
  if (b.grad.numel() > 0) kInto(b, temperature);
  return b.grad;
}

}  // namespace ebjdat
