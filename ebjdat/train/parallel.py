"""Data parallelism with torch.distributed: which process this is, and the DistributedDataParallel
wrapper that the training loss runs through.

Only the loss forwards go through DDP. The samplers (SGLD and the adversarial sampler) call the
unwrapped model with its parameters frozen and take gradients with respect to their inputs only
(`torch.autograd.grad(..., inputs=z)`), so autograd never reaches a parameter's gradient
accumulator, where DDP's all-reduce hooks sit: a sampling pass communicates nothing and is
invisible to DDP. Each backward of the loss then all-reduces once, bucketed and overlapped with
the rest of the backward pass; SAM's two passes are two backwards, so two all-reduces.

BatchNorm statistics stay per process (`broadcast_buffers=False`), as each GPU of the official
code computes them; `train.sync_bn` turns them into SyncBatchNorm (CUDA only, a torch limit).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn

from .config import ConfigError


@dataclass(frozen=True)
class Distributed:
    """This process's place among the data-parallel ranks: `rank` (global, for data and seeds)
    and `local_rank` (its GPU on this node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> Distributed:
        """The ranks torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK and the rendezvous
        variables), joining the process group (NCCL with GPUs, gloo without) unless the caller
        already did; a single process when WORLD_SIZE is unset or 1."""
        if torch_dist.is_available() and torch_dist.is_initialized():
            local = int(os.environ.get("LOCAL_RANK", 0))
            return cls(torch_dist.get_rank(), torch_dist.get_world_size(), local)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        local = int(os.environ.get("LOCAL_RANK", 0))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
        torch_dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(torch_dist.get_rank(), torch_dist.get_world_size(), local)

    def check(self) -> None:
        """A world of several processes needs the process group it describes."""
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"distributed: rank {self.rank} outside world_size {self.world_size}")
        if self.world_size == 1:
            return
        if not (torch_dist.is_available() and torch_dist.is_initialized()):
            raise ValueError(
                f"distributed: world_size {self.world_size} but torch.distributed is not "
                "initialised; launch with torchrun, or call torch.distributed.init_process_group"
            )
        actual = (torch_dist.get_rank(), torch_dist.get_world_size())
        if actual != (self.rank, self.world_size):
            raise ValueError(
                f"distributed: rank {self.rank} of {self.world_size}, but the process group says "
                f"rank {actual[0]} of {actual[1]}"
            )

    def teardown(self) -> None:
        """Leave the process group (gc, barrier, then destroy: this avoids gloo's intermittent
        abort at interpreter exit)."""
        if self.world_size > 1 and torch_dist.is_initialized():
            gc.collect()
            torch_dist.barrier()
            torch_dist.destroy_process_group()


class InternalLogits(nn.Module):
    """The module DDP wraps: the energy model's forward on internal-unit images."""

    def __init__(self, energy: nn.Module) -> None:
        super().__init__()
        self.energy = energy

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.energy.logits_internal(z)


def unused_parameters(energy: nn.Module, probe: torch.Tensor) -> list[str]:
    """Trainable parameters that the logits of `probe` (internal units) do not depend on: DDP
    must then look for them every step (find_unused_parameters), or it fails one step later.
    The probe runs in eval mode, so BatchNorm statistics and the RNG are untouched."""
    was = [(m, m.training) for m in energy.modules()]
    energy.eval()
    named = [(n, p) for n, p in energy.named_parameters() if p.requires_grad]
    try:
        out = energy.logits_internal(probe)
        grads = torch.autograd.grad(out.float().sum(), [p for _, p in named], allow_unused=True)
    finally:
        for m, flag in was:
            m.training = flag
    return [n for (n, _), g in zip(named, grads, strict=True) if g is None]


def data_parallel(
    energy: nn.Module,
    probe: torch.Tensor,
    device: torch.device,
    *,
    sync_bn: bool,
    log: Callable[[str], None],
) -> nn.Module:
    """DistributedDataParallel around the energy model's internal forward (see the module
    docstring for what goes through it and what does not)."""
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        if device.type != "cuda":
            raise ConfigError(
                f"train.sync_bn needs CUDA devices (torch's SyncBatchNorm has no {device.type} "
                "kernels); set it to false"
            )
        nn.SyncBatchNorm.convert_sync_batchnorm(energy)  # in place below the root module
    unused = unused_parameters(energy, probe)
    if unused:
        shown = ", ".join(unused[:3]) + (f" and {len(unused) - 3} more" if len(unused) > 3 else "")
        log(
            f"{len(unused)} trainable parameters do not reach the logits ({shown}): "
            "DDP looks for unused parameters every step"
        )
    return DistributedDataParallel(
        InternalLogits(energy),
        device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False,
        find_unused_parameters=bool(unused),
    )
