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
from .intervals import accuracy_ci95, wilson_interval
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
    AA_ENGINES,
    AA_VERSIONS,
    PROTOCOLS,
    Protocol,
    autoattack_accuracy,
    autoattack_run,
    canonical_norm,
    clean_accuracy,
    default_eps,
    evaluate_robustness,
    get_protocol,
    make_autoattack,
    make_original_autoattack,
    pgd_accuracy,
    resolve_autoattack,
    sanity_checks,
    sanity_report,
    zero_gradient_fraction,
)

__all__ = [
    "AA_ENGINES",
    "AA_VERSIONS",
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
    "accuracy_ci95",
    "auroc",
    "autoattack_accuracy",
    "autoattack_run",
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
    "make_original_autoattack",
    "ood_auroc",
    "ood_scores",
    "ood_sets_for",
    "pgd_accuracy",
    "reliability_diagram",
    "resolve_autoattack",
    "sample_checkpoint",
    "sanity_checks",
    "sanity_report",
    "wilson_interval",
    "zero_gradient_fraction",
]
