"""Models back from training checkpoints (loaded with weights_only=True)."""

from __future__ import annotations

from pathlib import Path

import torch

from .jem import JEM


def load_model(path: str | Path, device: str | torch.device = "cpu") -> JEM:
    """The full energy model of a checkpoint (eval mode)."""
    from ebjdat.train.checkpoint import CheckpointError, load

    state = load(path, map_location=device)
    if "model_config" not in state or "model" not in state:
        raise CheckpointError(f"checkpoint {path} holds no model")
    model = JEM.from_config(state["model_config"])
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """An eval-mode module mapping [0, 1] images to logits: ready for torchattacks/AutoAttack."""
    return load_model(path, device)
