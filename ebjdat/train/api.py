"""`ebjdat.fit`: EB-JDAT for any classifier and dataset in one call."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config
from .trainer import Trainer


def fit(
    model: nn.Module | None,
    train_data: Any,
    *,
    val_data: Any = None,
    preset: str = "digits",
    config: Config | Mapping[str, Any] | None = None,
    out_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    **trainer_options: Any,
) -> Trainer:
    """Trains `model` (an `nn.Module` mapping [0, 1] images to logits; None: ebjdat's
    WideResNet) on `train_data` (a map-style Dataset of (image, label), or (images, labels)
    tensors) with the `preset` and `config` overrides, and returns the Trainer (its
    `.evaluated_model`, the trained model: the weight average with train.ema_decay > 0;
    `.model`, the live weights; `.state.history`; `.evaluate()`). With `out_dir`, the run
    gets everything ebjdat-train writes: checkpoints, exact resume, metrics and sample grids.

    Everything is checked before training starts; a bad argument raises a ValueError, TypeError
    or ConfigError naming it."""
    trainer = Trainer(
        model,
        train_data,
        val_data=val_data,
        preset=preset,
        config=config,
        out_dir=out_dir,
        device=device,
        **trainer_options,
    )
    trainer.fit()
    return trainer
