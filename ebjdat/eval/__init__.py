"""Evaluation: accuracy and robustness (standard and paper protocols), calibration, OOD."""

from __future__ import annotations

from .calibration import (
    CalibrationBins,
    calibration_bins,
    expected_calibration_error,
    reliability_diagram,
)
from .ood import (
    SCORES,
    auroc,
    digits_ood_sets,
    interpolations,
    ood_auroc,
    ood_scores,
    ood_sets_for,
)
from .robustness import (
    PROTOCOLS,
    Protocol,
    autoattack_accuracy,
    canonical_norm,
    clean_accuracy,
    default_eps,
    evaluate_robustness,
    get_protocol,
    make_autoattack,
    pgd_accuracy,
    sanity_checks,
    sanity_report,
    zero_gradient_fraction,
)

__all__ = [
    "PROTOCOLS",
    "SCORES",
    "CalibrationBins",
    "Protocol",
    "auroc",
    "autoattack_accuracy",
    "calibration_bins",
    "canonical_norm",
    "clean_accuracy",
    "default_eps",
    "digits_ood_sets",
    "evaluate_robustness",
    "expected_calibration_error",
    "get_protocol",
    "interpolations",
    "make_autoattack",
    "ood_auroc",
    "ood_scores",
    "ood_sets_for",
    "pgd_accuracy",
    "reliability_diagram",
    "sanity_checks",
    "sanity_report",
    "zero_gradient_fraction",
]
