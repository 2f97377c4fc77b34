"""PGD step in Triton. L-inf: one flat pass. L2: one program per sample with three sweeps
(||g||, ||delta||, write), plus a rescaled one for a norm that would overflow or underflow; a
sample is re-read from cache, so memory is read about once."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INF, ROW_BLOCK, bound, flat_block


@triton.jit
def _linf_kernel(
    a_ptr,
    g_ptr,
    o_ptr,
    out_ptr,
    numel,
    step,
    eps,
    lo,
    hi,
    PROJECT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    sgn = tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, g))  # NaN stays NaN
    v = a + step * sgn
    if PROJECT:
        o = tl.load(o_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        v = tl.where(v < o - eps, o - eps, v)
        v = tl.where(v > o + eps, o + eps, v)
        v = tl.where(o != o, o, v)
    v = tl.where(v < lo, lo, v)
    v = tl.where(v > hi, hi, v)
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=mask)


# L2 norms: a sample whose max |v| lies in [2^-32, 2^32] has sum(v^2) free of overflow and of
# harmful underflow, and takes the one sweep; any other is summed again as (v * s)^2 with
# s = 1 / max|v| kept normal (ebjdat/ops/pgd_step.py `prescale`; the C++ kernels use the same).
_DIRECT_LO = tl.constexpr(2.0**-32)
_DIRECT_HI = tl.constexpr(2.0**32)
_TINY = tl.constexpr(2.0**-126)
_HUGE = tl.constexpr(2.0**126)


@triton.jit
def _prescale(vmax):
    s = 1.0 / tl.minimum(tl.maximum(vmax, _TINY), _HUGE)
    return tl.where(vmax == float("inf"), 0.0, s)


@triton.jit
def _l2_kernel(
    a_ptr,
    g_ptr,
    o_ptr,
    out_ptr,
    d,
    step,
    eps,
    lo,
    hi,
    PROJECT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    start = tl.program_id(0).to(tl.int64) * d
    gss = tl.zeros([BLOCK], dtype=tl.float32)
    gmax = tl.zeros([BLOCK], dtype=tl.float32)
    for j0 in range(0, d, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        g = tl.load(g_ptr + start + j, mask=j < d, other=0.0).to(tl.float32)
        gss += g * g
        gmax = tl.maximum(gmax, tl.abs(g))
    gsum = tl.sum(gss, axis=0)
    gm = tl.max(gmax, axis=0)
    rescale = (gm < _DIRECT_LO) | (gm > _DIRECT_HI) | (gsum != gsum)
    s = tl.where(rescale, _prescale(gm), 1.0)
    if rescale:
        gss = tl.zeros([BLOCK], dtype=tl.float32)
        for j0 in range(0, d, BLOCK):
            j = j0 + tl.arange(0, BLOCK)
            q = tl.load(g_ptr + start + j, mask=j < d, other=0.0).to(tl.float32) * s
            gss += q * q
        gsum = tl.sum(gss, axis=0)
    c = tl.where(gsum == 0, 0.0, step / tl.sqrt(gsum))  # an all-zero gradient takes no step
    t1 = 1.0
    factor = 1.0
    if PROJECT:
        dss = tl.zeros([BLOCK], dtype=tl.float32)
        dmax = tl.zeros([BLOCK], dtype=tl.float32)
        for j0 in range(0, d, BLOCK):
            j = j0 + tl.arange(0, BLOCK)
            mask = j < d
            a = tl.load(a_ptr + start + j, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + start + j, mask=mask, other=0.0).to(tl.float32)
            o = tl.load(o_ptr + start + j, mask=mask, other=0.0).to(tl.float32)
            dv = a + (g * s) * c - o
            dss += dv * dv
            dmax = tl.maximum(dmax, tl.abs(dv))
        dsum = tl.sum(dss, axis=0)
        dm = tl.max(dmax, axis=0)
        rescale_d = (dm < _DIRECT_LO) | (dm > _DIRECT_HI) | (dsum != dsum)
        t = tl.where(rescale_d, _prescale(dm), 1.0)
        if rescale_d:
            dss = tl.zeros([BLOCK], dtype=tl.float32)
            for j0 in range(0, d, BLOCK):
                j = j0 + tl.arange(0, BLOCK)
                mask = j < d
                a = tl.load(a_ptr + start + j, mask=mask, other=0.0).to(tl.float32)
                g = tl.load(g_ptr + start + j, mask=mask, other=0.0).to(tl.float32)
                o = tl.load(o_ptr + start + j, mask=mask, other=0.0).to(tl.float32)
                dv = (a + (g * s) * c - o) * t
                dss += dv * dv
            dsum = tl.sum(dss, axis=0)
        r = tl.sqrt(dsum)  # t * ||delta||
        outside = r > eps * t  # eps * t may overflow to inf: then the sample is inside
        t1 = tl.where(outside, t, 1.0)
        factor = tl.where(outside, eps / r, tl.where(r != r, r, 1.0))
    for j0 in range(0, d, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        mask = j < d
        a = tl.load(a_ptr + start + j, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + start + j, mask=mask, other=0.0).to(tl.float32)
        v = a + (g * s) * c
        if PROJECT:
            o = tl.load(o_ptr + start + j, mask=mask, other=0.0).to(tl.float32)
            v = o + ((v - o) * t1) * factor
        v = tl.where(v < lo, lo, v)
        v = tl.where(v > hi, hi, v)
        tl.store(out_ptr + start + j, v.to(out_ptr.dtype.element_ty), mask=mask)


def launch(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x_orig: torch.Tensor,
    out: torch.Tensor,
    step_size: float,
    eps: float | None,
    norm: str,
    clamp_min: float | None,
    clamp_max: float | None,
) -> None:
    """Inputs have out's strides; out is batch-major (samples are contiguous blocks)."""
    n = out.numel()
    if n == 0:
        return
    lo, hi = bound(clamp_min, -INF), bound(clamp_max, INF)
    args = (float(step_size), bound(eps, INF), lo, hi)
    if norm == "linf":
        block = flat_block(n)
        _linf_kernel[(triton.cdiv(n, block),)](
            x_adv, grad, x_orig, out, n, *args, PROJECT=eps is not None, BLOCK=block
        )
        return
    batch = out.shape[0]
    d = n // batch
    block = max(16, min(ROW_BLOCK, triton.next_power_of_2(d)))
    _l2_kernel[(batch,)](x_adv, grad, x_orig, out, d, *args, PROJECT=eps is not None, BLOCK=block)
