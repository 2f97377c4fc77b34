"""PGD random start in Triton: uniform in the L-inf box (flat) or the L2 ball (one program per
sample: a pass for ||z||, a pass to write)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INF, ROW_BLOCK, bound, flat_block


@triton.jit
def _linf_kernel(x_ptr, out_ptr, numel, eps, lo, hi, seed, offset, BLOCK: tl.constexpr):
    base = tl.program_id(0).to(tl.int64) * BLOCK
    offs = base + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    k = offset + base // 4 + tl.arange(0, BLOCK // 4)
    u1, u2, u3, u4 = tl.rand4x(seed, k)
    u = tl.interleave(tl.interleave(u1, u3), tl.interleave(u2, u4))
    v = x + eps * (2.0 * u - 1.0)
    v = tl.where(v < lo, lo, v)
    v = tl.where(v > hi, hi, v)
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _normal_at(seed, offset, g):
    """The normal of global element g: lane g % 4 of counter offset + g // 4."""
    n1, n2, n3, n4 = tl.randn4x(seed, offset + g // 4)
    lane = g % 4
    return tl.where(lane == 0, n1, tl.where(lane == 1, n2, tl.where(lane == 2, n3, n4)))


@triton.jit
def _l2_kernel(x_ptr, out_ptr, d, eps, lo, hi, seed, offset, radius_base, BLOCK: tl.constexpr):
    s = tl.program_id(0).to(tl.int64)
    start = s * d
    ss = tl.zeros([BLOCK], dtype=tl.float32)
    for j0 in range(0, d, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        z = _normal_at(seed, offset, start + j)
        ss += tl.where(j < d, z * z, 0.0)
    u = tl.rand(seed, tl.zeros([1], dtype=tl.int64) + offset + radius_base + s)
    r = tl.exp(tl.log(u) / d)
    zn = tl.sqrt(tl.sum(ss, axis=0))  # normals are bounded: no scaling needed
    scale = tl.where(zn > 0, eps * r / zn, 0.0)
    for j0 in range(0, d, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        mask = j < d
        z = _normal_at(seed, offset, start + j)
        x = tl.load(x_ptr + start + j, mask=mask, other=0.0).to(tl.float32)
        v = x + scale * z
        v = tl.where(v < lo, lo, v)
        v = tl.where(v > hi, hi, v)
        tl.store(out_ptr + start + j, v.to(out_ptr.dtype.element_ty), mask=mask)


def launch(
    x: torch.Tensor,
    out: torch.Tensor,
    eps: float,
    norm: str,
    clamp_min: float | None,
    clamp_max: float | None,
    seed: int,
    offset: int,
) -> None:
    """x has out's strides; out is batch-major (samples are contiguous blocks)."""
    n = out.numel()
    if n == 0:
        return
    lo, hi = bound(clamp_min, -INF), bound(clamp_max, INF)
    if norm == "linf":
        block = flat_block(n)
        _linf_kernel[(triton.cdiv(n, block),)](
            x, out, n, float(eps), lo, hi, seed, offset, BLOCK=block
        )
        return
    batch = out.shape[0]
    d = n // batch
    block = max(16, min(ROW_BLOCK, triton.next_power_of_2(d)))
    _l2_kernel[(batch,)](x, out, d, float(eps), lo, hi, seed, offset, (n + 3) // 4, BLOCK=block)
