// Scalar math that the CPU loops and the CUDA kernels share: every function here compiles for the
// host and the device, so each op's formulas (csrc/<op>.h) are written once and the CPU tests run
// the very arithmetic the CUDA kernels run.
#pragma once
#include <cmath>
#include <limits>
#include <type_traits>

#if defined(__CUDACC__)
#define EBJDAT_HD __host__ __device__ __forceinline__
#define EBJDAT_UNROLL _Pragma("unroll")
#else
#define EBJDAT_HD inline
#define EBJDAT_UNROLL
#endif

namespace ebjdat {

// NaN-propagating clamp (as torch.clamp: NaN stays NaN); an absent bound is passed as +-inf.
// Branch-free, so the CPU loops over it vectorise.
template <typename T>
EBJDAT_HD T clamp_nan(T v, T lo, T hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// NaN-propagating max: (r > m || r != r) ? r : m.
template <typename T>
EBJDAT_HD T max_nan(T m, T r) {
  return (r > m || r != r) ? r : m;
}

template <typename T>
EBJDAT_HD bool is_inf(T v) {
  return v == std::numeric_limits<T>::infinity() || v == -std::numeric_limits<T>::infinity();
}

// The precise libm functions (no fast-math) in the accumulation type: expf/logf/sqrtf for
// float, exp/log/sqrt for double, on the host and the device alike.
template <typename T>
EBJDAT_HD T exp_of(T v) {
  if constexpr (std::is_same_v<T, float>) {
    return expf(v);
  } else {
    return ::exp(v);
  }
}

template <typename T>
EBJDAT_HD T log_of(T v) {
  if constexpr (std::is_same_v<T, float>) {
    return logf(v);
  } else {
    return ::log(v);
  }
}

template <typename T>
EBJDAT_HD T sqrt_of(T v) {
  if constexpr (std::is_same_v<T, float>) {
    return sqrtf(v);
  } else {
    return ::sqrt(v);
  }
}

// exp as a function object, so that a formula templated on its value type runs on scalars here
// and on the CPU's vector types with their own exp.
struct ScalarExp {
  template <typename T>
  EBJDAT_HD T operator()(T v) const {
    return exp_of(v);
  }
};

}  // namespace ebjdat
