"""Models back from training checkpoints (loaded with weights_only=True) and from exports (a
directory with model.safetensors and model.json, written by `ebjdat.export`).

Every problem with a checkpoint's or an export's model (no weights, an unusable model_config,
tensors that do not fit, a truncated file) is a one-line `CheckpointError` naming the file, so
the command-line tools can report it as such. Neither path ever unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .classifier import KIND, Classifier
from .jem import JEM, EnergyModel

_SHOWN = 5  # names listed per kind of mismatch before "(and N more)"

# The export format: `ebjdat.export` writes it, `load_export` reads it.
EXPORT_FORMAT = "ebjdat-export"
EXPORT_VERSION = 1
EXPORT_JSON = "model.json"
EXPORT_WEIGHTS = "model.safetensors"
_MAX_JSON_BYTES = 4 << 20  # model.json is a few hundred bytes; refuse to read a huge file


def _error(message: str) -> Exception:
    from ebjdat.checkpoint import CheckpointError

    return CheckpointError(message)


def _shape(t: Tensor) -> str:
    return str(list(t.shape))


def _names(keys: list[str]) -> str:
    more = f" (and {len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def load_weights(
    module: nn.Module, state_dict: Mapping[str, Tensor], source: str, *, kind: str = "checkpoint"
) -> None:
    """Loads `state_dict` into `module` strictly, after checking names and shapes first, so a
    checkpoint of another model is one CheckpointError line ("checkpoint SOURCE does not fit the
    model: conv1.weight is [16, 3, 3, 3] in the checkpoint but [32, 3, 3, 3] in the model (and
    12 more tensors); missing: ...; unexpected: ...") instead of torch's many-line RuntimeError,
    and `module` is left untouched when it does not fit. `kind` names what SOURCE is ("export"
    for an exported model.safetensors)."""
    if not isinstance(state_dict, Mapping):
        raise _error(
            f"{kind} {source}: its model weights are a {type(state_dict).__name__}, not a "
            "state dict"
        )
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise _error(f"{kind} {source}: its model state holds non-tensor entries ({_names(bad)})")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    resized = [k for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or resized:
        parts = []
        if resized:
            k = resized[0]
            first = (
                f"{k} is {_shape(state_dict[k])} in the {kind} but {_shape(expected[k])} in "
                "the model"
            )
            if len(resized) > 1:
                first += f" (and {len(resized) - 1} more tensors)"
            parts.append(first)
        if missing:
            parts.append(f"missing: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected: {_names(unexpected)}")
        raise _error(f"{kind} {source} does not fit the model: {'; '.join(parts)}")
    try:
        module.load_state_dict(state_dict, strict=True)
    except (RuntimeError, TypeError, ValueError) as err:
        raise _error(f"{kind} {source} does not fit the model ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def model_from_config(
    cfg: object, source: str, model: nn.Module | None = None, *, kind: str = "checkpoint"
) -> EnergyModel:
    """The untrained energy model a model_config describes (a user Classifier, rebuilt by its
    builder or around `model`, or a JEM), or a CheckpointError saying why it cannot be built."""
    if not isinstance(cfg, Mapping):
        raise _error(
            f"{kind} {source}: model_config is a {type(cfg).__name__}, not a table of "
            "architecture settings"
        )
    try:
        if cfg.get("kind") == KIND:
            return Classifier.from_config(cfg, net=model)
        return JEM.from_config(cfg)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError, ImportError) as err:
        raise _error(
            f"{kind} {source}: its model_config is not usable ({_first_line(err)})"
        ) from None


def model_from_state(
    state: Mapping[str, Any], source: str, model: nn.Module | None = None
) -> EnergyModel:
    """The energy model of an already loaded checkpoint state (CPU, train mode), or a
    CheckpointError saying what is wrong with its "model" / "model_config" entries. `model` is
    the untrained user module to load a classifier's weights into (else its builder is used)."""
    missing = [k for k in ("model", "model_config") if k not in state]
    if missing:
        raise _error(f"checkpoint {source} holds no model (no {' or '.join(missing)} entry)")
    energy_model = model_from_config(state["model_config"], source, model)
    load_weights(energy_model, state["model"], source)
    return energy_model


# ---- exports: model.safetensors + model.json ------------------------------------------------


def export_dir(path: str | Path) -> Path | None:
    """The export directory `path` names (the directory, or its model.json / model.safetensors),
    or None when `path` is meant as a training checkpoint file."""
    p = Path(path)
    if p.is_dir():
        return p
    if p.name in (EXPORT_JSON, EXPORT_WEIGHTS):
        return p.parent
    return None


def _read_export_json(directory: Path) -> dict[str, Any]:
    """model.json of an export, checked field by field (one CheckpointError line naming it)."""
    path = directory / EXPORT_JSON
    if not path.exists():
        run_ckpt = directory / "checkpoints" / "last.pt"
        hint = (
            f"; it looks like a run directory: did you mean {run_ckpt}?"
            if run_ckpt.is_file()
            else f"; write one with ebjdat-export CKPT --out {directory}"
        )
        raise _error(f"{directory} is not an ebjdat export: it holds no {EXPORT_JSON}{hint}")
    if path.is_dir():
        raise _error(f"export {path} is a directory, not a file")
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_JSON_BYTES + 1)
    except OSError as err:
        raise _error(
            f"export {path} cannot be read ({err.strerror or type(err).__name__})"
        ) from None
    if len(raw) > _MAX_JSON_BYTES:
        raise _error(f"export {path} is over {_MAX_JSON_BYTES >> 20} MiB: not an export's JSON")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _error(
            f"export {path} is not UTF-8 text: truncated, corrupt or another kind of file"
        ) from None
    except json.JSONDecodeError as err:
        raise _error(f"export {path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise _error(f"export {path} is not an ebjdat export's {EXPORT_JSON} (no format "
                     f"{EXPORT_FORMAT!r})")  # fmt: skip
    version = meta.get("version")
    if version != EXPORT_VERSION or isinstance(version, bool):
        raise _error(
            f"export {path} has format version {version!r}; this ebjdat reads version "
            f"{EXPORT_VERSION}"
        )
    if meta.get("input_range") != [0, 1]:
        raise _error(
            f"export {path}: input_range is {meta.get('input_range')!r}; ebjdat models take "
            "[0, 1] images"
        )
    cfg = meta.get("model_config")
    if not isinstance(cfg, dict):
        raise _error(f"export {path}: model_config is missing or not a table")
    num_classes = meta.get("num_classes")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise _error(f"export {path}: num_classes is {num_classes!r}, not a positive integer")
    if cfg.get("num_classes") != num_classes:
        raise _error(
            f"export {path}: num_classes {num_classes} disagrees with model_config.num_classes "
            f"{cfg.get('num_classes')!r}"
        )
    shape = meta.get("input_shape")
    if shape is not None and not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
    ):
        raise _error(f"export {path}: input_shape is {shape!r}, not [C, H, W] or null")
    digest = meta.get("weights_sha256")
    if not isinstance(digest, str) or re.fullmatch(r"[0-9a-f]{64}", digest) is None:
        raise _error(f"export {path}: weights_sha256 is {digest!r}, not a sha256 hex digest")
    return meta


