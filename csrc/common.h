// Argument checks and layout rules shared by the CPU and CUDA kernels.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>

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

struct Bounds {
  bool lo_on, hi_on;
  double lo, hi;
};

inline Bounds make_bounds(std::optional<double> lo, std::optional<double> hi) {
  if (lo && hi) {
    TORCH_CHECK_VALUE(*lo <= *hi, "ebjdat: clamp lower bound ", *lo, " exceeds upper bound ", *hi);
  }
  return Bounds{lo.has_value(), hi.has_value(), lo.value_or(0.0), hi.value_or(0.0)};
}

// NaN-propagating clamp with optional bounds (matches torch.clamp: NaN stays NaN).
template <typename T>
inline T clamp_nan(T v, bool lo_on, T lo, bool hi_on, T hi) {
  v = (lo_on && v < lo) ? lo : v;
  v = (hi_on && v > hi) ? hi : v;
  return v;
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

// Shared host-side checks of the energy head (CPU and CUDA).
inline void check_logits(const at::Tensor& logits, double temperature) {
  check_float(logits, "logits");
  TORCH_CHECK_VALUE(logits.dim() == 2, "ebjdat: logits must be 2-D [B, K], got shape ",
                    logits.sizes());
  TORCH_CHECK_VALUE(temperature > 0, "ebjdat: temperature must be > 0, got ", temperature);
}

// Labels as contiguous int64 (undefined without y), after type, shape and device checks. The
// range [0, K) is checked by the caller: on CPU in a loop, on CUDA by a device assert.
inline at::Tensor labels_long(const std::optional<at::Tensor>& y, const at::Tensor& logits) {
  if (!y) return at::Tensor();
  TORCH_CHECK_TYPE(!at::isFloatingType(y->scalar_type()) && !at::isComplexType(y->scalar_type()),
                   "ebjdat: y must be an integer tensor of labels, got ", y->scalar_type());
  TORCH_CHECK_VALUE(y->dim() == 1 && y->size(0) == logits.size(0), "ebjdat: y must have shape [",
                    logits.size(0), "], got ", y->sizes());
  TORCH_CHECK_VALUE(y->device() == logits.device(), "ebjdat: y is on ", y->device(),
                    " but logits is on ", logits.device());
  return y->to(at::kLong).contiguous();
}

// A per-row input of the backward must hold one value per row, on logits' device.
inline void check_per_row(const at::Tensor& t, const char* name, const at::Tensor& logits) {
  TORCH_CHECK_VALUE(t.numel() == logits.size(0), "ebjdat: ", name, " must have ", logits.size(0),
                    " elements, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == logits.device(), "ebjdat: ", name, " is on ", t.device(),
                    " but logits is on ", logits.device());
}

}  // namespace ebjdat
