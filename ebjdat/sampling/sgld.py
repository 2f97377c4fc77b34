"""SGLD in the model's internal [-1, 1] image range: one sampler for JEM, JEM++ and SADA-JEM.

Each step ascends log p(z) = -E(z) = logsumexp(logits) (or log p(z, y) = logits[y] when y is
given) through the fused `ebjdat.ops.sgld_step_`:

    z <- clamp(z + step_size * clip(grad, +-grad_clip) + noise_std * N(0, 1), *clamp)

JEM++'s PYLD/YOPO sampler is not implemented separately: with conv1 linear, its 5 inner steps of
0.2 * clip(dH/dx) equal one step of 1.0 * clip(d LSE/dx) (see docs/method-notes.md, 'PYLD
equals clipped SGLD'), so the presets `jempp()` and `sadajem()` are the same sampler;
tests/test_sampling.py proves the equivalence against a literal YOPO implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ebjdat import ops
from ebjdat.grad_modes import frozen_parameters, grad_mode, model_mode, outside_inference_mode
from ebjdat.settings import check_fields, setting

from . import cuda_graphs

if TYPE_CHECKING:  # pragma: no cover
    from .buffer import ReplayBuffer

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def internal_logits_fn(model: nn.Module, logits_fn: LogitsFn | None = None) -> LogitsFn:
    """The map from internal [-1, 1] images to logits: `logits_fn` if given, else
    `model.logits_internal` (an ebjdat energy model), else a plain classifier of [0, 1] images
    read through the one unit conversion (`EnergyModel.from_internal`), so that no caller
    writes it again."""
    if logits_fn is not None:
        return logits_fn
    fn = getattr(model, "logits_internal", None)
    if fn is not None:
        return fn
    from ebjdat.models.jem import EnergyModel

    return lambda z: model(EnergyModel.from_internal(z))


def internal_range(model: nn.Module) -> tuple[float, float]:
    """Where samplers clamp: the energy model's input range in internal units, or [-1, 1]
    (the [0, 1] pixel range) for a module that does not declare one."""
    bounds = getattr(model, "internal_range", None)
    return (-1.0, 1.0) if bounds is None else (float(bounds[0]), float(bounds[1]))


def log_density_grad(
    logits_fn: LogitsFn, z: torch.Tensor, y: torch.Tensor | None = None
) -> torch.Tensor:
    """d/dz of sum_i log p(z_i) (unnormalised): sum logsumexp(logits), or sum logits[y] with y.

    Only the input gradient is requested (torch.autograd.grad wrt z), so parameter .grad fields
    are never written and the engine skips the weight-gradient kernels.
    """
    with grad_mode():
        zr = z.detach().requires_grad_(True)
        out = ops.energy_head(logits_fn(zr), y)
        energy = out.energy if y is None else out.cond_energy
        (grad,) = torch.autograd.grad(-energy.sum(), zr)
    return grad


@outside_inference_mode
def sgld(
    model: nn.Module,
    z0: torch.Tensor,
    *,
    steps: int,
    step_size: float,
    noise_std: float = 0.0,
    grad_clip: float | None = None,
    clamp: tuple[float | None, float | None] | None = (-1.0, 1.0),
    bn_train: bool | None = None,
    y: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    logits_fn: LogitsFn | None = None,
    cuda_graph: bool = False,
) -> torch.Tensor:
    """Run `steps` SGLD steps from z0 (internal [-1, 1] images) and return the samples.

    bn_train: True runs the model in train mode (batch statistics, running stats updated, as
    JEM++/SADA-JEM do), False in eval mode (JEM), None leaves the mode as it is; the previous
    mode is restored afterwards either way. y gives class-conditional sampling from p(z, y).
    cuda_graph=True replays one captured step (CUDA tensors only; sampling/cuda_graphs.py).
    z0 is not modified; the result is a new tensor that does not require grad.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if cuda_graph:
        cuda_graphs.check_cuda_graph_inputs(z0)
    fn = internal_logits_fn(model, logits_fn)
    z = z0.detach().clone()
    y = None if y is None else y.clone()

    def step(t: Mapping[str, torch.Tensor]) -> None:
        grad = log_density_grad(fn, t["z"], t.get("y"))
        with torch.no_grad():
            ops.sgld_step_(
                t["z"],
                grad,
                step_size=step_size,
                grad_clip=grad_clip,
                noise_std=noise_std,
                clamp=clamp,
                generator=generator,
            )

    inputs = {"z": z} if y is None else {"z": z, "y": y}
    with model_mode(model, bn_train), frozen_parameters(model):
        if cuda_graph and steps > 0:
            key = (
                ("sgld", cuda_graphs.callable_key(fn)),
                (bn_train, step_size, grad_clip, noise_std, clamp),
            )
            return cuda_graphs.replay_loop(model, key, inputs, step, steps, generator)["z"]
        for _ in range(steps):
            step(inputs)
    return z


