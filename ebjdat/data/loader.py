"""An in-memory, on-device training loader with batch-wise augmentation.

For 8×8 to 64×64 images a per-sample `DataLoader` (PIL transforms, collation, host-to-device
copies) costs more than the model step; here the whole split sits on the device and each batch is
one gather plus a few vectorised ops. All randomness (permutation, crops, flips, noise) comes from
the loader's own `torch.Generator`, and `state_dict()` captures it, so a resumed run sees exactly
the batches the interrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .datasets import to_float01


@dataclass(frozen=True)
class Augment:
    """JEM's training augmentation, applied to a whole [B, C, H, W] batch in [0, 1].

    - pad-and-crop: pad by `pad` (`pad_mode` "reflect", "replicate" or "constant" = zeros), then a
      random H×W crop per sample (torchvision Pad + RandomCrop); pad=0 disables it;
    - horizontal flip with probability 1/2 per sample if `flip` (off for digits);
    - additive Gaussian noise. **`noise_std` is in JEM's internal [-1, 1] units**, as the
      official `x + sigma * randn` after Normalize(0.5, 0.5); on [0, 1] images the added noise
      has std `noise_std / 2`. The default 0.03 reproduces the official magnitude.
      Like the official code, the noisy result is not clipped unless `clamp=True`.
    """

    pad: int = 4
    pad_mode: str = "reflect"
    flip: bool = True
    noise_std: float = 0.03
    clamp: bool = False

    def __post_init__(self) -> None:
        if self.pad < 0:
            raise ValueError(f"pad must be >= 0, got {self.pad}")
        if self.pad_mode not in ("reflect", "replicate", "constant"):
            raise ValueError(
                f"pad_mode must be 'reflect', 'replicate' or 'constant', got {self.pad_mode!r}"
            )
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")

    @property
    def pixel_noise_std(self) -> float:
        """The noise std in [0, 1] pixel units."""
        return self.noise_std / 2.0

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment float images in [0, 1]; randoms are drawn on `generator.device`."""
        if x.dim() != 4:
            raise ValueError(f"expected a batch [B, C, H, W], got shape {tuple(x.shape)}")
        b, _, h, w = x.shape
        gdev = generator.device
        if self.pad > 0:
            p = self.pad
            if self.pad_mode == "reflect" and p >= min(h, w):
                raise ValueError(f"reflect padding {p} needs images larger than {p}, got {h}x{w}")
            padded = F.pad(x, (p, p, p, p), mode=self.pad_mode)
            offsets = torch.randint(0, 2 * p + 1, (b, 2), generator=generator, device=gdev)
            offsets = offsets.to(x.device)
            rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # [B, H]
            cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # [B, W]
            # Gather rows, then columns: per-sample crops without a Python loop.
            x = padded.gather(2, rows[:, None, :, None].expand(-1, x.shape[1], -1, padded.shape[3]))
            x = x.gather(3, cols[:, None, None, :].expand(-1, x.shape[1], h, -1))
        if self.flip:
            mask = torch.rand(b, generator=generator, device=gdev).lt(0.5).to(x.device)
            x = torch.where(mask[:, None, None, None], x.flip(3), x)
        if self.noise_std > 0:
            noise = torch.randn(x.shape, generator=generator, device=gdev, dtype=x.dtype)
            x = x + self.pixel_noise_std * noise.to(x.device)
        if self.clamp:
            x = x.clamp(0.0, 1.0)
        return x


def _make_generator(
    generator: torch.Generator | int | None, device: torch.device
) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    if generator is None:
        # Seeded from the global RNG, so torch.manual_seed makes the run repeatable.
        generator = int(torch.randint(0, 2**62, ()).item())
    g = torch.Generator(device=device)
    g.manual_seed(int(generator))
    return g


@dataclass(frozen=True)
class Shard:
    """This process's share of a split under data parallelism, with DistributedSampler's
    semantics: every epoch all ranks draw the same permutation from `seed` + epoch, drop its
    tail to a multiple of `world_size` (at most world_size - 1 examples an epoch, a different
    few each epoch), and rank r takes positions r, r + world_size, ... So together the ranks
    see each remaining example exactly once per epoch."""

    rank: int
    world_size: int
    seed: int

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must lie in [0, {self.world_size}), got {self.rank}")

    def order(self, n: int, epoch: int) -> torch.Tensor:
        """This rank's indices into the n examples for `epoch` (on the CPU)."""
        g = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(n, generator=g)
        usable = n - n % self.world_size
        return perm[self.rank : usable : self.world_size]


