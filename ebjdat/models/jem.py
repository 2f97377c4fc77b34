"""The JEM energy model: a backbone plus a linear class head, read as an energy-based model.

Public inputs are images in [0, 1]. JEM trains on Normalize(0.5, 0.5) images in [-1, 1]; the one
place that converts between the two is `JEM.to_internal` / `JEM.from_internal`. Samplers work in
the internal units and call `logits_internal` directly.

Energies (the JEM convention): E(x) = -logsumexp_y f(x)[y], E(x, y) = -f(x)[y], computed by the
fused `ebjdat.ops.energy_head`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..ops import EnergyOut, energy_head
from .wideresnet import WideResNet

_ARCH = re.compile(r"^wrn-(\d+)-(\d+)$", re.IGNORECASE)


class EnergyModel(nn.Module):
    """A classifier read as an energy-based model, for any architecture: subclasses give
    `logits_internal(z)` on internal [-1, 1] images; [0, 1] inputs, the unit conversion and the
    energies are defined here once."""

    num_classes: int
    # What the public forward takes; samplers clamp to its image under to_internal.
    input_range: tuple[float, float] = (0.0, 1.0)

    # ---- unit conversion: the only place that knows JEM's [-1, 1] convention -------------------

    @staticmethod
    def to_internal(x: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels -> JEM's [-1, 1] (Normalize(mean=0.5, std=0.5))."""
        return x * 2.0 - 1.0

    @staticmethod
    def from_internal(z: torch.Tensor) -> torch.Tensor:
        """JEM's [-1, 1] -> [0, 1] pixels."""
        return (z + 1.0) * 0.5

    @property
    def internal_range(self) -> tuple[float, float]:
        """The input range in internal units: where samplers clamp their images."""
        lo, hi = self.input_range
        return float(self.to_internal(lo)), float(self.to_internal(hi))  # plain arithmetic

    # ---- logits and energies --------------------------------------------------------------------

    def logits_internal(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of [0, 1] images: the classifier view (ready for torchattacks / AutoAttack)."""
        if x.dim() != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(x.shape)}")
        return self.logits_internal(self.to_internal(x))

    def energies(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        internal: bool = False,
        temperature: float = 1.0,
    ) -> EnergyOut:
        """EnergyOut(energy=E(x), cond_energy=E(x, y), ce) from one forward pass.

        `internal=True` means `x` is already in [-1, 1].
        """
        logits = self.logits_internal(x) if internal else self(x)
        return energy_head(logits, y, temperature=temperature)

    def energy(self, x: torch.Tensor, *, internal: bool = False) -> torch.Tensor:
        """E(x) = -logsumexp_y f(x)[y], one value per sample."""
        return self.energies(x, internal=internal).energy

    def cond_energy(
        self, x: torch.Tensor, y: torch.Tensor, *, internal: bool = False
    ) -> torch.Tensor:
        """E(x, y) = -f(x)[y], one value per sample."""
        out = self.energies(x, y, internal=internal)
        assert out.cond_energy is not None
        return out.cond_energy


class JEM(EnergyModel):
    """Backbone + `Linear(feature_dim, num_classes)` head; logits double as negative energies."""

    def __init__(self, backbone: nn.Module, num_classes: int | None = None) -> None:
        super().__init__()
        feature_dim = getattr(backbone, "feature_dim", None)
        if not isinstance(feature_dim, int):
            raise TypeError("backbone must expose an integer `feature_dim` (e.g. WideResNet)")
        if num_classes is None:
            num_classes = getattr(backbone, "num_classes", None)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.backbone = backbone
        # Named as in the official CCF so its checkpoints map over (convert_official_state_dict).
        self.class_output = nn.Linear(feature_dim, num_classes)
        self.num_classes = num_classes

    def features_internal(self, z: torch.Tensor) -> torch.Tensor:
        """Penultimate features of internal-unit images."""
        return self.backbone(z)

    def logits_internal(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of images already in [-1, 1] (what samplers and training internals use)."""
        return self.class_output(self.backbone(z))

    # ---- rebuilding -----------------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """Plain (TOML/weights_only-safe) architecture kwargs; `JEM.from_config` rebuilds it."""
        backbone_cfg = getattr(self.backbone, "config", None)
        if not isinstance(self.backbone, WideResNet) or backbone_cfg is None:
            raise TypeError(f"no config for backbone type {type(self.backbone).__name__}")
        cfg = {"backbone": "wideresnet", **backbone_cfg}
        cfg["num_classes"] = self.num_classes
        return cfg

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> JEM:
        """Rebuild an (untrained) model from `jem.config`, e.g. before loading a checkpoint."""
        cfg = dict(cfg)
        kind = cfg.pop("backbone", "wideresnet")
        if kind != "wideresnet":
            raise ValueError(f"unknown backbone {kind!r} in model config (known: 'wideresnet')")
        return cls(WideResNet(**cfg), num_classes=cfg.get("num_classes"))

    @staticmethod
    def convert_official_state_dict(
        state: Mapping[str, torch.Tensor], fmt: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Map an official JEM/JEM++/SADA-JEM `CCF` state dict onto this module's names.

        `fmt` is "jem", "jempp" or "sadajem" (None: told from the keys). `f.*` -> `backbone.*`;
        JEM++'s yopo aliases (checked identical), `energy_output` and JEM's unused `f.linear`
        are dropped; anything else unknown is a one-line error (ebjdat.models.official).
        """
        from .official import convert_state_dict, detect_format

        weights, _ = convert_state_dict(state, fmt or detect_format(state))
        return weights


def parse_arch(arch: str) -> tuple[int, int]:
    """'wrn-28-10' -> (28, 10)."""
    m = _ARCH.match(arch.strip()) if isinstance(arch, str) else None
    if m is None:
        raise ValueError(
            f"arch must look like 'wrn-DEPTH-WIDEN' (e.g. 'wrn-28-10', 'wrn-16-4', 'wrn-10-2'), "
            f"got {arch!r}"
        )
    depth, widen = int(m.group(1)), int(m.group(2))
    if (depth - 4) % 6 != 0 or depth < 10 or widen < 1:
        raise ValueError(
            f"arch {arch!r}: depth must be 6n+4 >= 10 and widen >= 1 (got depth={depth}, "
            f"widen={widen})"
        )
    return depth, widen


def build_model(
    arch: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    norm: str | None = "batch",
    bn_momentum: float = 0.9,
    dropout: float = 0.0,
    leak: float = 0.2,
) -> JEM:
    """A JEM over a WRN from an arch string; images of 64 px or more get SADA-JEM's 4th stage."""
    depth, widen = parse_arch(arch)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    backbone = WideResNet(
        depth=depth,
        widen=widen,
        num_classes=num_classes,
        in_channels=in_channels,
        norm=norm,
        bn_momentum=bn_momentum,
        dropout=dropout,
        leak=leak,
        extra_stage=image_size >= 64,
    )
    return JEM(backbone, num_classes=num_classes)


# ---- batch-norm helpers (trainer / samplers) -------------------------------------------------


def _batchnorms(model: nn.Module) -> Iterator[tuple[str, _BatchNorm]]:
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            yield name, module


def set_bn_momentum(model: nn.Module, momentum: float | None) -> dict[str, float | None]:
    """Set every BatchNorm's momentum; returns the previous values for `restore_bn_momentum`.

    momentum=0 keeps running stats fixed while train-mode forwards still normalise with batch
    statistics: what SADA-JEM's second SAM pass does (`disable_running_stats`).
    """
    previous: dict[str, float | None] = {}
    for name, bn in _batchnorms(model):
        previous[name] = bn.momentum
        bn.momentum = momentum
    return previous


def restore_bn_momentum(model: nn.Module, previous: Mapping[str, float | None]) -> None:
    """Undo `set_bn_momentum` with the values it returned."""
    for name, bn in _batchnorms(model):
        if name in previous:
            bn.momentum = previous[name]


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[dict[str, float | None]]:
    """Within the block, train-mode forwards leave BN running stats untouched (momentum 0).

    `num_batches_tracked` still counts; it only matters for momentum=None, which JEM never uses.
    """
    previous = set_bn_momentum(model, 0.0)
    try:
        yield previous
    finally:
        restore_bn_momentum(model, previous)


@contextmanager
def bn_eval(model: nn.Module) -> Iterator[nn.Module]:
    """BatchNorm layers in eval mode (running stats) inside the block; each gets its mode back.

    Only BN changes: dropout and everything else keep their current mode.
    """
    saved = [(bn, bn.training) for _, bn in _batchnorms(model)]
    try:
        for bn, _ in saved:
            bn.eval()
        yield model
    finally:
        for bn, mode in saved:
            bn.train(mode)
