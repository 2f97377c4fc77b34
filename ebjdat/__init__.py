"""ebjdat: Energy-based Joint Distribution Adversarial Training with fused kernels."""

from __future__ import annotations

__version__ = "0.1.0"

from . import ops  # noqa: E402  (defines and loads the ops)


def load_classifier(path: str, device: str = "cpu"):  # noqa: ANN201 - torch.nn.Module
    """An eval-mode module mapping [0, 1] images to logits, from a training checkpoint."""
    from .models import load_classifier as load

    return load(path, device)


def load_model(path: str, device: str = "cpu"):  # noqa: ANN201 - ebjdat.models.JEM
    """The full energy model (logits, energies, samplers' internal view) of a checkpoint."""
    from .models import load_model as load

    return load(path, device)


__all__ = ["__version__", "load_classifier", "load_model", "ops"]
