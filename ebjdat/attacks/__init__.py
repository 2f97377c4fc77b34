"""Attacks: standard PGD for evaluation ([0, 1] pixels) and the EB-JDAT adversarial sampler
used in training (internal [-1, 1] images)."""

from __future__ import annotations

from .adversarial import (
    INTERNAL_PER_PIXEL,
    AdvConfig,
    AdvSamplerConfig,
    adversarial_objective,
    adversarial_samples,
    perception_loss,
    unit_logits,
)
from .pgd import pgd_attack

__all__ = [
    "INTERNAL_PER_PIXEL",
    "AdvConfig",
    "AdvSamplerConfig",
    "adversarial_objective",
    "adversarial_samples",
    "perception_loss",
    "pgd_attack",
    "unit_logits",
]
