// Host-side argument checks and layout rules that every op's CPU and CUDA entry points share.
// Each op's own checks and formulas live in csrc/<op>.h.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "hd_math.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ebjdat {

using OptGen = std::optional<at::Generator>;
using OptTensor = std::optional<at::Tensor>;

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


}  // namespace ebjdat
