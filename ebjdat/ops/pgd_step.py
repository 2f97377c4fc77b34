"""pgd_step: one PGD ascent step, projection onto the eps-ball around x_orig, and clamp.

L-inf steps by step_size * sign(grad). L2 steps by step_size * grad / ||grad|| per sample and
rescales the per-sample delta to norm <= eps. Both norms are computed without overflow or
underflow: a vector v is scaled by s = 1 / max|v| (kept a normal number) before squaring, and
v / ||v|| = (v * s) / ||v * s||, so any nonzero gradient, from the smallest subnormal to the
largest finite value, gives a unit direction; a gradient that is exactly zero takes no step, and
one with an infinite or NaN component makes its sample NaN (its direction is undefined).
eps=None skips the projection, as the official EB-JDAT code does. NaN in any input propagates to
the output. Not differentiable (see ebjdat/ops/_library.py `define`).
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


def prescale(vmax: torch.Tensor) -> torch.Tensor:
    """Per-sample s with v * s safe to square: 1 / max|v|, the max clamped to the normal range
    [tiny, 1 / tiny] of its dtype so that s stays a normal number (a flush-to-zero unit would
    zero a subnormal one), and 0 for an infinite max (inf * 0 is NaN: no direction)."""
    tiny = torch.finfo(vmax.dtype).tiny
    s = 1.0 / vmax.clamp(tiny, 1.0 / tiny)
    return torch.where(torch.isinf(vmax), 0.0, s)


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
        per_sample = (-1,) + (1,) * (g.dim() - 1)

        def rows(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, -1)

        s = prescale(rows(g).abs().amax(1))
        q = g * s.view(per_sample)  # |q| <= 1 (up to the clamp of the max)
        ss = rows(q * q).sum(1)
        c = torch.where(ss == 0, 0.0, step_size / ss.sqrt())  # g == 0: no step
        v = a + q * c.view(per_sample)
        if eps is not None:
            delta = v - o
            t = prescale(rows(delta).abs().amax(1))
            r = rows((delta * t.view(per_sample)) ** 2).sum(1).sqrt()  # t * ||delta||
            inside = ~(r > eps * t)  # eps * t may overflow to inf: then it is inside
            t1 = torch.where(inside, 1.0, t)
            factor = torch.where(inside, torch.where(torch.isnan(r), r, 1.0), eps / r)
            v = o + delta * t1.view(per_sample) * factor.view(per_sample)
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
    """Ascend along grad, project onto the eps-ball around x_orig (unless eps=None), clamp.

    L2: the step is step_size * grad / ||grad|| for any nonzero grad (norms are scaled by the
    sample's max first, so tiny and huge gradients work); an all-zero grad takes no step.
    Not differentiable: the output never requires grad, like a detached tensor.
    """
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
