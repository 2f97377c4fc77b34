"""Checkpoints that survive crashes: written to a temporary file in the same directory, fsynced,
then renamed over the target (atomic on POSIX), and read back with weights_only=True so loading
never unpickles arbitrary objects. Every way a file can be unreadable or not fit is reported as a
one-line CheckpointError."""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ebjdat.files import write_atomic

FORMAT = "ebjdat-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read: missing, truncated, foreign or of another version."""


def save(path: str | Path, state: dict[str, Any]) -> None:
    payload = {"format": FORMAT, "version": VERSION, **state}
    write_atomic(path, lambda f: torch.save(payload, f))


def _why_unreadable(err: BaseException) -> str:
    """What went wrong, in our words: torch's own message advises loading with
    weights_only=False, which would run whatever code the file carries, so it is never shown."""
    text = str(err)
    blocked = re.search(r"unsupported GLOBAL (\S+)", text) or re.search(
        r"Unsupported global: GLOBAL (\S+)", text
    )
    if blocked:
        return (
            f"it holds a pickled Python object ({blocked.group(1)}), not only tensors and plain "
            "data; ebjdat never unpickles such objects"
        )
    return "not a readable torch checkpoint: truncated, corrupt or another kind of file"


def read_tensors(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    error: Callable[[str], Exception] = CheckpointError,
    what: str = "checkpoint ",
) -> Any:
    """The contents of a torch file, through weights_only=True only: a missing, unreadable,
    corrupt or code-carrying file raises `error` with one line (never torch's advice to
    unpickle)."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{what}{path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise error(f"{what}{path} does not exist")
    try:
        with warnings.catch_warnings():  # e.g. torch's note on a pickle protocol: not ours
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise error(f"{what}{path} is not readable (permission denied)") from None
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
        OSError,
        UnicodeDecodeError,
    ) as err:
        raise error(f"{what}{path}: {_why_unreadable(err)}") from None


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    state = read_tensors(path, map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an ebjdat checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state.get('version')}; this ebjdat reads "
            f"version {VERSION}"
        )
    return state


# What a training checkpoint must hold for resume and rollback: key -> (type, what it is).
TRAINING_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "config": (dict, "the run's configuration"),
    "model": (dict, "the model's weights"),
    "optimizer": (dict, "the optimiser's state"),
    "progress": (dict, "the epoch and iteration counters"),
    "history": (list, "the metrics history"),
    "ranks": (list, "the per-process loaders, buffer and RNG states"),
}
PROGRESS_KEYS: dict[str, type | tuple[type, ...]] = {
    "epoch": int,
    "iteration": int,
    "best": (int, float),
    "lr_scale": (int, float),
    "retries": int,
    "seed": int,
}


def check_training_state(state: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """`state` if it has everything a resume reads, with the right types; else one line naming
    the first missing or malformed entry (a hand-edited or foreign file must not surface as a
    KeyError deep inside the trainer)."""
    for key, (kind, what) in TRAINING_KEYS.items():
        if key not in state:
            raise CheckpointError(f"checkpoint {path} has no {key!r} entry ({what})")
        if not isinstance(state[key], kind):
            raise CheckpointError(
                f"checkpoint {path}: {key!r} ({what}) is a {type(state[key]).__name__}, "
                f"not a {kind.__name__}"
            )
    for key, kind in PROGRESS_KEYS.items():
        value = state["progress"].get(key)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise CheckpointError(
                f"checkpoint {path}: progress.{key} is missing or not a number ({value!r})"
            )
    if not state["ranks"] or not all(isinstance(r, dict) for r in state["ranks"]):
        raise CheckpointError(f"checkpoint {path}: 'ranks' holds no per-process state")
    if not all(isinstance(row, dict) for row in state["history"]):
        raise CheckpointError(f"checkpoint {path}: 'history' rows must be tables")
    return state

