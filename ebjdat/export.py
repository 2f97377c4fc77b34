"""A trained model as a model zoo would publish it: OUT/model.safetensors (the plain classifier's
weights) and OUT/model.json (how to rebuild it, its input range and shape, where it came from).

`ebjdat.load_classifier(OUT)` loads it back as an eval-mode [0, 1] -> logits module without
ebjdat's training checkpoint format and without unpickling anything: safetensors holds only
tensors, and model.json only plain data. For a user's classifier the weights are those of the
user's own module (its own key names, no `net.` prefix), so any code that builds that module can
load them with `safetensors.torch.load_file` and `load_state_dict`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ebjdat import __version__
from ebjdat.checkpoint import CheckpointError
from ebjdat.files import unwritable_reason, write_atomic, write_text_atomic
from ebjdat.models.classifier import KIND, Classifier
from ebjdat.models.loading import (
    EXPORT_FORMAT,
    EXPORT_JSON,
    EXPORT_VERSION,
    EXPORT_WEIGHTS,
    model_from_state,
)

_SHOWN = 5  # file names listed before "(and N more)"


class ExportError(ValueError):
    """An export that cannot be written: an unusable output directory, or a checkpoint whose
    model cannot be stored as safetensors + JSON."""


def _names(names: list[str]) -> str:
    more = f" (and {len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def out_dir_problem(
    out_dir: str | Path, overwrite: bool, *, overwrite_flag: str = "overwrite=True"
) -> str | None:
    """Why `out_dir` cannot receive an export, or None if it can; creates nothing. A new or empty
    directory is fine; one that holds files (an earlier export or anything else) only with
    `overwrite`, which replaces model.json and model.safetensors and leaves other files alone."""
    path = Path(out_dir)
    reason = unwritable_reason(path)
    if reason is not None:
        return reason
    if not path.exists():
        return None
    for name in (EXPORT_JSON, EXPORT_WEIGHTS):
        target = path / name
        if target.exists() and not target.is_file():
            return f"{target} exists and is not a file, so the export cannot replace it"
    try:
        entries = sorted(entry.name for entry in path.iterdir())
    except OSError as err:
        return f"cannot list {path} ({err.strerror or type(err).__name__})"
    if not entries or overwrite:
        return None
    if set(entries) <= {EXPORT_JSON, EXPORT_WEIGHTS}:
        return f"it holds an export already; pass {overwrite_flag} to replace it"
    return (
        f"it is not empty (it holds {_names(entries)}); use a new or empty directory, or pass "
        f"{overwrite_flag} to write model.json and model.safetensors beside those files"
    )


def _read_checkpoint(path: Path) -> dict[str, Any]:
    from ebjdat import checkpoint

    if path.is_dir():
        candidates = (path / "checkpoints" / "last.pt", path / "last.pt")
        hint = next((c for c in candidates if c.is_file()), None)
        tail = f"; did you mean {hint}?" if hint is not None else ""
        raise CheckpointError(f"checkpoint {path} is a directory, not a checkpoint file{tail}")
    try:
        return checkpoint.load(path, map_location="cpu")
    except OSError as err:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({err.strerror or type(err).__name__})"
        ) from None


def _builderless_weights(state: Mapping[str, Any], source: str) -> dict[str, Tensor]:
    """The user module's own weights of a Classifier checkpoint that records no builder: nothing
    can rebuild the module here, so the entries are checked for what they must be instead."""
    cfg = state["model_config"]
    classes = cfg.get("num_classes")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise CheckpointError(
            f"checkpoint {source}: its model_config is not usable (num_classes is {classes!r})"
        )
    weights = state["model"]
    if not isinstance(weights, Mapping):
        raise CheckpointError(
            f"checkpoint {source}: its model weights are a {type(weights).__name__}, not a "
            "state dict"
        )
    bad = [
        str(k)
        for k, v in weights.items()
        if not isinstance(k, str) or not k.startswith("net.") or not isinstance(v, Tensor)
    ]
    if bad or not weights:
        raise CheckpointError(
            f"checkpoint {source}: its model state is not a wrapped classifier's "
            f"({'no tensors' if not bad else 'entries ' + _names(bad)})"
        )
    return {k[len("net.") :]: v for k, v in weights.items()}


def _classifier_weights(
    state: Mapping[str, Any], source: str, model: nn.Module | None
) -> tuple[dict[str, Tensor], int]:
    """(the plain classifier's weights, its number of classes): the user module's own keys for a
    wrapped user model, the JEM module's for ebjdat's WideResNet; rebuilt and loaded strictly
    first wherever possible."""
    cfg = state.get("model_config")
    builderless = (
        "model" in state
        and isinstance(cfg, Mapping)
        and cfg.get("kind") == KIND
        and cfg.get("builder") in (None, "none")
        and model is None
    )
    if builderless:
        return _builderless_weights(state, source), int(cfg["num_classes"])
    energy_model = model_from_state(state, source, model)
    target = energy_model.net if isinstance(energy_model, Classifier) else energy_model
    return dict(target.state_dict()), int(energy_model.num_classes)


def _plain(value: Any, where: str, source: str) -> Any:
    """`value` as JSON data (tuples become lists), or an ExportError naming the entry that JSON
    cannot hold, so that model.json never depends on Python's own encodings."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ExportError(f"checkpoint {source} cannot be exported: {where} is {value}")
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ExportError(
                    f"checkpoint {source} cannot be exported: {where} has a non-string key {key!r}"
                )
            out[key] = _plain(item, f"{where}.{key}", source)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]", source) for i, item in enumerate(value)]
    raise ExportError(
        f"checkpoint {source} cannot be exported: {where} is a {type(value).__name__}, which "
        f"{EXPORT_JSON} cannot hold"
    )


