// PGD step + eps-ball projection + clamp on the CPU. L-inf is one flat pass. L2 is one task per
// sample whose three sweeps (||g||, ||delta||, write) run over a cache-resident sample, so memory
// is read once; a norm that would overflow or underflow costs one more (scaled) sweep. The
// formulas are PgdStep's (csrc/pgd_step.h), shared with the CUDA kernels.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "../pgd_step.h"

namespace ebjdat {
namespace {

// One sample's three sweeps. `omp simd` lets the reductions be reassociated, and so vectorised
// (-fopenmp is on).
template <bool kProject, typename scalar_t, typename acc_t>
void l2_sample(const PgdStep<acc_t>& op, const scalar_t* a, const scalar_t* g, const scalar_t* o,
               scalar_t* r, int64_t d) {
  L2Sample<acc_t> k;
  // Sweep 1: ||g||^2 and max|g|; a norm out of the direct range is summed again, scaled.
  acc_t gss = 0, gmax = 0;
#pragma omp simd reduction(+ : gss) reduction(max : gmax)
  for (int64_t i = 0; i < d; ++i) {
    const acc_t gv = static_cast<acc_t>(g[i]);
    gss += gv * gv;
    gmax = std::max(gmax, std::abs(gv));
  }
  if (!l2_direct(gmax, gss)) {
    k.g_scale = l2_prescale(gmax);
    gss = 0;
#pragma omp simd reduction(+ : gss)
    for (int64_t i = 0; i < d; ++i) {
      const acc_t q = static_cast<acc_t>(g[i]) * k.g_scale;
      gss += q * q;
    }
  }
  k.g_coeff = op.l2_coeff(gss);
  auto delta = [&](int64_t i) {
    return op.l2_stepped(static_cast<acc_t>(a[i]), static_cast<acc_t>(g[i]), k) -
           static_cast<acc_t>(o[i]);
  };
  // Sweep 2: ||delta||, the same way.
  if constexpr (kProject) {
    acc_t dss = 0, dmax = 0;
#pragma omp simd reduction(+ : dss) reduction(max : dmax)
    for (int64_t i = 0; i < d; ++i) {
      const acc_t dv = delta(i);
      dss += dv * dv;
      dmax = std::max(dmax, std::abs(dv));
    }
    acc_t t = 1;
    if (!l2_direct(dmax, dss)) {
      t = l2_prescale(dmax);
      dss = 0;
#pragma omp simd reduction(+ : dss)
      for (int64_t i = 0; i < d; ++i) {
        const acc_t dv = delta(i) * t;
        dss += dv * dv;
      }
    }
    op.l2_ball(dss, t, k);
  }
  // Sweep 3: step, project, clamp, write (x_orig is read only with the ball).
#pragma omp simd
  for (int64_t i = 0; i < d; ++i) {
    const acc_t ov = kProject ? static_cast<acc_t>(o[i]) : acc_t(0);
    r[i] = static_cast<scalar_t>(
        op.template l2<kProject>(static_cast<acc_t>(a[i]), static_cast<acc_t>(g[i]), ov, k));
  }
}

void pgd_step_into(const PgdStepInputs& in) {
  const at::Tensor& out = in.s.out;
  const int64_t n = in.s.n, batch = in.s.batch, d = in.s.d;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "pgd_step_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const PgdStep<acc_t> op = in.step<acc_t>();
    const scalar_t* ap = in.x_adv.const_data_ptr<scalar_t>();
    const scalar_t* gp = in.grad.const_data_ptr<scalar_t>();
    const scalar_t* xo = in.x_orig.const_data_ptr<scalar_t>();
    scalar_t* rp = out.mutable_data_ptr<scalar_t>();
    // Separate straight-line loops with and without the ball, which the compiler vectorises.
    auto run = [&](auto project) {
      constexpr bool kProject = decltype(project)::value;
      if (in.norm == Norm::kLinf) {
        at::parallel_for(0, n, 4096, [&](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i) {
            const acc_t ov = kProject ? static_cast<acc_t>(xo[i]) : acc_t(0);
            rp[i] = static_cast<scalar_t>(
                op.template linf<kProject>(static_cast<acc_t>(ap[i]), static_cast<acc_t>(gp[i]), ov));
          }
        });
        return;
      }
      at::parallel_for(0, batch, 1, [&](int64_t s0, int64_t s1) {
        for (int64_t s = s0; s < s1; ++s) {
          l2_sample<kProject>(op, ap + s * d, gp + s * d, xo + s * d, rp + s * d, d);
        }
      });
    };
    if (in.project()) {
      run(std::true_type{});
    } else {
      run(std::false_type{});
    }
  });
}

}  // namespace
}  // namespace ebjdat

TORCH_LIBRARY_IMPL(ebjdat, CPU, m) {
  m.impl("pgd_step", &ebjdat::pgd_step_kernel<ebjdat::pgd_step_into>);
}
