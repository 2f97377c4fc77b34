"""What a Trainer is built from, checked before anything runs: the config (a preset plus
overrides), the data (a named dataset, or the user's own `Dataset` or tensors) and the energy
model (ebjdat's WideResNet, or any classifier mapping [0, 1] images to logits)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ebjdat.data import dataset_info, load_split_tensors
from ebjdat.models import Classifier, EnergyModel, build_model

from .config import Config, ConfigError, apply, load_preset


def resolve_config(preset: str, config: Config | Mapping[str, Any] | None) -> Config:
    """A validated Config: `config` itself, or the preset with `{"section.key": value}`
    overrides (values as Python objects or strings, checked like `--set`)."""
    if isinstance(config, Config):
        return config.validate()
    cfg = load_preset(preset)
    if config is None:
        return cfg.validate()
    if not isinstance(config, Mapping):
        raise TypeError(
            f"config must be a Config or a dict of 'section.key' overrides, got "
            f"{type(config).__name__}"
        )
    for key, value in config.items():
        if not isinstance(key, str) or key.count(".") != 1:
            raise ConfigError(f"config override {key!r} must be named 'section.key'")
        section, name = key.split(".")
        apply(cfg, {section: {name: value}}, source="config")
    return cfg.validate()


@dataclass
class TrainData:
    """Both splits as whole tensors: images [N, C, H, W] (uint8 or float in [0, 1]), labels [N]."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    name: str

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def load_named(cfg: Config) -> TrainData:
    """The dataset the config names (its train and val splits)."""
    d = cfg.data
    root = d.root or None
    size = d.image_size or None
    info = dataset_info(d.dataset, root, image_size=size)
    train_x, train_y = load_split_tensors(d.dataset, "train", root, d.download, size)
    val_x, val_y = load_split_tensors(d.dataset, "val", root, d.download, size)
    return TrainData(train_x, train_y, val_x, val_y, info.num_classes, d.dataset)


def as_tensors(data: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of a map-style Dataset of (image, label) or of an (images, labels) pair,
    checked: images float in [0, 1] (or uint8) of one shape [C, H, W], integer labels >= 0."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
        isinstance(t, torch.Tensor) for t in data
    ):
        x, y = data
    else:
        if not (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
            raise TypeError(
                f"{name} must be a map-style Dataset of (image, label) or an (images, labels) "
                f"pair of tensors, got {type(data).__name__}"
            )
        if len(data) == 0:
            raise ValueError(f"{name} is empty")
        items = [data[i] for i in range(len(data))]
        try:
            x = torch.stack([torch.as_tensor(item[0]) for item in items])
            y = torch.as_tensor([int(item[1]) for item in items])
        except (TypeError, ValueError, RuntimeError, IndexError) as err:
            raise ValueError(
                f"{name}: items must be (image tensor [C, H, W], integer label) pairs of one "
                f"shape ({err})"
            ) from None
    if x.dim() != 4:
        raise ValueError(f"{name}: images must be [N, C, H, W], got shape {tuple(x.shape)}")
    if y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"{name}: labels must be [N] with N = {len(x)}, got {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{name}: labels must be integers, got {y.dtype}")
    if len(y) and int(y.min()) < 0:
        raise ValueError(f"{name}: labels must be >= 0, got {int(y.min())}")
    if x.dtype != torch.uint8:
        if not x.is_floating_point():
            raise ValueError(f"{name}: images must be uint8 or float in [0, 1], got {x.dtype}")
        if not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1:
            raise ValueError(f"{name}: float images must lie in [0, 1] (finite)")
        x = x.float()
    return x, y.long()


def user_data(
    train_data: Any, val_data: Any, seed: int, log: Callable[[str], None]
) -> TrainData:
    """TrainData from the user's own data; without val_data a fixed, seeded 10% (at most 1000
    images) of train_data is held out for validation and model selection, and said so."""
    train_x, train_y = as_tensors(train_data, "train_data")
    if val_data is not None:
        val_x, val_y = as_tensors(val_data, "val_data")
        if val_x.shape[1:] != train_x.shape[1:]:
            raise ValueError(
                f"val_data images are {tuple(val_x.shape[1:])}, train_data's "
                f"{tuple(train_x.shape[1:])}"
            )
    else:
        n_val = min(1000, max(1, len(train_x) // 10))
        if len(train_x) - n_val < 2:
            raise ValueError("train_data needs at least 3 examples to hold out a validation split")
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))
        val_idx, train_idx = order[:n_val], order[n_val:]
        val_x, val_y = train_x[val_idx], train_y[val_idx]
        train_x, train_y = train_x[train_idx], train_y[train_idx]
        log(f"no val_data: holding out {n_val} of the training examples for validation")
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    return TrainData(train_x, train_y, val_x, val_y, max(num_classes, 2), "user data")


def energy_model(model: nn.Module | None, cfg: Config, data: TrainData) -> EnergyModel:
    """ebjdat's WideResNet from the config (model=None), or the user's classifier as an energy
    model, after one forward pass that checks it maps [B, C, H, W] images to [B, K] logits."""
    c, h, w = data.image_shape
    if model is None:
        m = cfg.model
        return build_model(
            m.arch,
            num_classes=data.num_classes,
            in_channels=c,
            image_size=w,
            norm=None if m.norm == "none" else m.norm,
            bn_momentum=m.bn_momentum,
            dropout=m.dropout,
        )
    if isinstance(model, Config):
        raise TypeError("Trainer's first argument is the model; pass the config as config=...")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    probe = data.train_x[:2].float()
    probe = probe / 255.0 if data.train_x.dtype == torch.uint8 else probe
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            out = model(probe.to(device))
    except Exception as err:  # noqa: BLE001 - any failure of the user's forward is reported
        raise ValueError(
            f"model failed on a batch of training images {tuple(probe.shape)} in [0, 1]: "
            f"{type(err).__name__}: {err}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(probe):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model must map images [B, C, H, W] to logits [B, K]; got {shape}")
    k = out.shape[1]
    if k < data.num_classes:
        raise ValueError(
            f"the data has labels up to {data.num_classes - 1} but the model outputs {k} logits"
        )
    if not math.isfinite(float(out.float().abs().max())):
        raise ValueError("model outputs non-finite logits on training images")
    data.num_classes = k
    return model if isinstance(model, EnergyModel) else Classifier(model, k)
