// Fused energy head on the CPU: one pass over each row of logits gives the energy, -l[y] and the
// CE; the backward recomputes each row's statistics, then writes the gradient. Rows are walked in
// ATen vectors, with the formulas of csrc/energy_head.h (shared with the CUDA kernels) applied to
// whole vectors.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "../energy_head.h"

namespace ebjdat {
namespace {

using at::vec::Vectorized;

struct VecExp {
  template <typename V>
  V operator()(const V& v) const {
    return v.exp();
  }
};

// Rows are walked in full vectors plus one partial vector whose missing lanes read `fill`, since
// classes are often fewer than a vector's worth and a scalar libm tail would dominate.
template <typename acc_t>
Vectorized<acc_t> load_part(const acc_t* r, int64_t len, acc_t fill) {
  using V = Vectorized<acc_t>;
  return len == V::size() ? V::loadu(r) : V::set(V(fill), V::loadu(r, len), len);
}

template <typename acc_t>
acc_t row_max(const acc_t* r, int64_t k) {
  using V = Vectorized<acc_t>;
  constexpr acc_t ninf = -std::numeric_limits<acc_t>::infinity();
  V vm(ninf);
  for (int64_t i = 0; i < k; i += V::size()) {
    vm = at::vec::maximum(vm, load_part(r + i, std::min<int64_t>(V::size(), k - i), ninf));
  }
  return at::vec::vec_reduce_all<acc_t>([](V& a, V& b) { return at::vec::maximum(a, b); }, vm);
}

template <typename acc_t>
RowStats<acc_t> row_stats(const acc_t* r, int64_t k, acc_t inv_t, bool need_t, bool need_1) {
  using V = Vectorized<acc_t>;
  constexpr acc_t ninf = -std::numeric_limits<acc_t>::infinity();
  const acc_t m = row_shift(row_max(r, k));
  const V vm(m), vs(inv_t);
  V st(0), s1(0);
  for (int64_t i = 0; i < k; i += V::size()) {
    const V z = load_part(r + i, std::min<int64_t>(V::size(), k - i), ninf) - vm;
    add_row_terms(z, vs, need_t, need_1, st, s1, VecExp{});
  }
  auto sum = [](V v) { return at::vec::vec_reduce_all<acc_t>([](V& a, V& b) { return a + b; }, v); };
  return row_stats_of(m, sum(st), sum(s1), need_t, need_1);
}

// Copies row b of `logits` into buf in acc_t when needed; returns a pointer to acc_t values.
template <typename scalar_t, typename acc_t>
const acc_t* load_row(const scalar_t* p, int64_t k, std::vector<acc_t>& buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return p;
  } else {
    buf.resize(k);
    for (int64_t i = 0; i < k; ++i) buf[i] = static_cast<acc_t>(p[i]);
    return buf.data();
  }
}

void energy_forward_into(const EnergyForward& f, double temperature) {
  const at::Tensor& logits = f.logits;
  const int64_t batch = logits.size(0), classes = logits.size(1);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "energy_head_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t t = static_cast<acc_t>(temperature);
    const acc_t inv_t = static_cast<acc_t>(1.0 / temperature);
    const bool unit_t = temperature == 1.0;
    const scalar_t* lp = logits.const_data_ptr<scalar_t>();
    const int64_t* yp = f.y.defined() ? f.y.const_data_ptr<int64_t>() : nullptr;
    acc_t* ep = f.energy.mutable_data_ptr<acc_t>();
    acc_t* cp = yp ? f.cond.mutable_data_ptr<acc_t>() : nullptr;
    acc_t* xp = yp ? f.ce.mutable_data_ptr<acc_t>() : nullptr;
    at::parallel_for(0, batch, std::max<int64_t>(1, 4096 / classes), [&](int64_t b0, int64_t b1) {
      std::vector<acc_t> buf;
      for (int64_t b = b0; b < b1; ++b) {
        const acc_t* r = load_row<scalar_t, acc_t>(lp + b * classes, classes, buf);
        const RowStats<acc_t> st = row_stats(r, classes, inv_t, !unit_t, unit_t || yp);
        const EnergyRow<acc_t> out = energy_row(st, t, unit_t, yp ? r[yp[b]] : acc_t(0));
        ep[b] = out.energy;
        if (yp) {
          cp[b] = out.cond;
          xp[b] = out.ce;
        }
      }
    });
  });
}

void energy_backward_into(const EnergyBackward& in, double temperature) {
  const at::Tensor& logits = in.logits;
  const int64_t batch = logits.size(0), classes = logits.size(1);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "energy_head_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using V = Vectorized<acc_t>;
    const acc_t inv_t = static_cast<acc_t>(1.0 / temperature);
    const scalar_t* lp = logits.const_data_ptr<scalar_t>();
    const int64_t* yp = in.y.defined() ? in.y.const_data_ptr<int64_t>() : nullptr;
    auto ptr = [](const at::Tensor& v) { return v.defined() ? v.const_data_ptr<acc_t>() : nullptr; };
    const acc_t *gep = ptr(in.grad_energy), *gcp = ptr(in.grad_cond), *gxp = ptr(in.grad_ce);
    scalar_t* gp = in.grad.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch, std::max<int64_t>(1, 4096 / classes), [&](int64_t b0, int64_t b1) {
      std::vector<acc_t> in_buf, out_buf(std::is_same_v<scalar_t, acc_t> ? 0 : classes);
      for (int64_t b = b0; b < b1; ++b) {
        const acc_t* r = load_row<scalar_t, acc_t>(lp + b * classes, classes, in_buf);
        acc_t* o = std::is_same_v<scalar_t, acc_t> ? reinterpret_cast<acc_t*>(gp + b * classes)
                                                   : out_buf.data();
        const RowStats<acc_t> st = row_stats(r, classes, inv_t, gep != nullptr, gxp != nullptr);
        const acc_t se = gep ? gep[b] : acc_t(0);
        const acc_t sx = gxp ? gxp[b] : acc_t(0);
        const V vm(st.shift), vs(inv_t), vlt(st.log_sum_t), vl1(st.log_sum_1), vse(se), vsx(sx);
        for (int64_t k = 0; k < classes; k += V::size()) {
          const int64_t len = std::min<int64_t>(V::size(), classes - k);
          const V z = load_part(r + k, len, acc_t(0)) - vm;
          energy_grad(z, vse, vsx, vs, vlt, vl1, gep != nullptr, gxp != nullptr, VecExp{})
              .store(o + k, len);
        }
        if (yp) o[yp[b]] += energy_grad_at_label(gcp != nullptr, gcp ? gcp[b] : acc_t(0), sx);
        if constexpr (!std::is_same_v<scalar_t, acc_t>) {
          for (int64_t j = 0; j < classes; ++j) gp[b * classes + j] = static_cast<scalar_t>(o[j]);
        }
      }
    });
  });
}

}  // namespace
}  // namespace ebjdat

TORCH_LIBRARY_IMPL(ebjdat, CPU, m) {
  m.impl("energy_head", &ebjdat::energy_head_kernel<ebjdat::energy_forward_into>);
  m.impl("energy_head_backward",
         &ebjdat::energy_head_backward_kernel<ebjdat::energy_backward_into>);
}
