// Fused energy head: one pass over each row of logits gives -T*logsumexp(l/T), -l[y] and the
// per-sample CE; the backward recomputes each row's max and sums, then writes the gradient.
// Outputs are in the accumulation dtype (float32 for half types), as autocast does for logsumexp
// and cross-entropy.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common.h"
#include "../ops.h"

namespace ebjdat {
namespace {

using at::vec::Vectorized;

// Rows are walked in full vectors plus one partial vector (masked), since classes are often
// fewer than a vector's worth and a scalar libm tail would dominate.
template <typename acc_t>
at::vec::Vectorized<acc_t> load_tail(const acc_t* r, int64_t rem, acc_t fill) {
  using V = Vectorized<acc_t>;
  return V::set(V(fill), V::loadu(r, rem), rem);
}

template <typename acc_t>
acc_t row_max(const acc_t* r, int64_t k) {
  using V = Vectorized<acc_t>;
  constexpr acc_t ninf = -std::numeric_limits<acc_t>::infinity();
  V vm(ninf);
  int64_t i = 0;
  for (; i + V::size() <= k; i += V::size()) vm = at::vec::maximum(vm, V::loadu(r + i));
  if (i < k) vm = at::vec::maximum(vm, load_tail(r + i, k - i, ninf));
  return at::vec::vec_reduce_all<acc_t>([](V& a, V& b) { return at::vec::maximum(a, b); }, vm);
}

// A row's shift m (its max, or 0 when that is infinite: torch.logsumexp does not subtract an
// infinite max, so +inf rows give +inf and all -inf rows give -inf) and the logs of
// sum(exp((r - m) * inv_t)) and sum(exp(r - m)), either skipped when not needed. Shifting in logit
// units keeps every exponent <= 0 and the sums in [1, K] for any temperature.
template <typename acc_t>
struct RowStats {
  acc_t shift, log_sum_t, log_sum_1;
};

template <typename acc_t>
RowStats<acc_t> row_stats(const acc_t* r, int64_t k, acc_t inv_t, bool need_t, bool need_1) {
  using V = Vectorized<acc_t>;
  acc_t m = row_max(r, k);
  if (std::isinf(m)) m = 0;
  const V vm(m), vs(inv_t);
  V st(0), s1(0);
  int64_t i = 0;
  for (; i + V::size() <= k; i += V::size()) {
    const V z = V::loadu(r + i) - vm;
    if (need_t) st = st + (z * vs).exp();
    if (need_1) s1 = s1 + z.exp();
  }
  if (i < k) {
    const V z = V::loadu(r + i, k - i) - vm;
    if (need_t) st = st + V::set(V(0), (z * vs).exp(), k - i);
    if (need_1) s1 = s1 + V::set(V(0), z.exp(), k - i);
  }
  auto sum = [](V v) { return at::vec::vec_reduce_all<acc_t>([](V& a, V& b) { return a + b; }, v); };
  return RowStats<acc_t>{m, need_t ? std::log(sum(st)) : acc_t(0),
                         need_1 ? std::log(sum(s1)) : acc_t(0)};
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

}  // namespace

EnergyOut energy_head_cpu(const at::Tensor& logits_in, const OptTensor& y, double temperature) {
  const EnergyForward f = prepare_energy_forward(logits_in, y, temperature);
  const at::Tensor &logits = f.logits, &yl = f.y, &energy = f.energy, &cond = f.cond, &ce = f.ce;
  const int64_t batch = logits.size(0), classes = logits.size(1);
  if (batch == 0) return {energy, cond, ce};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "energy_head_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t t = static_cast<acc_t>(temperature);
    const acc_t inv_t = static_cast<acc_t>(1.0 / temperature);
    const bool unit_t = temperature == 1.0;
    const scalar_t* lp = logits.const_data_ptr<scalar_t>();
    const int64_t* yp = yl.defined() ? yl.const_data_ptr<int64_t>() : nullptr;
    acc_t* ep = energy.mutable_data_ptr<acc_t>();
    acc_t* cp = yp ? cond.mutable_data_ptr<acc_t>() : nullptr;
    acc_t* xp = yp ? ce.mutable_data_ptr<acc_t>() : nullptr;
    at::parallel_for(0, batch, std::max<int64_t>(1, 4096 / classes), [&](int64_t b0, int64_t b1) {
      std::vector<acc_t> buf;
      for (int64_t b = b0; b < b1; ++b) {
        const acc_t* r = load_row<scalar_t, acc_t>(lp + b * classes, classes, buf);
        const RowStats<acc_t> st = row_stats(r, classes, inv_t, !unit_t, unit_t || yp);
        const acc_t lse1 = st.shift + st.log_sum_1;
        ep[b] = unit_t ? -lse1 : -(st.shift + t * st.log_sum_t);
        if (yp) {
          const acc_t ly = r[yp[b]];
          cp[b] = -ly;
          xp[b] = lse1 - ly;
        }
      }
    });
  });
  return {energy, cond, ce};
}

