"""pgd_step: one PGD ascent step, projection onto the eps-ball around x_orig, and clamp.

L-inf steps by step_size * sign(grad); L2 by step_size * grad / ||grad|| per sample (a zero
gradient takes no step) and rescales the per-sample delta to norm <= eps. eps=None skips the
projection, as the official EB-JDAT code does. NaN in any input propagates to the output.
"""

from __future__ import annotations

import torch

from . import _checks
from ._layout import acc_dtype, batch_major_like, in_layout_of
from ._library import define, implementation

SCHEMA = (
    "(Tensor x_adv, Tensor grad, Tensor x_orig, float step_size, float? eps, str norm, "
    "float? clamp_min, float? clamp_max) -> Tensor"
)
_TINY = 1e-12


def reference(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x_orig: torch.Tensor,
    step_size: float,
    eps: float | None,
    norm: str,
    clamp_min: float | None,
    clamp_max: float | None,
) -> torch.Tensor:
    out = batch_major_like(x_adv)
    if out.numel() == 0:
        return out
    acc = acc_dtype(x_adv.dtype)
    a, g, o = (in_layout_of(t, out).to(acc) for t in (x_adv, grad, x_orig))
    if norm == "linf":
        sign = torch.where(torch.isnan(g), g, torch.sign(g))
        v = a + step_size * sign
        if eps is not None:
            v = torch.minimum(torch.maximum(v, o - eps), o + eps)
    else:
        batch = out.shape[0]
        gnorm = torch.linalg.vector_norm(g.reshape(batch, -1), dim=1).clamp_min(_TINY)
        v = a + (step_size / gnorm).view(-1, *[1] * (g.dim() - 1)) * g
        if eps is not None:
            delta = v - o
            dn = torch.linalg.vector_norm(delta.reshape(batch, -1), dim=1)
            factor = torch.where(dn > eps, eps / dn, torch.where(torch.isnan(dn), dn, 1.0))
            v = o + delta * factor.view(-1, *[1] * (g.dim() - 1))
    if clamp_min is not None or clamp_max is not None:
        v = torch.clamp(v, clamp_min, clamp_max)
    return out.copy_(v)


def _triton(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x_orig: torch.Tensor,
    step_size: float,
    eps: float | None,
    norm: str,
    clamp_min: float | None,
    clamp_max: float | None,
) -> torch.Tensor:
    from ebjdat.kernels import pgd_step as kernel

    if x_adv.dtype == torch.float64:
        raise TypeError(
            "x_adv: the triton backend computes in float32; float64 needs cpu/cuda/reference"
        )
    _checks.batched("x_adv", x_adv)
    out = batch_major_like(x_adv)
    kernel.launch(
        in_layout_of(x_adv, out),
        in_layout_of(grad, out),
        in_layout_of(x_orig, out),
        out,
        step_size,
        eps,
        _checks.norm(norm),
        clamp_min,
        clamp_max,
    )
    return out


def _fake(x_adv: torch.Tensor, *args: object) -> torch.Tensor:
    return batch_major_like(x_adv)


define("pgd_step", SCHEMA, fake=_fake, triton_impl=_triton, reference=reference)


def pgd_step(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x_orig: torch.Tensor,
    *,
    step_size: float,
    eps: float | None,
    norm: str = "linf",
    clamp: tuple[float | None, float | None] | None = (0.0, 1.0),
) -> torch.Tensor:
    """Ascend along grad, project onto the eps-ball around x_orig (unless eps=None), clamp."""
    _checks.batched("x_adv", _checks.tensor("x_adv", x_adv))
    _checks.like("grad", grad, "x_adv", x_adv)
    _checks.like("x_orig", x_orig, "x_adv", x_adv)
    lo, hi = _checks.clamp_pair(clamp)
    args = (
        x_adv,
        grad,
        x_orig,
        _checks.number("step_size", step_size),
        _checks.optional_number("eps", eps),
        _checks.norm(norm),
        lo,
        hi,
    )
    return implementation("pgd_step", x_adv.device)(*args)
