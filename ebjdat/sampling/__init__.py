"""Sampling from the energy model: replay buffer, class-Gaussian init, SGLD (internal [-1, 1])."""

from __future__ import annotations

from .buffer import ReplayBuffer
from .gaussians import ClassGaussians, fit_class_gaussians
from .sgld import SGLDConfig, SGLDSampler, log_density_grad, model_mode, sgld

__all__ = [
    "ClassGaussians",
    "ReplayBuffer",
    "SGLDConfig",
    "SGLDSampler",
    "fit_class_gaussians",
    "log_density_grad",
    "model_mode",
    "sgld",
]
