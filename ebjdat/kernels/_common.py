"""Launch sizing shared by the Triton kernels."""

from __future__ import annotations

import os

import triton

# The interpreter pays per program, so it gets big blocks; a GPU gets occupancy-friendly ones.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
FLAT_BLOCK = 65536 if INTERPRET else 2048
ROW_BLOCK = 16384 if INTERPRET else 2048
INF = float("inf")


def flat_block(n: int) -> int:
    """Elements per program for flat kernels: a power of two >= 16 (4 Philox lanes x 4)."""
    return max(16, min(FLAT_BLOCK, triton.next_power_of_2(max(n, 1))))


def bound(value: float | None, default: float) -> float:
    return default if value is None else float(value)