at::Tensor energy_head_backward_cpu(const at::Tensor& logits_in, const OptTensor& y,
                                   const OptTensor& grad_energy, const OptTensor& grad_cond,
                                   const OptTensor& grad_ce, double temperature) {
  const EnergyBackward in =
      prepare_energy_backward(logits_in, y, grad_energy, grad_cond, grad_ce, temperature);
  const at::Tensor &logits = in.logits, &yl = in.y;
  const at::Tensor &ge = in.grad_energy, &gc = in.grad_cond, &gx = in.grad_ce, &grad = in.grad;
  const int64_t batch = logits.size(0), classes = logits.size(1);
  if (grad.numel() == 0) return grad;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "energy_head_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t inv_t = static_cast<acc_t>(1.0 / temperature);
    const scalar_t* lp = logits.const_data_ptr<scalar_t>();
    const int64_t* yp = yl.defined() ? yl.const_data_ptr<int64_t>() : nullptr;
    const acc_t* gep = ge.defined() ? ge.const_data_ptr<acc_t>() : nullptr;
    const acc_t* gcp = gc.defined() ? gc.const_data_ptr<acc_t>() : nullptr;
    const acc_t* gxp = gx.defined() ? gx.const_data_ptr<acc_t>() : nullptr;
    scalar_t* gp = grad.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch, std::max<int64_t>(1, 4096 / classes), [&](int64_t b0, int64_t b1) {
      using V = Vectorized<acc_t>;
      std::vector<acc_t> in_buf, out_buf(std::is_same_v<scalar_t, acc_t> ? 0 : classes);
      for (int64_t b = b0; b < b1; ++b) {
        const acc_t* r = load_row<scalar_t, acc_t>(lp + b * classes, classes, in_buf);
        acc_t* o = std::is_same_v<scalar_t, acc_t> ? reinterpret_cast<acc_t*>(gp + b * classes)
                                                   : out_buf.data();
        // d energy / dl = -softmax(l / T) and d ce / dl = softmax(l) - onehot(y), both from the
        // row's recomputed shift and log-sums (see prepare_energy_backward).
        const RowStats<acc_t> st = row_stats(r, classes, inv_t, gep != nullptr, gxp != nullptr);
        const acc_t se = gep ? gep[b] : acc_t(0);
        const acc_t sx = gxp ? gxp[b] : acc_t(0);
        const V vm(st.shift), vs(inv_t), vlt(st.log_sum_t), vl1(st.log_sum_1);
        for (int64_t k = 0; k < classes; k += V::size()) {
          const int64_t len = std::min<int64_t>(V::size(), classes - k);
          const V z = (len == V::size() ? V::loadu(r + k) : V::loadu(r + k, len)) - vm;
          V v(0);
          if (gep) v = v - V(se) * (z * vs - vlt).exp();
          if (gxp) v = v + V(sx) * (z - vl1).exp();
          v.store(o + k, len);
        }
        if (yp) o[yp[b]] += (gcp ? -gcp[b] : acc_t(0)) - sx;
        if constexpr (!std::is_same_v<scalar_t, acc_t>) {
          for (int64_t j = 0; j < classes; ++j) gp[b * classes + j] = static_cast<scalar_t>(o[j]);
        }
      }
    });
  });
  return grad;
}

}  // namespace ebjdat