def _read_export_weights(directory: Path, digest: str) -> dict[str, Tensor]:
    """model.safetensors, read once, checked against model.json's digest (a file from another
    export, or one half-replaced, is refused) and parsed from those same bytes."""
    from safetensors.torch import load

    path = directory / EXPORT_WEIGHTS
    if not path.exists():
        raise _error(f"export {path} does not exist")
    if path.is_dir():
        raise _error(f"export {path} is a directory, not a file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise _error(
            f"export {path} cannot be read ({err.strerror or type(err).__name__})"
        ) from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise _error(
            f"export {path} does not match {EXPORT_JSON} (its sha256 differs: truncated, "
            "modified, or from another export)"
        )
    try:
        return load(data)
    except Exception as err:  # noqa: BLE001  (safetensors raises its own SafetensorError)
        raise _error(
            f"export {path} is not a readable safetensors file ({_first_line(err)})"
        ) from None


def load_export(
    path: str | Path, device: str | torch.device = "cpu", *, model: nn.Module | None = None
) -> EnergyModel:
    """The energy model of an export directory (eval mode), rebuilt from model.json (a user
    model by its builder, or `model` given the weights) with model.safetensors loaded strictly;
    CheckpointError naming the file for any problem."""
    directory = export_dir(path)
    if directory is None:
        raise _error(f"{path} is not an export directory")
    meta = _read_export_json(directory)
    weights = _read_export_weights(directory, meta["weights_sha256"])
    energy_model = model_from_config(
        meta["model_config"], str(directory / EXPORT_JSON), model, kind="export"
    )
    target = energy_model.net if isinstance(energy_model, Classifier) else energy_model
    # safetensors returns the tensors in no fixed order: put them in the module's, so that a
    # mismatch names the same first tensor every time.
    names = list(target.state_dict())
    order = {k: i for i, k in enumerate(names)}
    weights = {k: weights[k] for k in sorted(weights, key=lambda k: (order.get(k, len(names)), k))}
    load_weights(target, weights, str(directory / EXPORT_WEIGHTS), kind="export")
    return energy_model.to(device).eval()


def load_model(
    path: str | Path, device: str | torch.device = "cpu", *, model: nn.Module | None = None
) -> EnergyModel:
    """The full energy model of a checkpoint or an export directory (eval mode);
    CheckpointError for any problem."""
    from ebjdat.checkpoint import load

    if export_dir(path) is not None:
        return load_export(path, device, model=model)
    state = load(path, map_location="cpu")
    return model_from_state(state, str(path), model).to(device).eval()


def load_classifier(
    path: str | Path, device: str | torch.device = "cpu", *, model: nn.Module | None = None
) -> torch.nn.Module:
    """An eval-mode module mapping [0, 1] images to logits: ready for torchattacks/AutoAttack.
    `path` is a training checkpoint or an export directory (ebjdat-export). For a user's own
    classifier this is that module itself (rebuilt by its recorded builder, or `model` with the
    weights loaded)."""
    energy_model = load_model(path, device, model=model)
    return energy_model.net if isinstance(energy_model, Classifier) else energy_model
