"""Persistent replay buffer of SGLD chains (internal [-1, 1] images), kept on the training device.

Every random draw (indices, reinit coin flips, fresh starts) comes from the buffer's own
torch.Generator, saved in the state dict, so a resumed run draws exactly what the uninterrupted
run would have.
"""

from __future__ import annotations

import warnings

import torch

from .gaussians import ClassGaussians


def _device_seed() -> int:
    """A seed drawn from the global CPU RNG, so torch.manual_seed fixes a default buffer."""
    return int(torch.randint(0, 2**62, (1,)).item())


class ReplayBuffer:
    """`size` chains of shape `shape`, initialised uniform U(-1, 1) (JEM) or from class Gaussians
    (JEM++/SADA-JEM: size/K per class, clipped). `sample` reinitialises each drawn chain with
    probability `reinit_freq` from the same distribution."""

    def __init__(
        self,
        size: int,
        shape: tuple[int, ...],
        *,
        device: torch.device | str = "cpu",
        init: str = "uniform",
        gaussians: ClassGaussians | None = None,
        reinit_freq: float = 0.05,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if size <= 0:
            raise ValueError(f"size must be > 0, got {size}")
        if init not in ("uniform", "gaussian"):
            raise ValueError(f"init must be 'uniform' or 'gaussian', got {init!r}")
        if not 0.0 <= reinit_freq <= 1.0:
            raise ValueError(f"reinit_freq must lie in [0, 1], got {reinit_freq}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.size, self.shape, self.dtype = int(size), tuple(shape), dtype
        self.init, self.reinit_freq = init, float(reinit_freq)
        if init == "gaussian":
            if gaussians is None:
                raise ValueError("init='gaussian' needs fitted gaussians=ClassGaussians")
            if gaussians.shape != self.shape:
                raise ValueError(f"gaussians have shape {gaussians.shape}, buffer {self.shape}")
            gaussians = gaussians.to(self.device)
        self.gaussians = gaussians
        if generator is None:
            generator = torch.Generator(self.device).manual_seed(_device_seed())
        elif generator.device.type != self.device.type:
            raise ValueError(f"generator is on {generator.device}, buffer on {self.device}")
        self.generator = generator
        classes = None
        if init == "gaussian":
            k = self.gaussians.num_classes
            classes = torch.arange(self.size, device=self.device) % k  # size/K per class
        self.buffer = self._fresh(self.size, classes)

    def __len__(self) -> int:
        return self.size

    def _fresh(self, n: int, classes: torch.Tensor | None = None) -> torch.Tensor:
        """n new chain starts from the init distribution."""
        if self.init == "gaussian":
            x = self.gaussians.sample(n, classes=classes, generator=self.generator)
            return x.to(self.dtype)
        u = torch.rand(
            n, *self.shape, generator=self.generator, device=self.device, dtype=self.dtype
        )
        return u.mul_(2.0).sub_(1.0)

    @torch.no_grad()
    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, idx): chains at uniformly drawn slots, each replaced by a fresh start with
        probability reinit_freq. Fresh starts are drawn for the whole batch and mixed in, as the
        official sample_p_0 does, so no host sync is needed."""
        g = self.generator
        idx = torch.randint(0, self.size, (batch_size,), generator=g, device=self.device)
        fresh = self._fresh(batch_size)
        reinit = torch.rand(batch_size, generator=g, device=self.device) < self.reinit_freq
        mask = reinit.view(batch_size, *([1] * len(self.shape)))
        return torch.where(mask, fresh, self.buffer[idx]), idx

    @torch.no_grad()
    def update(self, idx: torch.Tensor, x: torch.Tensor) -> None:
        """Write the chains' new states back to their slots; a slot drawn twice keeps the chain
        that comes last in the batch. An indexed write with repeated indices leaves the winner
        to thread scheduling (it differed between identical CPU runs), so every repeat writes
        the last chain's value and the result no longer depends on the order. No host sync."""
        idx = idx.to(self.device)
        same = idx[:, None] == idx[None, :]
        positions = torch.arange(len(idx), device=self.device)
        last = torch.where(same, positions, -1).amax(dim=1)  # the last position of each slot
        self.buffer[idx] = x.detach().to(self.device, self.dtype)[last]

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self, *, include_gaussians: bool = False) -> dict[str, object]:
        """Buffer tensor and generator state (tensors only, loadable with weights_only=True).
        The Gaussians are large (K x D x D) and refittable from data, so they are opt-in."""
        state: dict[str, object] = {
            "buffer": self.buffer,
            "generator": self.generator.get_state(),
        }
        if include_gaussians and self.gaussians is not None:
            state["gaussians"] = self.gaussians.state_dict()
        return state

    def load_state_dict(self, state: dict[str, object]) -> None:
        buf = state["buffer"]
        assert isinstance(buf, torch.Tensor)
        if tuple(buf.shape) != (self.size, *self.shape):
            raise ValueError(
                f"buffer in state has shape {tuple(buf.shape)}, expected {(self.size, *self.shape)}"
            )
        self.buffer = buf.to(self.device, self.dtype).clone()
        if "gaussians" in state:
            g = ClassGaussians()
            g.load_state_dict(state["gaussians"])  # type: ignore[arg-type]
            self.gaussians = g.to(self.device)
        gen_state = state["generator"]
        assert isinstance(gen_state, torch.Tensor)
        try:
            self.generator.set_state(gen_state.cpu())
        except RuntimeError:
            # Saved on another device type (e.g. CUDA state resumed on CPU): the streams cannot
            # match anyway, so reseed deterministically from the saved bytes.
            warnings.warn(
                "replay-buffer generator state is for another device type; reseeding from it",
                stacklevel=2,
            )
            seed = int.from_bytes(bytes(gen_state.cpu().flatten()[:8].tolist()), "little")
            self.generator.manual_seed(seed % 2**62)
