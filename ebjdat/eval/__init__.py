"""Evaluation: accuracy and robustness (standard and paper protocols), calibration, OOD,
generation; evaluate_checkpoint runs them all on one checkpoint and writes the report."""

from __future__ import annotations

from ebjdat.checks import SettingsError

from .calibration import (
    CalibrationBins,
    calibration_bins,
    expected_calibration_error,
    reliability_diagram,
)
from .checkpoints import load_checkpoint
from .evaluation import EvalSettings, Evaluation, evaluate_checkpoint
from .fresh_samples import (
    FROM_CONFIG,
    SamplerOverrides,
    SampleSettings,
    sample_checkpoint,
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
    "FROM_CONFIG",
    "PROTOCOLS",
    "SCORES",
    "CalibrationBins",
    "EvalSettings",
    "Evaluation",
    "Protocol",
    "SampleSettings",
    "SamplerOverrides",
    "SettingsError",
    "auroc",
    "autoattack_accuracy",
    "calibration_bins",
    "canonical_norm",
    "clean_accuracy",
    "default_eps",
    "digits_ood_sets",
    "evaluate_checkpoint",
    "evaluate_robustness",
    "expected_calibration_error",
    "get_protocol",
    "interpolations",
    "load_checkpoint",
    "make_autoattack",
    "ood_auroc",
    "ood_scores",
    "ood_sets_for",
    "pgd_accuracy",
    "reliability_diagram",
    "sample_checkpoint",
    "sanity_checks",
    "sanity_report",
    "zero_gradient_fraction",
]
