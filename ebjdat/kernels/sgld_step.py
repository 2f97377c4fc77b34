"""SGLD step in Triton: clip, step, in-kernel Philox noise (tl.randn4x) and clamp in one pass."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INF, bound, flat_block


@triton.jit
def _sgld_kernel(
    x_ptr,
    g_ptr,
    noise_ptr,
    out_ptr,
    numel,
    step,
    clip,
    sd,
    lo,
    hi,
    seed,
    offset,
    NOISE_MODE: tl.constexpr,  # 0: none, 1: explicit tensor, 2: Philox
    BLOCK: tl.constexpr,
):
    base = tl.program_id(0).to(tl.int64) * BLOCK
    offs = base + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.where(g < -clip, -clip, g)
    g = tl.where(g > clip, clip, g)
    v = x + step * g
    if NOISE_MODE == 1:
        v += sd * tl.load(noise_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if NOISE_MODE == 2:
        k = offset + base // 4 + tl.arange(0, BLOCK // 4)
        n1, n2, n3, n4 = tl.randn4x(seed, k)
        v += sd * tl.interleave(tl.interleave(n1, n3), tl.interleave(n2, n4))
    v = tl.where(v < lo, lo, v)
    v = tl.where(v > hi, hi, v)
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=mask)


def launch(
    x: torch.Tensor,
    grad: torch.Tensor,
    out: torch.Tensor,
    step_size: float,
    grad_clip: float | None,
    noise_std: float,
    clamp_min: float | None,
    clamp_max: float | None,
    noise: torch.Tensor | None,
    seed: int,
    offset: int,
) -> None:
    """All tensors dense with out's strides; they are walked as flat buffers in memory order."""
    n = out.numel()
    if n == 0:
        return
    mode = 1 if noise is not None else (2 if noise_std != 0.0 else 0)
    block = flat_block(n)
    _sgld_kernel[(triton.cdiv(n, block),)](
        x,
        grad,
        noise if noise is not None else x,
        out,
        n,
        float(step_size),
        bound(grad_clip, INF),
        float(noise_std),
        bound(clamp_min, -INF),
        bound(clamp_max, INF),
        seed,
        offset,
        NOISE_MODE=mode,
        BLOCK=block,
    )