@dataclass
class SGLDConfig:
    """The SGLD sampler's settings, which are also the training config's [sgld] section, with
    their defaults and allowed values in this one place.

    steps ... bn_train are the chain (see `sgld`); calling the settings runs it. buffer_size,
    reinit_freq, init and gaussian_fit describe the replay buffer that training keeps the chains
    in. All
    quantities act on the model's internal [-1, 1] images, as JEM's do, so the official values
    carry over unchanged. The classmethods are the official variants' samplers.
    """

    buffer_size: int = setting(10000, ge=1)
    reinit_freq: float = setting(0.05, ge=0, le=1)
    # "gaussian": per-class Gaussians fitted to the training split (JEM++/SADA-JEM);
    # "uniform": U(-1, 1) (JEM)
    init: str = setting("gaussian", choices=("gaussian", "uniform"))
    # What the class Gaussians are fitted to: "clean" training images, or "augmented": one pass
    # of the labelled loader with its augmentation and data noise, as the official code does
    # (drawn from a generator of its own, so the run's other random streams are unchanged).
    gaussian_fit: str = setting("clean", choices=("clean", "augmented"))
    steps: int = setting(10, ge=0)
    step_size: float = setting(1.0, ge=0)
    noise_std: float = setting(0.0, ge=0)
    grad_clip: float | None = setting(1.0, gt=0)  # None: no clipping
    clamp: bool = True  # keep samples in the image range; the official JEM sampler does not
    bn_train: bool = True  # the official JEM++/SADA-JEM samplers run BN in train mode

    def check(self) -> SGLDConfig:
        """ConfigError naming sgld.<field> for any value out of its range; returns self."""
        check_fields(self, "sgld")
        return self

    @classmethod
    def jem(cls) -> SGLDConfig:
        """JEM: uniform starts, 10 steps of z += 1.0 * grad + 0.01 * N(0, I); no clip, no
        clamp, eval mode."""
        return cls(
            init="uniform",
            steps=10,
            step_size=1.0,
            noise_std=0.01,
            grad_clip=None,
            clamp=False,
            bn_train=False,
        )

    @classmethod
    def sadajem(cls) -> SGLDConfig:
        """SADA-JEM: 10 noise-free steps of z = clamp(z + clip(grad, +-1), -1, 1), train mode."""
        return cls(steps=10, step_size=1.0, noise_std=0.0, grad_clip=1.0, clamp=True, bn_train=True)

    @classmethod
    def jempp(cls) -> SGLDConfig:
        """JEM++ PYLD (10 outer x 5 inner x 0.2, eps 1): identical to `sadajem()` because conv1
        is linear (docs/method-notes.md, 'PYLD equals clipped SGLD')."""
        return cls.sadajem()

    def __call__(
        self,
        model: nn.Module,
        z0: torch.Tensor,
        *,
        y: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        logits_fn: LogitsFn | None = None,
        cuda_graph: bool = False,
    ) -> torch.Tensor:
        """`steps` SGLD steps from z0 (internal [-1, 1] images) with these settings."""
        self.check()
        return sgld(
            model,
            z0,
            steps=self.steps,
            step_size=self.step_size,
            noise_std=self.noise_std,
            grad_clip=self.grad_clip,
            clamp=internal_range(model) if self.clamp else None,
            bn_train=self.bn_train,
            y=y,
            generator=generator,
            logits_fn=logits_fn,
            cuda_graph=cuda_graph,
        )

    def sample_buffer(
        self,
        model: nn.Module,
        buffer: ReplayBuffer,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        logits_fn: LogitsFn | None = None,
        cuda_graph: bool = False,
    ) -> torch.Tensor:
        """Persistent-chain sampling: draw from the buffer, run SGLD, write the chains back.
        The noise uses `generator`, else the buffer's own generator (reproducible resumes)."""
        z0, idx = buffer.sample(batch_size)
        gen = buffer.generator if generator is None else generator
        z = self(model, z0, generator=gen, logits_fn=logits_fn, cuda_graph=cuda_graph)
        buffer.update(idx, z)
        return z


# The name of the settings before they became the [sgld] config section.
SGLDSampler = SGLDConfig
