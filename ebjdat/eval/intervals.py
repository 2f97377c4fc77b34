"""95% confidence intervals for accuracies measured on a finite test set.

An accuracy from n = 359 digits moves by about two points from one test set to the next, so a
table that compares models needs its intervals. The Wilson score interval is used because,
unlike the normal approximation p ± z·sqrt(p(1-p)/n), it stays inside [0, 1] and does not
collapse to a zero-width interval when every (or no) example is classified correctly.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # standard normal quantile at 0.975: a two-sided 95% interval


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (low, high) for k successes out of n trials.

    With p = k/n: centre (p + z²/2n) / (1 + z²/n), half-width
    z / (1 + z²/n) · sqrt(p(1-p)/n + z²/4n²). The ends are exactly 0 at k = 0 and exactly 1
    at k = n (rounding would otherwise leave them a hair off).
    """
    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n:
        raise ValueError(f"k and n must be integers, got k={k!r}, n={n!r}")
    k, n = int(k), int(n)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need n >= 1 and 0 <= k <= n, got k={k}, n={n}")
    return _wilson(k / n, n, z)


def _wilson(p: float, n: int, z: float) -> tuple[float, float]:
    if not (math.isfinite(z) and z > 0):
        raise ValueError(f"z must be a finite number > 0, got {z!r}")
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
    low = 0.0 if p <= 0.0 else max(0.0, centre - half)
    high = 1.0 if p >= 1.0 else min(1.0, centre + half)
    return low, high


def accuracy_ci95(acc: float, n: int) -> list[float]:
    """[low, high] of an accuracy measured on n examples, as a report value.

    The accuracy enters as the observed proportion p = k/n, so a count need not be passed; a
    value that is not finite has no interval ([nan, nan], which the report writes as nulls).
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if not math.isfinite(acc):
        return [math.nan, math.nan]
    return list(_wilson(min(max(float(acc), 0.0), 1.0), int(n), Z95))