class EpochLoader:
    """What every training loader shares: shuffled epochs of fixed-size batches whose order,
    position and randomness (permutation, augmentation) live in one `torch.Generator`, so that
    `state_dict()` resumes exactly. Subclasses say how a batch of indices becomes images.
    With a `shard`, the epoch's order is this rank's share (see Shard) and the generator
    drives the augmentation only."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        device: torch.device,
        generator: torch.Generator | int | None,
        augment: Augment | None,
        drop_last: bool,
        shuffle: bool,
        shard: Shard | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.shard = shard if shard is not None and shard.world_size > 1 else None
        self.dataset_size = num_samples
        if self.shard is not None:
            num_samples //= self.shard.world_size  # this rank's share
        if drop_last and num_samples < batch_size:
            raise ValueError(
                f"batch_size {batch_size} exceeds the {num_samples} images with "
                "drop_last=True: an epoch would be empty"
            )
        self.device = device
        self._num_samples = num_samples
        self.batch_size = batch_size
        self.augment = augment
        self.drop_last = drop_last
        self.shuffle = shuffle
        self.generator = _make_generator(generator, self.device)
        self._epoch = 0
        self._position = 0  # batches already served in the current epoch
        self._perm: torch.Tensor | None = None  # this epoch's order, drawn at its first batch

    @property
    def num_samples(self) -> int:
        return self._num_samples

    @property
    def epoch(self) -> int:
        """Completed epochs."""
        return self._epoch

    @property
    def position(self) -> int:
        """Batches served so far in the current epoch."""
        return self._position

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def _rollover(self) -> None:
        self._epoch += 1
        self._position = 0
        self._perm = None

    def _order(self) -> torch.Tensor:
        if self._perm is None:
            n = self.num_samples
            if self.shard is not None:
                if not self.shuffle:
                    raise ValueError("a sharded loader always shuffles (shuffle=True)")
                perm = self.shard.order(self.dataset_size, self._epoch)
            elif self.shuffle:
                g = self.generator
                perm = torch.randperm(n, generator=g, device=g.device)
            else:
                perm = torch.arange(n)
            self._perm = perm.to(self.device)
        return self._perm

    def _remaining(self) -> list[torch.Tensor]:
        """The index batches still to serve in this epoch (a new epoch if this one is done)."""
        if self._position >= len(self):
            self._rollover()
        order, b = self._order(), self.batch_size
        return [order[i * b : (i + 1) * b] for i in range(self._position, len(self))]

    def _finish(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[0, 1] float images (augmented) and int64 labels on the device; counts the batch."""
        x = to_float01(x)
        if self.augment is not None:
            x = self.augment(x, self.generator)
        self._position += 1
        return x, y.to(self.device, torch.int64)

    def state_dict(self) -> dict[str, Any]:
        """Epoch, position, this epoch's order and the generator state (weights_only-safe)."""
        return {
            "epoch": self._epoch,
            "position": self._position,
            "perm": None if self._perm is None else self._perm.cpu(),
            "generator": self.generator.get_state(),
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where `state_dict()` was taken (same data and batch size required)."""
        if state["num_samples"] != self.num_samples or state["batch_size"] != self.batch_size:
            raise ValueError(
                f"loader state is for {state['num_samples']} images in batches of "
                f"{state['batch_size']}, this loader has {self.num_samples} / {self.batch_size}"
            )
        self._epoch = int(state["epoch"])
        self._position = int(state["position"])
        perm = state["perm"]
        self._perm = None if perm is None else perm.to(self.device)
        self.generator.set_state(state["generator"])


class TensorLoader(EpochLoader):
    """Shuffled (optionally augmented) batches `(x in [0, 1] float32, y int64)` on `device`.

    `images` is a whole split [N, C, H, W], uint8 (0..255) or float ([0, 1]); it is moved to
    `device` once. `generator` is a `torch.Generator` (best on `device`), an int seed, or None
    (a seed from the global RNG). Iterating yields the rest of the current epoch; an interrupted
    epoch continues where it stopped, at the next `iter()` or after `load_state_dict`.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | int | None = None,
        augment: Augment | None = None,
        drop_last: bool = True,
        shuffle: bool = True,
        shard: Shard | None = None,
    ) -> None:
        if images.dim() != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels must be [N] with N = {images.shape[0]}, got shape {tuple(labels.shape)}"
            )
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
        device = torch.device(device) if device is not None else images.device
        super().__init__(
            images.shape[0],
            batch_size,
            device=device,
            generator=generator,
            augment=augment,
            drop_last=drop_last,
            shuffle=shuffle,
            shard=shard,
        )
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)

    def __iter__(self):  # noqa: ANN204 - a generator of (x, y) batches
        for idx in self._remaining():
            yield self._finish(self.images[idx], self.labels[idx])
        self._rollover()
