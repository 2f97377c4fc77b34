"""Standard PGD for evaluation, on models that map [0, 1] images to logits (`load_classifier`).

eps and step_size are in [0, 1] pixel units; images are clamped to [0, 1]. Steps go through the
fused `ebjdat.ops.pgd_init` / `pgd_step`, with the same maths as torchattacks' PGD / PGDL2.
The model's train/eval mode is left as the caller set it (evaluation models are in eval mode).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ebjdat import ops
from ebjdat.grad_modes import grad_mode, outside_inference_mode

Model01 = Callable[[torch.Tensor], torch.Tensor]


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed per-sample loss: with a sign (linf) or per-sample normalised (l2) step, sum and
    mean give the same update, and sum keeps samples independent."""
    out = ops.energy_head(logits, y)
    return out.ce.sum()


def _pgd_once(
    model01: Model01,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: str,
    random_start: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    if random_start:
        x_adv = ops.pgd_init(x, eps=eps, norm=norm, clamp=(0.0, 1.0), generator=generator)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        with grad_mode():
            xr = x_adv.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(_loss(model01(xr), y), xr)
        with torch.no_grad():
            x_adv = ops.pgd_step(
                x_adv, grad, x, step_size=step_size, eps=eps, norm=norm, clamp=(0.0, 1.0)
            )
    return x_adv


@outside_inference_mode
def pgd_attack(
    model01: Model01,
    x01: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: str = "linf",
    restarts: int = 1,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Untargeted PGD on the CE loss; returns x_adv in [0, 1] within eps of x01.

    With restarts > 1 every sample keeps the first adversarial example that fools the model
    (later restarts only attack the samples not yet fooled), so more restarts can only lower
    robust accuracy. Without random_start all restarts would be identical, so one is run.
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if restarts < 1 or steps < 0:
        raise ValueError("restarts must be >= 1 and steps >= 0")
    kw = dict(
        eps=eps,
        step_size=step_size,
        steps=steps,
        norm=norm,
        random_start=random_start,
        generator=generator,
    )
    x, y = x01.detach().clone(), y.clone()
    runs = restarts if random_start else 1
    if runs == 1:
        return _pgd_once(model01, x, y, **kw)
    best = x.clone()
    remaining = torch.arange(x.shape[0], device=x.device)
    for _ in range(runs):
        xs, ys = x[remaining], y[remaining]
        adv = _pgd_once(model01, xs, ys, **kw)
        with torch.no_grad():
            fooled = model01(adv).argmax(dim=1) != ys
        best[remaining] = adv
        remaining = remaining[~fooled]
        if remaining.numel() == 0:
            break
    return best
