"""A user's classifier that is not ebjdat's, importable by name (`user_models:DigitsResNet`) so that
checkpoints record it as their builder, and the training script the lifecycle test runs, killed or
not, in a subprocess (`python -c "import user_models; user_models.main()" OUT [--resume]`, with
this directory on PYTHONPATH) or in-process.

DigitsResNet is torchvision's ResNet-18 layout ([2, 2, 2, 2] BasicBlocks, torchvision's own
`ResNet` and `BasicBlock` classes) at a quarter of its width (16-32-64-128 channels instead of
64-128-256-512, 0.7 M parameters instead of 11 M), with a 3x3 stride-1 stem for 1-channel 8x8
digits and no max-pool. At full width one training step takes about 1.7 s on one core, at a
quarter about 0.17 s; the lifecycle test trains about 200 steps."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from helpers import TINY_RUN
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

import ebjdat

# Tiny settings on the digits preset: a full run is 2 epochs of 39 iterations.
TINY = {
    **TINY_RUN,
    "data.dataset": "digits",
    "train.sample_grid": 4,
    "train.epochs": 2,
    "train.checkpoint_every_iters": 3,
}
ITERS_PER_EPOCH = 39  # the digits train split at batch 32
# One thread: these runs share 2 cores with other work, and two OpenMP threads on a contended
# core are up to 50 times slower here. Every run compared bit for bit uses the same count.
THREADS = 1


class DigitsResNet(ResNet):
    """ResNet-18 ([2, 2, 2, 2] torchvision BasicBlocks) at width 16 for 1x8x8 images in [0, 1].
    It takes no arguments, so its class is its own builder."""

    WIDTH = 16

    def __init__(self) -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=10)
        w = self.WIDTH
        self.conv1 = nn.Conv2d(1, w, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1 = nn.BatchNorm2d(w)
        self.maxpool = nn.Identity()  # 8x8 -> 8, 4, 2, 1 through the four stages
        self.fc = nn.Linear(8 * w * BasicBlock.expansion, 10)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):  # noqa: ANN001, ANN202
        # torchvision builds the stages with 64, 128, 256 and 512 planes after a 64-channel
        # stem; scale both, keeping everything else (blocks, strides, shortcuts) as it builds it.
        if planes == 64:
            self.inplanes = self.WIDTH
        return super()._make_layer(block, planes * self.WIDTH // 64, blocks, stride, dilate)


def fit(out_dir: str | Path | None, *, log=lambda m: None, **overrides) -> ebjdat.Trainer:  # noqa: ANN001
    """A new run of DigitsResNet on the config's digits dataset, the same every call."""
    torch.manual_seed(0)  # the user model's initial weights
    return ebjdat.fit(
        DigitsResNet(),
        None,  # the config's named dataset, so that ebjdat-eval can reload it
        config={**TINY, **overrides},
        out_dir=out_dir,
        device="cpu",
        progress_bar=False,
        log=log,
    )


def resume(out_dir: str | Path, *, log=lambda m: None, **overrides) -> ebjdat.Trainer:  # noqa: ANN001
    """Continues the run in out_dir to its (or the overridden) train.epochs."""
    t = ebjdat.Trainer(
        DigitsResNet(), None, config={**TINY, **overrides}, out_dir=out_dir, device="cpu",
        progress_bar=False, log=log,
    )  # fmt: skip
    t.resume()
    t.fit()
    return t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    (resume if args.resume else fit)(args.out)
