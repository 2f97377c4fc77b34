"""ebjdat.eval.intervals: the 95% Wilson score interval against values computed here another way
(the roots of the Wilson quadratic, in float64), its edge cases, and the report helper."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ebjdat.eval.intervals import Z95, accuracy_ci95, wilson_interval


def _wilson_roots(k: int, n: int) -> tuple[float, float]:
    """The Wilson interval as the two p solving (k/n - p)² = z²·p(1 - p)/n, i.e. the roots of
    (1 + z²/n)·p² - (2k/n + z²/n)·p + (k/n)² = 0: a different route to the same numbers."""
    z2 = np.float64(1.959963984540054) ** 2
    p_hat = np.float64(k) / np.float64(n)
    a = 1.0 + z2 / n
    b = -(2.0 * p_hat + z2 / n)
    c = p_hat * p_hat
    root = np.sqrt(b * b - 4.0 * a * c)
    return float((-b - root) / (2.0 * a)), float((-b + root) / (2.0 * a))


def test_z_is_the_two_sided_95_percent_normal_quantile() -> None:
    # Phi(z) = 0.975, Phi(x) = (1 + erf(x / sqrt 2)) / 2
    assert 0.5 * (1.0 + math.erf(Z95 / math.sqrt(2.0))) == pytest.approx(0.975, abs=1e-15)


def test_wilson_n359_k300_against_the_quadratic_roots() -> None:
    low, high = wilson_interval(300, 359)
    ref_low, ref_high = _wilson_roots(300, 359)
    assert low == pytest.approx(ref_low, abs=1e-12)
    assert high == pytest.approx(ref_high, abs=1e-12)
    # the same numbers, written out (4 digits: what a report shows)
    assert (round(low, 4), round(high, 4)) == (0.7938, 0.8704)
    assert low < 300 / 359 < high


@pytest.mark.parametrize(("k", "n"), [(1, 2), (7, 8), (17, 32), (180, 359), (9999, 10000)])
def test_wilson_matches_the_roots_elsewhere(k: int, n: int) -> None:
    assert wilson_interval(k, n) == pytest.approx(_wilson_roots(k, n), abs=1e-12)


@pytest.mark.parametrize("n", [1, 8, 359, 10000])
def test_wilson_edges_k0_and_kn(n: int) -> None:
    """At k = 0 the interval is [0, z²/(n + z²)], at k = n it is [n/(n + z²), 1]: never a
    zero-width interval, and the ends are exact."""
    z2 = Z95 * Z95
    low, high = wilson_interval(0, n)
    assert low == 0.0 and high == pytest.approx(z2 / (n + z2), rel=1e-12)
    low, high = wilson_interval(n, n)
    assert high == 1.0 and low == pytest.approx(n / (n + z2), rel=1e-12)
    assert wilson_interval(0, n)[1] == pytest.approx(1 - wilson_interval(n, n)[0], rel=1e-12)


def test_wilson_refuses_what_is_not_a_count() -> None:
    for k, n in ((-1, 10), (11, 10), (0, 0), (1.5, 10), (True, 10)):
        with pytest.raises(ValueError):
            wilson_interval(k, n)  # type: ignore[arg-type]


def test_accuracy_ci95_is_the_wilson_interval_of_the_count() -> None:
    assert accuracy_ci95(300 / 359, 359) == pytest.approx(list(wilson_interval(300, 359)))
    assert accuracy_ci95(0.0, 32) == [0.0, pytest.approx(wilson_interval(0, 32)[1])]
    assert accuracy_ci95(1.0, 32)[1] == 1.0
    low, high = accuracy_ci95(float("nan"), 32)
    assert math.isnan(low) and math.isnan(high)
    with pytest.raises(ValueError):
        accuracy_ci95(0.5, 0)
