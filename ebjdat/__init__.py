"""ebjdat: Energy-based Joint Distribution Adversarial Training with fused kernels.

Train any classifier (an `nn.Module` mapping [0, 1] images to logits) to be accurate, robust and
generative at once::

    trainer = ebjdat.fit(my_model, my_dataset, preset="ebjdat-jempp", out_dir="runs/mine")

The pieces are public too: the loss (`eb_jdat_loss`), the SGLD sampler and its replay buffer,
the adversarial sampler, PGD, the config types, and the fused ops in `ebjdat.ops`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from . import ops  # noqa: E402  (defines and loads the ops)

# Public names and the module each lives in, imported on first use so that `import ebjdat`
# stays as light as the ops.
_EXPORTS = {
    "fit": "ebjdat.train.api",
    "Trainer": "ebjdat.train.trainer",
    "TrainingInterrupted": "ebjdat.train.trainer",
    "TrainingStopped": "ebjdat.train.trainer",
    "Distributed": "ebjdat.train.parallel",
    "Config": "ebjdat.train.config",
    "ConfigError": "ebjdat.train.config",
    "DataConfig": "ebjdat.train.config",
    "ModelConfig": "ebjdat.train.config",
    "SGLDConfig": "ebjdat.sampling",
    "AdvConfig": "ebjdat.attacks",
    "LossConfig": "ebjdat.train.config",
    "OptimConfig": "ebjdat.train.config",
    "TrainConfig": "ebjdat.train.config",
    "load_preset": "ebjdat.train.config",
    "preset_names": "ebjdat.train.config",
    "eb_jdat_loss": "ebjdat.train.losses",
    "Forward": "ebjdat.train.losses",
    "LossTerms": "ebjdat.train.losses",
    "sgld": "ebjdat.sampling",
    "ReplayBuffer": "ebjdat.sampling",
    "ClassGaussians": "ebjdat.sampling",
    "adversarial_samples": "ebjdat.attacks",
    "pgd_attack": "ebjdat.attacks",
    "Classifier": "ebjdat.models",
    "EnergyModel": "ebjdat.models",
    "CheckpointError": "ebjdat.checkpoint",
    "export_checkpoint": "ebjdat.export",
    "ExportError": "ebjdat.export",
}


# Older names of the samplers' settings, which are now the config sections themselves.
_RENAMED = {"SGLDSampler": "SGLDConfig", "AdvSamplerConfig": "AdvConfig"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _RENAMED:
        import warnings

        new = _RENAMED[name]
        warnings.warn(
            f"ebjdat.{name} is now ebjdat.{new} (the same settings as the config section)",
            DeprecationWarning,
            stacklevel=2,
        )
        return __getattr__(new)
    raise AttributeError(f"module 'ebjdat' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


def load_classifier(path: str, device: str = "cpu", *, model: Any = None) -> Any:
    """An eval-mode module mapping [0, 1] images to logits, from a training checkpoint or an
    export directory (`ebjdat-export CKPT --out DIR`, or its model.json); for a user model,
    `model` is the untrained module to load the weights into when no importable builder is
    recorded."""
    from .models import load_classifier as load

    return load(path, device, model=model)


def load_model(path: str, device: str = "cpu", *, model: Any = None) -> Any:
    """The full energy model (logits, energies, samplers' internal view) of a checkpoint or an
    export directory."""
    from .models import load_model as load

    return load(path, device, model=model)


__all__ = ["__version__", "load_classifier", "load_model", "ops", *_EXPORTS]
