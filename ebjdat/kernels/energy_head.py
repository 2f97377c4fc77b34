"""Fused energy head in Triton: tiles of rows, one sweep for the max and one for the exp-sums
(a single sweep when K fits one tile, as it does for K <= 2048); the backward recomputes both
(see ebjdat/ops/energy_head.py for why) and then writes the gradient in a third sweep."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET

_MAX_TILE = 16384 if INTERPRET else 4096


@triton.jit
def _row_stats(
    row_ptr,
    rmask,
    K,
    inv_t,
    NEED_T: tl.constexpr,
    NEED_1: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Per row: the shift m (the max, or 0 when it is infinite, as torch.logsumexp), and
    log(sum(exp((l - m) / T))) and log(sum(exp(l - m))) where asked for."""
    m = tl.full([BLOCK_B], float("-inf"), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = rmask[:, None] & (cols < K)[None, :]
        lv = tl.load(row_ptr + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
        m = tl.maximum(m, tl.max(lv, axis=1))  # a NaN reaches the result through the sums
    m = tl.where((m == float("inf")) | (m == float("-inf")), 0.0, m)
    st = tl.zeros([BLOCK_B], dtype=tl.float32)
    s1 = tl.zeros([BLOCK_B], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = rmask[:, None] & (cols < K)[None, :]
        lv = tl.load(row_ptr + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
        z = lv - m[:, None]
        if NEED_T:
            st += tl.sum(tl.exp(z * inv_t), axis=1)
        if NEED_1:
            s1 += tl.sum(tl.exp(z), axis=1)
    # Rows past B and sums not asked for stay 0; log(1) keeps them quiet (nothing reads them).
    log_st = st
    log_s1 = s1
    if NEED_T:
        log_st = tl.log(tl.where(rmask, st, 1.0))
    if NEED_1:
        log_s1 = tl.log(tl.where(rmask, s1, 1.0))
    return m, log_st, log_s1


@triton.jit
def _fwd_kernel(
    l_ptr,
    y_ptr,
    e_ptr,
    c_ptr,
    ce_ptr,
    B,
    K,
    stride_b,
    t,
    inv_t,
    HAS_Y: tl.constexpr,
    UNIT_T: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    row_ptr = l_ptr + rows.to(tl.int64)[:, None] * stride_b
    m, log_st, log_s1 = _row_stats(
        row_ptr, rmask, K, inv_t, not UNIT_T, UNIT_T or HAS_Y, BLOCK_B, BLOCK_K
    )
    if UNIT_T:
        energy = -(m + log_s1)
    else:
        energy = -(m + t * log_st)
    tl.store(e_ptr + rows, energy, mask=rmask)
    if HAS_Y:
        yv = tl.load(y_ptr + rows, mask=rmask, other=0)
        ly = tl.load(l_ptr + rows.to(tl.int64) * stride_b + yv, mask=rmask, other=0.0).to(
            tl.float32
        )
        tl.store(c_ptr + rows, -ly, mask=rmask)
        tl.store(ce_ptr + rows, (m + log_s1) - ly, mask=rmask)


@triton.jit
def _bwd_kernel(
    l_ptr,
    y_ptr,
    ge_ptr,
    gc_ptr,
    gx_ptr,
    out_ptr,
    B,
    K,
    stride_b,
    inv_t,
    HAS_Y: tl.constexpr,
    HAS_GE: tl.constexpr,
    HAS_GC: tl.constexpr,
    HAS_GX: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    row_off = rows.to(tl.int64)[:, None] * stride_b
    m, log_st, log_s1 = _row_stats(
        l_ptr + row_off, rmask, K, inv_t, HAS_GE, HAS_GX, BLOCK_B, BLOCK_K
    )
    zero = tl.zeros([BLOCK_B], dtype=tl.float32)
    se = tl.load(ge_ptr + rows, mask=rmask, other=0.0) if HAS_GE else zero
    sx = tl.load(gx_ptr + rows, mask=rmask, other=0.0) if HAS_GX else zero
    sc = tl.load(gc_ptr + rows, mask=rmask, other=0.0) if HAS_GC else zero
    if HAS_Y:
        yv = tl.load(y_ptr + rows, mask=rmask, other=0)
    else:
        yv = tl.full([BLOCK_B], -1, dtype=tl.int64)
    onehot_w = -sc - sx
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = rmask[:, None] & (cols < K)[None, :]
        lv = tl.load(l_ptr + row_off + cols[None, :], mask=mask, other=float("-inf"))
        z = lv.to(tl.float32) - m[:, None]
        v = tl.zeros([BLOCK_B, BLOCK_K], dtype=tl.float32)
        # d energy / dl = -softmax(l / T); d ce / dl = softmax(l) - onehot(y); d cond = -onehot.
        if HAS_GE:
            v -= se[:, None] * tl.exp(z * inv_t - log_st[:, None])
        if HAS_GX:
            v += sx[:, None] * tl.exp(z - log_s1[:, None])
        v += tl.where(cols[None, :] == yv[:, None], onehot_w[:, None], 0.0)
        tl.store(out_ptr + row_off + cols[None, :], v.to(out_ptr.dtype.element_ty), mask=mask)


def _tiles(batch: int, classes: int) -> tuple[int, int, int]:
    block_k = min(triton.next_power_of_2(max(classes, 1)), _MAX_TILE)
    block_b = max(1, min(triton.next_power_of_2(max(batch, 1)), _MAX_TILE // block_k))
    return block_b, block_k, triton.cdiv(batch, block_b)


def forward(
    logits: torch.Tensor,
    y: torch.Tensor | None,
    temperature: float,
    energy: torch.Tensor,
    cond: torch.Tensor,
    ce: torch.Tensor,
) -> None:
    """logits is row-major [B, K]; outputs are float32 [B] (cond/ce empty without y)."""
    batch, classes = logits.shape
    if batch == 0:
        return
    block_b, block_k, grid = _tiles(batch, classes)
    _fwd_kernel[(grid,)](
        logits,
        y if y is not None else energy,
        energy,
        cond,
        ce,
        batch,
        classes,
        logits.stride(0),
        float(temperature),
        1.0 / float(temperature),
        HAS_Y=y is not None,
        UNIT_T=float(temperature) == 1.0,
        BLOCK_B=block_b,
        BLOCK_K=block_k,
    )


def backward(
    logits: torch.Tensor,
    y: torch.Tensor | None,
    grad_energy: torch.Tensor | None,
    grad_cond: torch.Tensor | None,
    grad_ce: torch.Tensor | None,
    temperature: float,
    out: torch.Tensor,
) -> None:
    batch, classes = logits.shape
    if out.numel() == 0:
        return
    block_b, block_k, grid = _tiles(batch, classes)
    dummy = out
    _bwd_kernel[(grid,)](
        logits,
        y if y is not None else dummy,
        grad_energy if grad_energy is not None else dummy,
        grad_cond if grad_cond is not None else dummy,
        grad_ce if grad_ce is not None else dummy,
        out,
        batch,
        classes,
        logits.stride(0),
        1.0 / float(temperature),
        HAS_Y=y is not None,
        HAS_GE=grad_energy is not None,
        HAS_GC=grad_cond is not None,
        HAS_GX=grad_ce is not None,
        BLOCK_B=block_b,
        BLOCK_K=block_k,
    )
