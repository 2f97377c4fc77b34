"""Range checks of settings, worded once: the library names the field (`limit must be >= 1`),
the command-line tools name their flag (`--limit must be >= 1`) with the same text."""

from __future__ import annotations

import math

# torch.Generator.manual_seed takes [-2**63, 2**64 - 1]; ebjdat's seeds are >= 0.
MAX_TORCH_SEED = 2**64 - 1


class SettingsError(ValueError):
    """A setting a run cannot use, raised before any work; `field` names it and `problem` says
    why, so that a command-line tool can name its own flag instead."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


def range_problem(
    value: float | None,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> str | None:
    """None when `value` is None (not given) or a finite number within [low, high] (open ends
    with low_open / high_open), else "must be ..., got ...". float() accepts nan and inf, which
    would otherwise fail late, deep inside a computation."""
    if value is None:
        return None
    inside = (
        (isinstance(value, int) or math.isfinite(value))
        and (low is None or (value > low if low_open else value >= low))
        and (high is None or (value < high if high_open else value <= high))
    )
    if inside:
        return None

    def fmt(v: float) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    if low is not None and high is not None:
        cond = f"in {'(' if low_open else '['}{fmt(low)}, {fmt(high)}{')' if high_open else ']'}"
    elif low is not None:
        cond = f"{'>' if low_open else '>='} {fmt(low)}"
    elif high is not None:
        cond = f"{'<' if high_open else '<='} {fmt(high)}"
    else:
        cond = ""
    if isinstance(value, float):
        want = f"a finite number {cond}".rstrip()
    else:
        want = f"an integer {cond}" if cond.startswith("in") else cond
    return f"must be {want}, got {fmt(value)}"


def check_setting(field: str, value: float | None, **limits: float | bool | None) -> None:
    """SettingsError naming `field` when range_problem(value, **limits) finds one."""
    problem = range_problem(value, **limits)  # type: ignore[arg-type]
    if problem is not None:
        raise SettingsError(field, problem)
