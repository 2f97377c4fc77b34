"""The JEM Wide-ResNet backbone (wgrathwohl/JEM, sndnyang/JEMPP, sndnyang/SADAJEM).

Pre-activation `wide_basic` blocks with LeakyReLU(0.2), convolutions with bias, the stride on the
*second* conv of a block, and default PyTorch init (the official `conv_init` is never applied).
Submodule names follow the official code (`conv1`, `layer1..4`, `bn1`, `shortcut.0`), so an official
checkpoint's backbone weights load unchanged (see `JEM.convert_official_state_dict`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

NORMS = ("batch", "none")


def _norm_name(norm: str | None) -> str:
    """Normalise the `norm` argument; "none" is the TOML-safe spelling of None."""
    if norm is None:
        return "none"
    if not isinstance(norm, str) or norm.lower() not in NORMS:
        raise ValueError(f"norm must be 'batch' or None ('none'), got {norm!r}")
    return norm.lower()


def make_norm(channels: int, norm: str | None, bn_momentum: float) -> nn.Module:
    """BatchNorm2d with the given (PyTorch-convention) momentum, or identity for no norm."""
    if _norm_name(norm) == "batch":
        return nn.BatchNorm2d(channels, momentum=bn_momentum)
    return nn.Identity()


def activation(leak: float, norm: str | None) -> nn.LeakyReLU:
    """LeakyReLU, in place when it follows a BatchNorm: the BN output is a fresh tensor that
    nothing else reads (BN's backward needs its input, LeakyReLU's the sign of its result), so
    this saves one activation-sized allocation and write per layer, which on CPU is a measurable
    part of a step. Without norm the input is the block input, also used by the shortcut."""
    return nn.LeakyReLU(leak, inplace=_norm_name(norm) == "batch")


class WideBasic(nn.Module):
    """norm, LeakyReLU, conv3x3, dropout, norm, LeakyReLU, conv3x3(stride); plus the shortcut."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        *,
        stride: int = 1,
        dropout: float = 0.0,
        norm: str | None = "batch",
        bn_momentum: float = 0.9,
        leak: float = 0.2,
    ) -> None:
        super().__init__()
        self.lrelu = activation(leak, norm)
        self.bn1 = make_norm(in_planes, norm, bn_momentum)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, bias=True)
        self.dropout = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self.bn2 = make_norm(planes, norm, bn_momentum)
        # The official block strides in conv2, not conv1 (unlike the original WRN).
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=True)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv1(self.lrelu(self.bn1(x))))
        out = self.conv2(self.lrelu(self.bn2(out)))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    """WRN-depth-widen feature extractor: images (in JEM's [-1, 1] units) -> [B, feature_dim].

    `extra_stage=True` adds SADA-JEM's fourth stage (width 128·k, stride 2) used for 64×64 inputs.
    Pooling is adaptive to 1×1, which equals the official `avg_pool2d(8)` on 32×32 inputs and
    also serves 8×8 digits and 64×64 images.
    """

    def __init__(
        self,
        depth: int = 28,
        widen: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        norm: str | None = "batch",
        bn_momentum: float = 0.9,
        dropout: float = 0.0,
        leak: float = 0.2,
        extra_stage: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10:
            raise ValueError(
                f"depth must be an integer 6n+4 >= 10 (e.g. 10, 16, 28), got {depth!r}"
            )
        if (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n+4 (e.g. 10, 16, 22, 28, 34), got depth={depth}")
        if isinstance(widen, bool) or not isinstance(widen, int) or widen < 1:
            raise ValueError(f"widen must be a positive integer, got {widen!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        norm = _norm_name(norm)
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen, 128 * widen]
        self.config: dict[str, Any] = {
            "depth": depth,
            "widen": widen,
            "num_classes": num_classes,
            "in_channels": in_channels,
            "norm": norm,
            "bn_momentum": float(bn_momentum),
            "dropout": float(dropout),
            "leak": float(leak),
            "extra_stage": bool(extra_stage),
        }
        self.num_classes = num_classes
        self.extra_stage = bool(extra_stage)
        block_kw = {"dropout": dropout, "norm": norm, "bn_momentum": bn_momentum, "leak": leak}

        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=True)
        in_planes = widths[0]
        stages = [(widths[1], 1), (widths[2], 2), (widths[3], 2)]
        if self.extra_stage:
            stages.append((widths[4], 2))
        for i, (planes, stride) in enumerate(stages, start=1):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(WideBasic(in_planes, planes, stride=s, **block_kw))
                in_planes = planes
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.num_stages = len(stages)
        self.bn1 = make_norm(in_planes, norm, bn_momentum)
        self.lrelu = activation(leak, norm)
        self.feature_dim = in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for i in range(1, self.num_stages + 1):
            out = getattr(self, f"layer{i}")(out)
        out = self.lrelu(self.bn1(out))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)

    def extra_repr(self) -> str:
        c = self.config
        return f"WRN-{c['depth']}-{c['widen']}, norm={c['norm']}, extra_stage={c['extra_stage']}"
