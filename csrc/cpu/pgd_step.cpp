// PGD step + eps-ball projection + clamp. L-inf is one flat pass. L2 is one task per sample whose
// three sweeps (||g||, ||delta||, write) run over a cache-resident sample, so memory is read once;
// a norm that would overflow or underflow costs one more (scaled) sweep.
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
        // `omp simd` lets the reductions be reassociated, and so vectorised (-fopenmp is on);
        // _Pragma, since #pragma cannot stand inside the AT_DISPATCH macro argument.
        // Sweep 1: ||g||^2 and max|g|; a norm out of the direct range is summed again, scaled
        // (l2_direct / l2_prescale in common.h). The direction is then (g * gs_scale) * c.
        acc_t gss = 0, gmax = 0;
        _Pragma("omp simd reduction(+ : gss) reduction(max : gmax)")
        for (int64_t i = 0; i < d; ++i) {
          const acc_t gv = static_cast<acc_t>(gs[i]);
          gss += gv * gv;
          gmax = std::max(gmax, std::abs(gv));
        }
        acc_t gs_scale = 1;
        if (!l2_direct(gmax, gss)) {
          gs_scale = l2_prescale(gmax);
          gss = 0;
        _Pragma("omp simd reduction(+ : gss)")
          for (int64_t i = 0; i < d; ++i) {
            const acc_t q = static_cast<acc_t>(gs[i]) * gs_scale;
            gss += q * q;
          }
        }
        const acc_t c = gss == 0 ? acc_t(0) : step / std::sqrt(gss);  // g == 0: no step
        auto stepped = [&](int64_t i) {
          return static_cast<acc_t>(a[i]) + (static_cast<acc_t>(gs[i]) * gs_scale) * c;
        };
        // Sweep 2: ||delta||, delta = stepped - x_orig, the same way; the projection writes
        // x_orig + (delta * t1) * factor.
        acc_t t1 = 1, factor = 1;
        if (project) {
          acc_t dss = 0, dmax = 0;
        _Pragma("omp simd reduction(+ : dss) reduction(max : dmax)")
          for (int64_t i = 0; i < d; ++i) {
            const acc_t dv = stepped(i) - static_cast<acc_t>(o[i]);
            dss += dv * dv;
            dmax = std::max(dmax, std::abs(dv));
          }
          acc_t t = 1;
          if (!l2_direct(dmax, dss)) {
            t = l2_prescale(dmax);
            dss = 0;
        _Pragma("omp simd reduction(+ : dss)")
            for (int64_t i = 0; i < d; ++i) {
              const acc_t dv = (stepped(i) - static_cast<acc_t>(o[i])) * t;
              dss += dv * dv;
            }
          }
          const acc_t dn = std::sqrt(dss);  // t * ||delta||
          const bool outside = dn > e * t;   // e * t may overflow to inf: then it is inside
          t1 = outside ? t : acc_t(1);
          factor = outside ? e / dn : (dn != dn ? dn : acc_t(1));
        }
        if (project) {
        _Pragma("omp simd")
          for (int64_t i = 0; i < d; ++i) {
            const acc_t ov = static_cast<acc_t>(o[i]);
            r[i] = static_cast<scalar_t>(clamp_nan(ov + ((stepped(i) - ov) * t1) * factor, lo, hi));
          }
        } else {
        _Pragma("omp simd")
          for (int64_t i = 0; i < d; ++i) {
            r[i] = static_cast<scalar_t>(clamp_nan(stepped(i), lo, hi));
          }
        }
      }
    });
  });
  return out;
}

}  // namespace ebjdat
