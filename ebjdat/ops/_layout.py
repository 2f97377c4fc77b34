"""Output-layout rules shared by the fake kernels, the reference and the Triton launchers; they
mirror csrc/common.h so that every backend returns the same strides."""

from __future__ import annotations

import torch


def is_non_overlapping_and_dense(t: torch.Tensor) -> bool:
    """Whether t's elements fill one block of memory, each once, in some dimension order. Plain
    integer arithmetic, so that torch.compile traces it on every supported torch (the private
    helper in torch._prims_common does not trace on 2.11)."""
    if t.is_contiguous():
        return True
    expected = 1
    dims = sorted((t.stride(i), t.size(i)) for i in range(t.dim()) if t.size(i) != 1)
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def in_layout_of(t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`t` with the strides of `out` (a copy only when they differ)."""
    if t.stride() == out.stride() and is_non_overlapping_and_dense(t):
        return t
    return torch.empty_like(out).copy_(t)


def batch_major_like(x: torch.Tensor) -> torch.Tensor:
    """empty_like(x), made contiguous if its samples would not be contiguous blocks."""
    out = torch.empty_like(x)
    n = x.shape[0]
    if n > 1 and out.numel() > 0 and out.stride(0) != out.numel() // n:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return out


def unflat(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Lays a memory-order vector out with the shape and strides of the dense tensor `like`."""
    return v.as_strided(like.shape, like.stride())


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype: float64 stays float64, everything else computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
