"""Models back from training checkpoints (loaded with weights_only=True).

Every problem with a checkpoint's model (no weights, an unusable model_config, tensors that do
not fit) is a one-line `CheckpointError`, so the command-line tools can report it as such.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .classifier import KIND, Classifier
from .jem import JEM, EnergyModel

_SHOWN = 5  # names listed per kind of mismatch before "(and N more)"


def _error(message: str) -> Exception:
    from ebjdat.checkpoint import CheckpointError

    return CheckpointError(message)


def _shape(t: Tensor) -> str:
    return str(list(t.shape))


def _names(keys: list[str]) -> str:
    more = f" (and {len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def load_weights(module: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Loads `state_dict` into `module` strictly, after checking names and shapes first, so a
    checkpoint of another model is one CheckpointError line ("checkpoint SOURCE does not fit the
    model: conv1.weight is [16, 3, 3, 3] in the checkpoint but [32, 3, 3, 3] in the model (and
    12 more tensors); missing: ...; unexpected: ...") instead of torch's many-line RuntimeError,
    and `module` is left untouched when it does not fit."""
    if not isinstance(state_dict, Mapping):
        raise _error(
            f"checkpoint {source}: its model weights are a {type(state_dict).__name__}, not a "
            "state dict"
        )
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise _error(
            f"checkpoint {source}: its model state holds non-tensor entries ({_names(bad)})"
        )
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    resized = [k for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or resized:
        parts = []
        if resized:
            k = resized[0]
            first = (
                f"{k} is {_shape(state_dict[k])} in the checkpoint but {_shape(expected[k])} in "
                "the model"
            )
            if len(resized) > 1:
                first += f" (and {len(resized) - 1} more tensors)"
            parts.append(first)
        if missing:
            parts.append(f"missing: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected: {_names(unexpected)}")
        raise _error(f"checkpoint {source} does not fit the model: {'; '.join(parts)}")
    try:
        module.load_state_dict(state_dict, strict=True)
    except (RuntimeError, TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise _error(f"checkpoint {source} does not fit the model ({first})") from None


def model_from_state(
    state: Mapping[str, Any], source: str, model: nn.Module | None = None
) -> EnergyModel:
    """The energy model of an already loaded checkpoint state (CPU, train mode), or a
    CheckpointError saying what is wrong with its "model" / "model_config" entries. `model` is
    the untrained user module to load a classifier's weights into (else its builder is used)."""
    missing = [k for k in ("model", "model_config") if k not in state]
    if missing:
        raise _error(f"checkpoint {source} holds no model (no {' or '.join(missing)} entry)")
    cfg = state["model_config"]
    if not isinstance(cfg, Mapping):
        raise _error(
            f"checkpoint {source}: model_config is a {type(cfg).__name__}, not a table of "
            "architecture settings"
        )
    try:
        if cfg.get("kind") == KIND:
            energy_model: EnergyModel = Classifier.from_config(cfg, net=model)
        else:
            energy_model = JEM.from_config(cfg)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError, ImportError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise _error(f"checkpoint {source}: its model_config is not usable ({first})") from None
    load_weights(energy_model, state["model"], source)
    return energy_model


def load_model(
    path: str | Path, device: str | torch.device = "cpu", *, model: nn.Module | None = None
) -> EnergyModel:
    """The full energy model of a checkpoint (eval mode); CheckpointError for any problem."""
    from ebjdat.checkpoint import load

    state = load(path, map_location="cpu")
    return model_from_state(state, str(path), model).to(device).eval()


def load_classifier(
    path: str | Path, device: str | torch.device = "cpu", *, model: nn.Module | None = None
) -> torch.nn.Module:
    """An eval-mode module mapping [0, 1] images to logits: ready for torchattacks/AutoAttack.
    For a user's own classifier this is that module itself (rebuilt by its recorded builder, or
    `model` with the checkpoint's weights loaded)."""
    energy_model = load_model(path, device, model=model)
    return energy_model.net if isinstance(energy_model, Classifier) else energy_model
