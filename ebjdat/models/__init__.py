"""Models: the JEM Wide-ResNet and the JEM energy wrapper ([0, 1] public inputs)."""

from __future__ import annotations

from .classifier import Classifier
from .jem import (
    JEM,
    EnergyModel,
    bn_eval,
    build_model,
    frozen_bn_stats,
    parse_arch,
    restore_bn_momentum,
    set_bn_momentum,
)
from .loading import load_classifier, load_model
from .wideresnet import WideBasic, WideResNet

__all__ = [
    "JEM",
    "Classifier",
    "EnergyModel",
    "WideBasic",
    "WideResNet",
    "bn_eval",
    "build_model",
    "frozen_bn_stats",
    "load_classifier",
    "load_model",
    "parse_arch",
    "restore_bn_momentum",
    "set_bn_momentum",
]
