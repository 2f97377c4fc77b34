"""Argument checks for the public ops: every error names the argument at fault."""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")
    return t


def like(name: str, t: object, ref_name: str, ref: torch.Tensor) -> torch.Tensor:
    """Same shape (no broadcasting), device and dtype as `ref`."""
    t = tensor(name, t)
    if t.shape != ref.shape:
        raise ValueError(
            f"{name} has shape {tuple(t.shape)} but {ref_name} has shape {tuple(ref.shape)}; "
            "ebjdat ops never broadcast"
        )
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}")
    return t


def number(name: str, value: object, *, minimum: float | None = 0.0, strict: bool = False) -> float:
    """A finite real number, >= minimum (> minimum when strict)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be {op} {minimum:g}, got {value:g}")
    return value


def optional_number(name: str, value: object, **kw: object) -> float | None:
    return None if value is None else number(name, value, **kw)


def clamp_pair(value: object) -> tuple[float | None, float | None]:
    """clamp=None or (lo, hi) with lo <= hi; either bound may be None."""
    if value is None:
        return None, None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"clamp must be None or a (min, max) pair, got {value!r}")
    lo = optional_number("clamp[0]", value[0], minimum=None)
    hi = optional_number("clamp[1]", value[1], minimum=None)
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"clamp min {lo:g} exceeds clamp max {hi:g}")
    return lo, hi


def norm(value: object) -> str:
    if value not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {value!r}")
    return value  # type: ignore[return-value]


def batched(name: str, t: torch.Tensor) -> torch.Tensor:
    if t.dim() == 0:
        raise ValueError(f"{name} must have a batch dimension (got a 0-d tensor)")
    return t


def generator(value: object, device: torch.device) -> torch.Generator | None:
    if value is None:
        return None
    if not isinstance(value, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(value).__name__}")
    if value.device.type != device.type:
        raise ValueError(f"generator is on {value.device} but the input is on {device}")
    return value


def labels(y: object, logits: torch.Tensor, *, check_range: bool = True) -> torch.Tensor | None:
    """Integer labels of shape [B] on logits' device, each in [0, K) (unless the kernel that
    runs checks the range itself: check_range=False)."""
    if y is None:
        return None
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor of labels or None, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"y must be an integer tensor of labels, got {y.dtype}")
    if y.shape != (logits.shape[0],):
        raise ValueError(f"y must have shape ({logits.shape[0]},), got {tuple(y.shape)}")
    if y.device != logits.device:
        raise ValueError(f"y is on {y.device} but logits is on {logits.device}")
    # The range check needs the values: free on CPU, a sync on CUDA, and skipped where it cannot
    # run (tracing, graph capture); the kernels still assert it there.
    if check_range and y.numel() and not torch.compiler.is_compiling() and not _capturing(y):
        lo, hi = torch.aminmax(y)
        if int(lo) < 0 or int(hi) >= logits.shape[1]:
            raise ValueError(
                f"labels y must lie in [0, {logits.shape[1]}); got values in [{int(lo)}, {int(hi)}]"
            )
    return y


def _capturing(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()
