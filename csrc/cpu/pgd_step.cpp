// PGD step + eps-ball projection + clamp. L-inf is one flat pass. L2 is one task per sample whose
// three sweeps (||g||, ||delta||, write) run over a cache-resident sample, so memory is read once.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "../common.h"
#include "../ops.h"

namespace ebjdat {

at::Tensor pgd_step_cpu(const at::Tensor& x_adv_in, const at::Tensor& grad_in,
                        const at::Tensor& x_orig_in, double step_size, std::optional<double> eps,
                        std::string norm_s, std::optional<double> clamp_min,
                        std::optional<double> clamp_max) {
  const PgdStepInputs in = prepare_pgd_step(x_adv_in, grad_in, x_orig_in, step_size, eps, norm_s,
                                            clamp_min, clamp_max);
  const at::Tensor &out = in.s.out, &xa = in.x_adv, &g = in.grad, &xo = in.x_orig;
  const int64_t n = in.s.n, batch = in.s.batch, d = in.s.d;
  const Norm norm = in.norm;
  const Bounds& b = in.bounds;
  if (n == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "pgd_step_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t step = static_cast<acc_t>(step_size);
    const bool project = eps.has_value();
    const acc_t e = static_cast<acc_t>(eps.value_or(0.0));
    const acc_t lo = static_cast<acc_t>(b.lo);
    const acc_t hi = static_cast<acc_t>(b.hi);
    const scalar_t* ap = xa.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* op_ = xo.const_data_ptr<scalar_t>();
    scalar_t* rp = out.mutable_data_ptr<scalar_t>();
    if (norm == Norm::kLinf) {
      // Two straight-line loops (with and without the ball) that the compiler vectorises.
      auto linf = [&](auto project) {
        at::parallel_for(0, n, 4096, [&](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i) {
            const acc_t gv = static_cast<acc_t>(gp[i]);
            const acc_t sgn = gv > 0 ? acc_t(1) : (gv < 0 ? acc_t(-1) : gv);  // NaN stays NaN
            acc_t v = static_cast<acc_t>(ap[i]) + step * sgn;
            if constexpr (decltype(project)::value) {
              const acc_t o = static_cast<acc_t>(op_[i]);
              v = clamp_nan(v, o - e, o + e);
              v = o != o ? o : v;
            }
            rp[i] = static_cast<scalar_t>(clamp_nan(v, lo, hi));
          }
        });
      };
      if (project) {
        linf(std::true_type{});
      } else {
        linf(std::false_type{});
      }
      return;
    }
    at::parallel_for(0, batch, 1, [&](int64_t s0, int64_t s1) {
      for (int64_t s = s0; s < s1; ++s) {
        const scalar_t* a = ap + s * d;
        const scalar_t* gs = gp + s * d;
        const scalar_t* o = op_ + s * d;
        scalar_t* r = rp + s * d;
        // `omp simd` lets the sums be reassociated, and so vectorised (-fopenmp is on); _Pragma,
        // since #pragma cannot stand inside the AT_DISPATCH macro argument.
        acc_t gss = 0;
        _Pragma("omp simd reduction(+ : gss)")
        for (int64_t i = 0; i < d; ++i) gss += static_cast<acc_t>(gs[i]) * static_cast<acc_t>(gs[i]);
        const acc_t gscale = step / std::max(std::sqrt(gss), acc_t(1e-12));
        acc_t factor = 1;
        if (project) {
          acc_t dss = 0;
        _Pragma("omp simd reduction(+ : dss)")
          for (int64_t i = 0; i < d; ++i) {
            const acc_t dv = static_cast<acc_t>(a[i]) + gscale * static_cast<acc_t>(gs[i]) -
                             static_cast<acc_t>(o[i]);
            dss += dv * dv;
          }
          const acc_t dn = std::sqrt(dss);
          factor = dn > e ? e / dn : (dn != dn ? dn : acc_t(1));
        }
        if (project) {
        _Pragma("omp simd")
          for (int64_t i = 0; i < d; ++i) {
            const acc_t ov = static_cast<acc_t>(o[i]);
            const acc_t v = static_cast<acc_t>(a[i]) + gscale * static_cast<acc_t>(gs[i]);
            r[i] = static_cast<scalar_t>(clamp_nan(ov + (v - ov) * factor, lo, hi));
          }
        } else {
        _Pragma("omp simd")
          for (int64_t i = 0; i < d; ++i) {
            const acc_t v = static_cast<acc_t>(a[i]) + gscale * static_cast<acc_t>(gs[i]);
            r[i] = static_cast<scalar_t>(clamp_nan(v, lo, hi));
          }
        }
      }
    });
  });
  return out;
}

}  // namespace ebjdat
