"""PGD step in Triton. L-inf: one flat pass. L2: one program per sample with three sweeps
(||g||, ||delta||, write); a sample is re-read from cache, so memory is read about once."""

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
    for j0 in range(0, d, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        g = tl.load(g_ptr + start + j, mask=j < d, other=0.0).to(tl.float32)
        gss += g * g
    gscale = step / tl.maximum(tl.sqrt(tl.sum(gss, axis=0)), 1e-12)
    factor = 1.0
    if PROJECT:
        dss = tl.zeros([BLOCK], dtype=tl.float32)
        for j0 in range(0, d, BLOCK):
            j = j0 + tl.arange(0, BLOCK)
            mask = j < d
            a = tl.load(a_ptr + start + j, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + start + j, mask=mask, other=0.0).to(tl.float32)
            o = tl.load(o_ptr + start + j, mask=mask, other=0.0).to(tl.float32)
            dv = a + gscale * g - o
            dss += dv * dv
        dn = tl.sqrt(tl.sum(dss, axis=0))
        factor = tl.where(dn > eps, eps / dn, tl.where(dn != dn, dn, 1.0))
    for j0 in range(0, d, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        mask = j < d
        a = tl.load(a_ptr + start + j, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + start + j, mask=mask, other=0.0).to(tl.float32)
        v = a + gscale * g
        if PROJECT:
            o = tl.load(o_ptr + start + j, mask=mask, other=0.0).to(tl.float32)
            v = o + (v - o) * factor
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
