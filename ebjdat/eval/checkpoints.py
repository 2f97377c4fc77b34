"""A trained checkpoint as evaluation and sampling see it: the model with its validated training
Config, its replay buffer, its image shape and its data. Every way a file can be unusable is a
one-line CheckpointError, so that a command-line tool can answer with that line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def pick_device(device: str | torch.device | None) -> torch.device:
    """`device` (a bare "cuda": the current GPU), or cuda when available, else cpu."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def check_checkpoint_path(path: str | Path) -> None:
    """`path` must name a checkpoint file: checked before anything is loaded or created."""
    from ebjdat.checkpoint import CheckpointError

    p = Path(path)
    if p.is_dir():
        hint = next(
            (c for c in (p / "checkpoints" / "last.pt", p / "last.pt") if c.is_file()), None
        )
        tail = f"; did you mean {hint}?" if hint is not None else ""
        raise CheckpointError(f"checkpoint {path} is a directory, not a checkpoint file{tail}")
    if not p.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")


def config_of(state: dict[str, Any], path: str | Path) -> Any:
    """The checkpoint's training Config, validated, or a CheckpointError naming the problem."""
    from ebjdat.checkpoint import CheckpointError
    from ebjdat.train.config import ConfigError, from_dict

    tree = state.get("config")
    if tree is None:
        raise CheckpointError(f"checkpoint {path} holds no config")
    if not isinstance(tree, dict):
        raise CheckpointError(
            f"checkpoint {path}: its config is a {type(tree).__name__}, not a table"
        )
    try:
        return from_dict(tree).validate()
    except (ConfigError, KeyError, TypeError, ValueError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} has no usable config ({first})") from None


def load_checkpoint(path: str | Path, device: torch.device) -> tuple[Any, dict[str, Any], Any]:
    """(model in eval mode, raw checkpoint state, Config); CheckpointError for anything that is
    not a readable ebjdat checkpoint."""
    from ebjdat.checkpoint import CheckpointError, load
    from ebjdat.models.loading import model_from_state

    check_checkpoint_path(path)
    try:
        state = load(path, map_location="cpu")
    except OSError as err:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({err.strerror or type(err).__name__})"
        ) from None
    cfg = config_of(state, path)
    if state.get("data_source") == "user":
        # Its config names a preset's dataset, not the data it was trained on: evaluating on
        # that dataset would be a silent wrong answer.
        raise CheckpointError(
            f"checkpoint {path} was trained on data passed to ebjdat.fit, which the command line "
            "cannot load by name; evaluate ebjdat.load_classifier(path) on that data from "
            "Python (e.g. with ebjdat.pgd_attack)"
        )
    model = model_from_state(state, str(path)).to(device).eval()
    return model, state, cfg


def non_finite_weights(model: torch.nn.Module) -> tuple[list[str], int]:
    """(names of the parameters and buffers holding NaN or Inf, number of floating tensors)."""
    floats = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    return [k for k, v in floats.items() if not bool(torch.isfinite(v).all())], len(floats)


def default_out(ckpt: str | Path, name: str) -> Path:
    """RUN/<name> for RUN/checkpoints/x.pt (next to metrics.jsonl), else <ckpt dir>/<name>."""
    parent = Path(ckpt).resolve().parent
    run = parent.parent if parent.name == "checkpoints" else parent
    return run / name


def replay_buffer(state: dict[str, Any]) -> torch.Tensor | None:
    """Rank 0's replay buffer ([N, C, H, W], internal [-1, 1]), or None (e.g. PGD-AT runs)."""
    try:
        buf = state["ranks"][0]["buffer"]["buffer"]
    except (KeyError, IndexError, TypeError):
        return None
    return buf if isinstance(buf, torch.Tensor) and buf.dim() == 4 and len(buf) else None


def image_size(cfg: Any) -> int | None:
    """The resize of an imagefolder dataset (None: the dataset's own size)."""
    return (cfg.data.image_size or None) if cfg.data.dataset == "imagefolder" else None


def image_shape(state: dict[str, Any], cfg: Any, root: str | None) -> tuple[int, ...]:
    """(C, H, W) of the model's images: from the replay buffer, else from the dataset."""
    from ebjdat.data import dataset_info

    buf = replay_buffer(state)
    if buf is not None:
        return tuple(buf.shape[1:])
    info = dataset_info(cfg.data.dataset, root, image_size=image_size(cfg))
    return (info.channels, info.image_size, info.image_size)


def data_root(cfg: Any, override: str | Path | None) -> str | None:
    """Where the checkpoint's datasets live: `override`, else the run's data.root (None: the
    default, $EBJDAT_DATA or ./data)."""
    return (str(override) if override else None) or (cfg.data.root or None)


def train_images(cfg: Any, root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split as float [0, 1] images and labels (for Gaussians, FID references)."""
    from ebjdat.data import load_split_tensors, to_float01

    x, y = load_split_tensors(cfg.data.dataset, "train", root, cfg.data.download, image_size(cfg))
    return to_float01(x), y


def train_gaussians(cfg: Any, root: str | None, num_classes: int) -> Any:
    """The class Gaussians of the checkpoint's training split, as training fits them."""
    from ebjdat.sampling import fit_class_gaussians

    x, y = train_images(cfg, root)
    return fit_class_gaussians(x, y, num_classes)
