"""The streaming training loader, for datasets that do not fit in memory: a torch `DataLoader`
with worker processes reads the examples, and everything random (the epoch's permutation, the
augmentation) stays in the loader's own generator in the main process, exactly as in the
in-memory `TensorLoader`. Both loaders therefore serve the same batches for the same seed, and
their `state_dict()`s are interchangeable: a run resumes exactly, whichever path it takes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .loader import Augment, EpochLoader, Shard


def collate(items: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [B, C, H, W], labels [B]) from (image, label) items, with a message naming what
    is wrong instead of default_collate's."""
    try:
        x = torch.stack([torch.as_tensor(item[0]) for item in items])
        y = torch.as_tensor([int(item[1]) for item in items], dtype=torch.int64)
    except (TypeError, ValueError, RuntimeError, IndexError) as err:
        raise ValueError(
            f"training items must be (image tensor [C, H, W], integer label) pairs of one shape "
            f"({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})"
        ) from None
    return x, y


def check_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int | None) -> None:
    """The checks the in-memory path makes once for the whole split, made per streamed batch:
    uint8 or finite float images in [0, 1], labels in [0, num_classes)."""
    if x.dim() != 4:
        raise ValueError(f"training images must be [C, H, W], got a batch {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        if not x.is_floating_point():
            raise ValueError(f"training images must be uint8 or float in [0, 1], got {x.dtype}")
        if not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1:
            raise ValueError("training images given as floats must lie in [0, 1] (finite)")
    if len(y) and (int(y.min()) < 0 or (num_classes is not None and int(y.max()) >= num_classes)):
        raise ValueError(
            f"training labels must lie in [0, {num_classes}), got {int(y.min())}..{int(y.max())}"
        )


class StreamLoader(EpochLoader):
    """Shuffled (optionally augmented) batches `(x in [0, 1] float32, y int64)` on `device`,
    read from a map-style `dataset` of (image, label) by `workers` processes (0: in this one).

    The arguments and the batches are those of `TensorLoader` on the same examples; only the
    images are read batch by batch (and checked as they arrive) instead of held in memory.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        generator: torch.Generator | int | None = None,
        augment: Augment | None = None,
        drop_last: bool = True,
        shuffle: bool = True,
        workers: int = 0,
        num_classes: int | None = None,
        shard: Shard | None = None,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
        super().__init__(
            len(dataset),
            batch_size,
            device=torch.device(device),
            generator=generator,
            augment=augment,
            drop_last=drop_last,
            shuffle=shuffle,
            shard=shard,
        )
        self.dataset = dataset
        self.workers = workers
        self.num_classes = num_classes
        # Worker seeds come from here (see _quiet).
        self._worker_seeds = torch.Generator().manual_seed(int(self.generator.initial_seed()))

    def _reader(self, batches: list[list[int]]) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            generator=self._worker_seeds,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = [idx.tolist() for idx in self._remaining()]
        for x, y in self._reader(batches):
            check_batch(x, y, self.num_classes)
            yield self._finish(x.to(self.device, non_blocking=True), y)
        self._rollover()


def _quiet() -> torch.Generator:
    """A generator for a DataLoader's worker seeds, so that reading data never advances the
    global RNG (which a DataLoader otherwise draws from at every iteration, even without
    workers, and which then initialises the model)."""
    return torch.Generator().manual_seed(0)


def labels_of(dataset: Dataset, workers: int = 0) -> torch.Tensor:
    """Every label of a map-style (image, label) dataset: its `targets` when it has them (the
    torchvision datasets do), else one pass over the dataset."""
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets) == len(dataset):
        return torch.as_tensor(list(targets), dtype=torch.int64)
    reader = DataLoader(
        dataset, batch_size=256, num_workers=workers, collate_fn=collate, generator=_quiet()
    )
    return torch.cat([y for _, y in reader]) if len(dataset) else torch.zeros(0, dtype=torch.int64)


def read_examples(
    dataset: Dataset, indices: Sequence[int], workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples at `indices`, in that order, as whole tensors (images as stored)."""
    reader = DataLoader(
        dataset,
        batch_sampler=[list(indices[i : i + 256]) for i in range(0, len(indices), 256)],
        num_workers=workers,
        collate_fn=collate,
        generator=_quiet(),
    )
    parts = list(reader)
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])
