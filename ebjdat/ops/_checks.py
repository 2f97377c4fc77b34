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


# Temperatures the energy head accepts. Every backend computes in at least float32, where T, 1/T,
# T * log(K) and the scaled logit gaps must stay normal numbers; [1e-30, 1e30] keeps them so with
# a wide margin (and is far beyond any temperature with a use).
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-30, 1e30


def temperature(value: object) -> float:
    t = number("temperature", value, strict=True)
    if not MIN_TEMPERATURE <= t <= MAX_TEMPERATURE:
        raise ValueError(
            f"temperature must be finite and within [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], "
            f"got {t:g}"
        )
    return t


# --- in-place updates ----------------------------------------------------------------------------


def inplace_grad_mode(op: str, name: str, t: torch.Tensor) -> None:
    """The ops' in-place updates are not differentiable, so, as for any in-place op, a tensor that
    autograd tracks may only be updated with grad mode off (like an optimizer step)."""
    if not (t.requires_grad and torch.is_grad_enabled()):
        return
    if t.is_leaf:
        raise RuntimeError(
            f"{op}: a leaf Variable that requires grad is being used in an in-place operation "
            f"({name}); run the update under torch.no_grad(), as an optimizer step does"
        )
    raise RuntimeError(
        f"{op}: {name} requires grad, but this in-place update is not differentiable; run it "
        f"under torch.no_grad() or on a detached tensor"
    )


def _element_offsets(t: torch.Tensor) -> torch.Tensor:
    """Storage offsets (in elements) of every element of t, on the CPU."""
    offs = torch.tensor([t.storage_offset()], dtype=torch.int64)
    for size, stride in zip(t.shape, t.stride(), strict=True):
        offs = (offs[:, None] + torch.arange(size, dtype=torch.int64) * stride).reshape(-1)
    return offs


def _dims(t: torch.Tensor) -> list[tuple[int, int]]:
    """(stride, size) of the dimensions that matter (size > 1), by increasing stride."""
    return sorted((s, n) for n, s in zip(t.shape, t.stride(), strict=True) if n != 1)


def _dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense: sorted by stride, each dimension steps over the block below."""
    expected = 1
    for s, n in _dims(t):
        if s != expected:
            return False
        expected *= n
    return True


def _disjoint_elements(t: torch.Tensor) -> bool | None:
    """True/False when the strides decide whether t's elements are all distinct, else None."""
    reach = 0
    for s, n in _dims(t):
        if s == 0:
            return False
        if s <= reach:
            return None
        reach += (n - 1) * s
    return True


def _checkable(t: torch.Tensor) -> bool:
    # Traced tensors have no memory to look at, and meta tensors all sit at address 0; the kernels
    # that run on real memory check again.
    return t.numel() > 0 and t.device.type != "meta" and not torch.compiler.is_compiling()


def no_internal_overlap(op: str, name: str, t: torch.Tensor) -> None:
    """A tensor written in place must not have two elements at one memory location (an expanded
    tensor, say): the result would depend on the order of the writes."""
    if not _checkable(t):
        return
    disjoint = _disjoint_elements(t)
    if disjoint is None:  # an unusual as_strided layout: look at the offsets themselves
        offs = _element_offsets(t)
        disjoint = torch.unique(offs).numel() == offs.numel()
    if not disjoint:
        raise ValueError(
            f"{op}: {name} has elements that share memory (an expanded or overlapping view), so "
            f"writing it in place is ill-defined; pass {name}.clone() or a contiguous tensor"
        )


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    """[begin, end) of the bytes t's elements occupy in its storage (t non-empty)."""
    last = t.storage_offset() + sum((n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True))
    return t.storage_offset() * t.element_size(), (last + 1) * t.element_size()


def no_partial_overlap(
    op: str, name: str, t: torch.Tensor, out_name: str, out: torch.Tensor
) -> None:
    """An input of an in-place update must be either the very tensor written (same memory, same
    strides: each element reads only itself) or disjoint from it; anything in between reads
    elements that the kernel may already have overwritten."""
    if not (_checkable(t) and _checkable(out)):
        return
    if t.untyped_storage().data_ptr() != out.untyped_storage().data_ptr():
        return
    (a0, a1), (b0, b1) = _byte_span(t), _byte_span(out)
    if a1 <= b0 or b1 <= a0:
        return
    if (
        t.dtype == out.dtype
        and t.shape == out.shape
        and t.storage_offset() == out.storage_offset()
        and all(s == r for n, s, r in zip(t.shape, t.stride(), out.stride(), strict=True) if n != 1)
    ):
        return
    if t.dtype == out.dtype and not (_dense(t) and _dense(out)):
        # Strided views can interleave within one span without sharing an element.
        if not bool(torch.isin(_element_offsets(t), _element_offsets(out)).any()):
            return
    raise ValueError(
        f"{op}: {name} partially overlaps {out_name}, which is written in place; pass "
        f"{name}.clone() (the very same tensor as {out_name} is fine)"
    )
