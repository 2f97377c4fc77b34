"""pgd_init: the PGD random start, uniform in the L-inf box or the L2 ball of radius eps, clamped.

L2 draws a direction z / ||z|| from the element normals and a radius eps * u^(1/d) (d = elements
per sample) from one extra Philox block per sample, which is uniform in the ball (a z that is
exactly zero, which Box-Muller does not produce in practice, gives no offset). Not differentiable
(see ebjdat/ops/_library.py `define`).
"""

from __future__ import annotations

import torch

from . import _checks, _philox
from ._layout import acc_dtype, batch_major_like, in_layout_of, unflat
from ._library import define, implementation

SCHEMA = (
    "(Tensor x, float eps, str norm, float? clamp_min, float? clamp_max, Generator? generator)"
    " -> Tensor"
)


def _seed(x: torch.Tensor, norm: str, generator: torch.Generator | None) -> tuple[int, int]:
    extra = x.shape[0] if norm == "l2" else 0
    return _philox.seed_offset(generator, x.device, _philox.blocks_for(x.numel(), extra))


def reference(
    x: torch.Tensor,
    eps: float,
    norm: str,
    clamp_min: float | None,
    clamp_max: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    out = batch_major_like(x)
    n = out.numel()
    if n == 0:
        return out
    acc = acc_dtype(x.dtype)
    xv = in_layout_of(x, out).to(acc)
    seed, offset = _philox.reference_seed(generator, x.device), 0
    if norm == "linf":
        u = unflat(_philox.uniforms(seed, offset, n, x.device), out).to(acc)
        v = xv + eps * (2.0 * u - 1.0)
    else:
        batch = out.shape[0]
        z = _philox.normals(seed, offset, n, x.device).to(acc).reshape(batch, -1)
        radius_counters = torch.arange(batch, device=x.device) + offset + _philox.blocks_for(n)
        u = _philox._to_uniform(_philox.philox4x32_10(seed, radius_counters)[0]).double()
        r = u ** (1.0 / z.shape[1])
        # Normals are bounded (|z| < 6), so ||z|| needs no scaling; z == 0 gives no offset.
        zn = torch.linalg.vector_norm(z, dim=1)
        scale = torch.where(zn > 0, (eps * r).to(acc) / zn, 0.0)
        v = xv + unflat((z * scale[:, None]).reshape(-1), out)
    if clamp_min is not None or clamp_max is not None:
        v = torch.clamp(v, clamp_min, clamp_max)
    return out.copy_(v)


def _triton(
    x: torch.Tensor,
    eps: float,
    norm: str,
    clamp_min: float | None,
    clamp_max: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    from ebjdat.kernels import pgd_init as kernel

    if x.dtype == torch.float64:
        raise TypeError(
            "x: the triton backend computes in float32; float64 needs cpu/cuda/reference"
        )
    _checks.batched("x", x)
    out = batch_major_like(x)
    if out.numel():
        seed, offset = _seed(x, _checks.norm(norm), generator)
        kernel.launch(in_layout_of(x, out), out, eps, norm, clamp_min, clamp_max, seed, offset)
    return out


def _fake(x: torch.Tensor, *args: object) -> torch.Tensor:
    return batch_major_like(x)


define("pgd_init", SCHEMA, fake=_fake, triton_impl=_triton, reference=reference, seeded=True)


def pgd_init(
    x: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    clamp: tuple[float | None, float | None] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """x + a uniform draw from the eps-box (linf) or eps-ball (l2), clamped.

    Not differentiable: the output never requires grad, like a detached tensor.
    """
    _checks.batched("x", _checks.tensor("x", x))
    lo, hi = _checks.clamp_pair(clamp)
    args = (
        x,
        _checks.number("eps", eps),
        _checks.norm(norm),
        lo,
        hi,
        _checks.generator(generator, x.device),
    )
    return implementation("pgd_init", x.device)(*args)
