// Fused energy head: one pass over each row of logits gives -T*logsumexp(l/T), -l[y] and the
// per-sample CE; the backward is one pass over rows too. Outputs are in the accumulation dtype
// (float32 for half types), as autocast does for logsumexp and cross-entropy.
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

// log(sum(exp(scale * r))) with the max shift torch.logsumexp uses (an infinite max is not
// subtracted, so +inf rows give +inf and all -inf rows give -inf).
template <typename acc_t>
acc_t row_lse(const acc_t* r, int64_t k, acc_t scale, acc_t max_r) {
  using V = Vectorized<acc_t>;
  acc_t m = scale * max_r;
  if (std::isinf(m)) m = 0;
  const V vs(scale), vm(m);
  V acc(0);
  int64_t i = 0;
  for (; i + V::size() <= k; i += V::size()) acc = acc + (V::loadu(r + i) * vs - vm).exp();
  if (i < k) acc = acc + V::set(V(0), (V::loadu(r + i, k - i) * vs - vm).exp(), k - i);
  return std::log(at::vec::vec_reduce_all<acc_t>([](V& a, V& b) { return a + b; }, acc)) + m;
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
        const acc_t m = row_max(r, classes);
        const acc_t lse1 = row_lse(r, classes, acc_t(1), m);
        ep[b] = unit_t ? -lse1 : -t * row_lse(r, classes, acc_t(1) / t, m);
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
                                   const at::Tensor& energy_in, const at::Tensor& ce_in,
                                   const OptTensor& grad_energy, const OptTensor& grad_cond,
                                   const OptTensor& grad_ce, double temperature) {
  const EnergyBackward in = prepare_energy_backward(logits_in, y, energy_in, ce_in, grad_energy,
                                                    grad_cond, grad_ce, temperature);
  const at::Tensor &logits = in.logits, &yl = in.y, &energy = in.energy, &ce = in.ce;
  const at::Tensor &ge = in.grad_energy, &gc = in.grad_cond, &gx = in.grad_ce, &grad = in.grad;
  const int64_t batch = logits.size(0), classes = logits.size(1);
  if (grad.numel() == 0) return grad;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "energy_head_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t t = static_cast<acc_t>(temperature);
    const scalar_t* lp = logits.const_data_ptr<scalar_t>();
    const int64_t* yp = yl.defined() ? yl.const_data_ptr<int64_t>() : nullptr;
    const acc_t* gep = ge.defined() ? ge.const_data_ptr<acc_t>() : nullptr;
    const acc_t* gcp = gc.defined() ? gc.const_data_ptr<acc_t>() : nullptr;
    const acc_t* gxp = gx.defined() ? gx.const_data_ptr<acc_t>() : nullptr;
    const acc_t* ep = energy.const_data_ptr<acc_t>();
    const acc_t* cep = ce.defined() ? ce.const_data_ptr<acc_t>() : nullptr;
    scalar_t* gp = grad.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch, std::max<int64_t>(1, 4096 / classes), [&](int64_t b0, int64_t b1) {
      using V = Vectorized<acc_t>;
      std::vector<acc_t> in_buf, out_buf(std::is_same_v<scalar_t, acc_t> ? 0 : classes);
      for (int64_t b = b0; b < b1; ++b) {
        const acc_t* r = load_row<scalar_t, acc_t>(lp + b * classes, classes, in_buf);
        acc_t* o = std::is_same_v<scalar_t, acc_t> ? reinterpret_cast<acc_t*>(gp + b * classes)
                                                   : out_buf.data();
        // d energy / dl = -softmax(l / T), with logsumexp(l / T) = -energy / T.
        const acc_t se = gep ? gep[b] : acc_t(0);
        const acc_t lse_t = -ep[b] / t;
        // d ce / dl = softmax(l) - onehot(y), with logsumexp(l) = ce + l[y].
        const acc_t sx = gxp ? gxp[b] : acc_t(0);
        const acc_t lse1 = gxp ? cep[b] + r[yp[b]] : acc_t(0);
        const acc_t inv_t = acc_t(1) / t;
        for (int64_t k = 0; k < classes; k += V::size()) {
          const int64_t len = std::min<int64_t>(V::size(), classes - k);
          const V l = len == V::size() ? V::loadu(r + k) : V::loadu(r + k, len);
          V v(0);
          if (gep) v = v - V(se) * (l * V(inv_t) - V(lse_t)).exp();
          if (gxp) v = v + V(sx) * (l - V(lse1)).exp();
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
