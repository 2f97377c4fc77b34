"""The EB-JDAT adversarial sampler used in training (the official `sampleXadv`; see
docs/method-notes.md, 'The official adversarial sampler').

Works on internal [-1, 1] images. Per step it ascends

    objective = sum_i f(x~_i)[y_i]          ("logit", the official default: -E(x~, y))
             or sum_i CE(f(x~_i), y_i)      ("ce", the official commented-out alternative)
              + sum_i || u(f(x_i)) - u(f(x~_i)) ||^2   (perception_loss; u(v) = v / (||v|| + 1e-10))

with x~ <- clamp(x~ + alpha * sign(grad), -1, 1) and, only when `project`, the eps-ball
projection (the official code has none, so x~ can drift to eps + steps * alpha from x).
Differences from the official code, all neutral in value: the whole batch at once instead of
chunks of 2 (every term is per-sample in eval mode; the tests prove chunk invariance), one
forward per step instead of three, and the clean logits computed once instead of every step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import astuple, dataclass

import torch
from torch import nn

from ebjdat import ops
from ebjdat.grad_modes import frozen_parameters, grad_mode, model_mode, outside_inference_mode
from ebjdat.sampling.cuda_graphs import callable_key, check_cuda_graph_inputs, replay_loop
from ebjdat.sampling.sgld import LogitsFn, internal_logits_fn, internal_range
from ebjdat.settings import check_fields, setting

# Pixel units -> internal units. The config's eps and step_size are in [0, 1] pixel units and
# the sampler works on [-1, 1] images (z = 2x - 1), so distances scale by 2. This is the only
# place the conversion happens (AdvConfig.internal).
INTERNAL_PER_PIXEL = 2.0
_UNIT_EPS = 1e-10  # the official normalize_tensor's eps


@dataclass
class AdvConfig:
    """The adversarial sampler's settings, which are also the training config's [adv] section,
    with their defaults and allowed values in this one place.

    eps and step_size are in [0, 1] pixel units (the sampler converts them to its internal
    units); samples are clamped to the model's input range. The defaults are the sound,
    standard choice: ascend the cross-entropy, project onto the eps-ball, 8/255 and 2/255, 5
    steps. The official code's effective values (true-class logit plus perception loss, no
    projection, 4/255 and 1/255) are the `official` preset's. `enabled` is read by training
    only: whether the adversarial terms are part of the loss at all.
    """

    enabled: bool = True
    # "logit": ascend the true-class logit, -E(x~, y) (official); "ce": the cross-entropy
    objective: str = setting("ce", choices=("logit", "ce"))
    perception_loss: bool = False
    project: bool = True  # the official code never projects onto the eps-ball
    eps: float = setting(8 / 255, ge=0, le=1)  # [0, 1] pixel units
    step_size: float = setting(2 / 255, ge=0, le=1)
    steps: int = setting(5, ge=0)
    random_start: bool = True
    norm: str = setting("linf", choices=("linf", "l2"))

    def check(self) -> AdvConfig:
        """ConfigError naming adv.<field> for any value out of its range; returns self."""
        check_fields(self, "adv")
        return self

    def internal(self) -> tuple[float, float]:
        """(eps, step_size) in internal [-1, 1] units."""
        return INTERNAL_PER_PIXEL * self.eps, INTERNAL_PER_PIXEL * self.step_size


# The name of the settings before they became the [adv] config section.
AdvSamplerConfig = AdvConfig


def unit_logits(logits: torch.Tensor) -> torch.Tensor:
    """Each sample's logit vector divided by its own L2 norm (+1e-10, as the official code)."""
    return logits / (torch.linalg.vector_norm(logits, dim=1, keepdim=True) + _UNIT_EPS)


def perception_loss(clean_unit: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """sum_i || u(f(x_i)) - u(f(x~_i)) ||^2 given the clean side already normalised."""
    return (clean_unit - unit_logits(adv_logits)).square().sum()


def adversarial_objective(
    adv_logits: torch.Tensor,
    y: torch.Tensor,
    cfg: AdvConfig,
    clean_unit: torch.Tensor | None = None,
) -> torch.Tensor:
    """The scalar the sampler ascends (sums over the batch, so every sample's gradient is
    independent of the others in eval mode). clean_unit is needed when cfg.perception_loss."""
    out = ops.energy_head(adv_logits, y)
    obj = -out.cond_energy.sum() if cfg.objective == "logit" else out.ce.sum()
    if cfg.perception_loss:
        if clean_unit is None:
            raise ValueError("perception_loss needs the clean logits (clean_unit)")
        obj = obj + perception_loss(clean_unit, adv_logits)
    return obj


@outside_inference_mode
def adversarial_samples(
    model: nn.Module,
    z: torch.Tensor,
    y: torch.Tensor,
    cfg: AdvConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    logits_fn: LogitsFn | None = None,
    cuda_graph: bool = False,
) -> torch.Tensor:
    """x~ for internal-range images z with labels y, per `cfg`. The model runs in eval mode
    (BatchNorm running statistics, as the official f.eval()) and each module's previous mode is
    restored afterwards; parameter .grad fields are untouched. cuda_graph=True replays one
    captured step (CUDA tensors only; sampling/cuda_graphs.py). Returns a detached tensor."""
    cfg = (AdvConfig() if cfg is None else cfg).check()
    if cuda_graph:
        check_cuda_graph_inputs(z, y)
    fn = internal_logits_fn(model, logits_fn)
    eps, alpha = cfg.internal()
    bounds = internal_range(model)
    z, y = z.detach().clone(), y.clone()

    def step(t: Mapping[str, torch.Tensor]) -> None:
        with grad_mode():
            zr = t["z_adv"].detach().requires_grad_(True)
            obj = adversarial_objective(fn(zr), t["y"], cfg, t.get("clean_unit"))
            (grad,) = torch.autograd.grad(obj, zr)
        with torch.no_grad():
            t["z_adv"].copy_(
                ops.pgd_step(
                    t["z_adv"],
                    grad,
                    t["z"],
                    step_size=alpha,
                    eps=eps if cfg.project else None,
                    norm=cfg.norm,
                    clamp=bounds,
                )
            )

    with model_mode(model, False), frozen_parameters(model):
        inputs = {"z": z, "y": y}
        if cfg.perception_loss:
            with torch.no_grad():  # constant across steps: computed once
                inputs["clean_unit"] = unit_logits(fn(z))
        if cfg.random_start:
            z_adv = ops.pgd_init(z, eps=eps, norm=cfg.norm, clamp=bounds, generator=generator)
        else:
            z_adv = z.clone()
        inputs["z_adv"] = z_adv
        if cuda_graph and cfg.steps > 0:
            key = ("adversarial", callable_key(fn), astuple(cfg))
            return replay_loop(model, key, inputs, step, cfg.steps)["z_adv"]
        for _ in range(cfg.steps):
            step(inputs)
    return z_adv
