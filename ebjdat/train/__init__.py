"""Training: config and presets, the EB-JDAT loss, SAM, checkpoints and the trainer."""

from __future__ import annotations

from .config import Config, ConfigError, load_file, load_preset, override, preset_names
from .trainer import Diverged, Trainer, TrainingInterrupted, TrainingStopped

__all__ = [
    "Config",
    "ConfigError",
    "Diverged",
    "Trainer",
    "TrainingInterrupted",
    "TrainingStopped",
    "load_file",
    "load_preset",
    "override",
    "preset_names",
]