def _input_shape(state: Mapping[str, Any]) -> list[int] | None:
    """[C, H, W] of the model's images where the checkpoint tells it: the replay buffer's
    samples, else the named dataset of a run trained on it; None when neither does."""
    try:
        buf = state["ranks"][0]["buffer"]["buffer"]
    except (KeyError, IndexError, TypeError):
        buf = None
    if isinstance(buf, Tensor) and buf.dim() == 4:
        return [int(d) for d in buf.shape[1:]]
    data = state.get("config", {}).get("data", {}) if isinstance(state.get("config"), dict) else {}
    name = data.get("dataset") if isinstance(data, dict) else None
    if state.get("data_source") != "config" or not isinstance(name, str) or name == "imagefolder":
        return None
    try:
        from ebjdat.data import dataset_info

        info = dataset_info(name)
    except (ValueError, KeyError, OSError, ImportError):
        return None
    return [info.channels, info.image_size, info.image_size]


def _source(state: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """Where the export came from: the checkpoint's file name (not its full local path), the
    run, and the epoch and iteration it was saved at."""
    progress = state.get("progress") if isinstance(state.get("progress"), dict) else {}

    def count(key: str) -> int | None:
        value = progress.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    data_source = state.get("data_source")
    config = state.get("config") if isinstance(state.get("config"), dict) else {}
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    dataset = data.get("dataset") if data_source == "config" else None
    return {
        "checkpoint": path.name,
        "run_id": state.get("run_id") if isinstance(state.get("run_id"), str) else None,
        "epoch": count("epoch"),
        "iteration": count("iteration"),
        "dataset": dataset if isinstance(dataset, str) else None,
    }


def _safetensors_bytes(weights: Mapping[str, Tensor], source: str) -> bytes:
    """The weights as a safetensors file. safetensors refuses tensors that share memory (tied
    weights) or are not contiguous; each is stored as its own contiguous copy, and loading
    strictly into a module with the same ties restores both names."""
    from safetensors.torch import save

    tensors = {
        k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        for k, v in weights.items()
    }
    try:
        return save(
            tensors, metadata={"format": "pt", "ebjdat": f"{EXPORT_FORMAT}/{EXPORT_VERSION}"}
        )
    except Exception as err:  # noqa: BLE001  (safetensors raises its own error types)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(
            f"checkpoint {source} cannot be exported: its weights cannot be stored as "
            f"safetensors ({first})"
        ) from None


def export_checkpoint(
    checkpoint_path: str | Path,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    model: nn.Module | None = None,
) -> Path:
    """Writes OUT/model.safetensors and OUT/model.json for the model of a training checkpoint and
    returns OUT. Everything is checked before anything is written (a one-line CheckpointError for
    the checkpoint, ExportError for `out_dir`), and each file is written atomically, the JSON last:
    its sha256 of the weights makes a pair from two exports unloadable instead of silently wrong.
    A user model without a recorded builder exports as well; loading it then needs `model=`
    (passed here, it checks the weights against that module first)."""
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}")
    path, out = Path(checkpoint_path), Path(out_dir)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    problem = out_dir_problem(out, overwrite)
    if problem is not None:
        raise ExportError(f"out_dir {out}: {problem}")
    state = _read_checkpoint(path)
    source = str(path)
    weights, num_classes = _classifier_weights(state, source, model)
    blob = _safetensors_bytes(weights, source)
    meta = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "ebjdat_version": __version__,
        "model_config": _plain(state["model_config"], "model_config", source),
        "num_classes": num_classes,
        "input_range": [0, 1],
        "input_shape": _input_shape(state),
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "tensors": len(weights),
        "source": _source(state, path),
    }
    text = json.dumps(meta, indent=2, allow_nan=False) + "\n"
    write_atomic(out / EXPORT_WEIGHTS, lambda f: f.write(blob))
    write_text_atomic(out / EXPORT_JSON, text)
    return out


def how_to_load(out_dir: str | Path) -> str:
    """The Python line that loads the export in `out_dir`, with model= where the checkpoint
    recorded no builder (the weights then need the untrained module to go into)."""
    out = Path(out_dir)
    cfg = json.loads((out / EXPORT_JSON).read_text())["model_config"]
    if cfg.get("kind") == KIND and cfg.get("builder") in (None, "none"):
        return (
            f'ebjdat.load_classifier("{out}", model=...)  # model: an untrained '
            f"{cfg.get('class', 'module')}; the checkpoint records no builder"
        )
    return f'ebjdat.load_classifier("{out}")'
