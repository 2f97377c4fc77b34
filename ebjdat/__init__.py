"""ebjdat: Energy-based Joint Distribution Adversarial Training with fused kernels."""

from __future__ import annotations

__version__ = "0.1.0"

from . import ops  # noqa: E402  (defines and loads the ops)

__all__ = ["__version__", "ops"]
