"""sgld_step / sgld_step_: clamp(x + step_size * clip(grad) + noise_std * n, *clamp) in one pass.

n is N(0, 1) drawn inside the kernel from Philox (ebjdat/ops/_philox.py), seeded from `generator`
or the device's default generator; an explicit `noise` tensor replaces it (parity mode). NaN in
any input propagates to the output; grad_clip=None, clamp=None and noise_std=0 switch parts off.
Neither op is differentiable (see ebjdat/ops/_library.py `define`).
"""

from __future__ import annotations

import torch

from . import _checks, _philox
from ._layout import acc_dtype, in_layout_of, unflat
from ._library import define, implementation

_ARGS = (
    "Tensor grad, float step_size, float? grad_clip, float noise_std, float? clamp_min, "
    "float? clamp_max, Tensor? noise, Generator? generator)"
)
SCHEMA = "(Tensor x, " + _ARGS + " -> Tensor"
SCHEMA_INPLACE = "(Tensor(a!) x, " + _ARGS + " -> ()"


def reference(
    x: torch.Tensor,
    grad: torch.Tensor,
    step_size: float,
    grad_clip: float | None,
    noise_std: float,
    clamp_min: float | None,
    clamp_max: float | None,
    noise: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The definition, in PyTorch ops (float64 in, float64 math)."""
    out = torch.empty_like(x)
    acc = acc_dtype(x.dtype)
    g = in_layout_of(grad, out).to(acc)
    if grad_clip is not None:
        g = torch.clamp(g, -grad_clip, grad_clip)
    v = in_layout_of(x, out).to(acc) + step_size * g
    if noise is not None:
        v = v + noise_std * in_layout_of(noise, out).to(acc)
    elif noise_std != 0.0 and out.numel() > 0:
        n = out.numel()
        seed = _philox.reference_seed(generator, x.device)
        v = v + noise_std * unflat(_philox.normals(seed, 0, n, x.device), out).to(acc)
    if clamp_min is not None or clamp_max is not None:
        v = torch.clamp(v, clamp_min, clamp_max)
    return out.copy_(v)


def _reference_inplace(x: torch.Tensor, *args: object) -> None:
    x.copy_(reference(x, *args))


def _triton_into(
    out: torch.Tensor,
    x: torch.Tensor,
    grad: torch.Tensor,
    step_size: float,
    grad_clip: float | None,
    noise_std: float,
    clamp_min: float | None,
    clamp_max: float | None,
    noise: torch.Tensor | None,
    generator: torch.Generator | None,
) -> None:
    from ebjdat.kernels import sgld_step as kernel

    if x.dtype == torch.float64:
        raise TypeError(
            "x: the triton backend computes in float32; float64 needs cpu/cuda/reference"
        )
    n = out.numel()
    seed = offset = 0
    if noise is None and noise_std != 0.0 and n > 0:
        seed, offset = _philox.seed_offset(generator, x.device, _philox.blocks_for(n))
    kernel.launch(
        in_layout_of(x, out),
        in_layout_of(grad, out),
        out,
        step_size,
        grad_clip,
        noise_std,
        clamp_min,
        clamp_max,
        None if noise is None else in_layout_of(noise, out),
        seed,
        offset,
    )


def _triton(x: torch.Tensor, *args: object) -> torch.Tensor:
    out = torch.empty_like(x)
    _triton_into(out, x, *args)
    return out


def _triton_inplace(x: torch.Tensor, *args: object) -> None:
    dense = in_layout_of(x, x) is x
    out = x if dense else torch.empty_like(x)
    _triton_into(out, x, *args)
    if not dense:
        x.copy_(out)


def _fake(x: torch.Tensor, *args: object) -> torch.Tensor:
    return torch.empty_like(x)


def _fake_inplace(x: torch.Tensor, *args: object) -> None:
    return None


define("sgld_step", SCHEMA, fake=_fake, triton_impl=_triton, reference=reference, seeded=True)
define(
    "sgld_step_",
    SCHEMA_INPLACE,
    fake=_fake_inplace,
    triton_impl=_triton_inplace,
    reference=_reference_inplace,
    seeded=True,
)


def _arguments(
    x: torch.Tensor,
    grad: torch.Tensor,
    step_size: float,
    grad_clip: float | None,
    noise_std: float,
    clamp: tuple[float | None, float | None] | None,
    noise: torch.Tensor | None,
    generator: torch.Generator | None,
) -> tuple:
    _checks.tensor("x", x)
    _checks.like("grad", grad, "x", x)
    if noise is not None:
        _checks.like("noise", noise, "x", x)
    lo, hi = _checks.clamp_pair(clamp)
    return (
        x,
        grad,
        _checks.number("step_size", step_size),
        _checks.optional_number("grad_clip", grad_clip),
        _checks.number("noise_std", noise_std),
        lo,
        hi,
        noise,
        _checks.generator(generator, x.device),
    )


def sgld_step(
    x: torch.Tensor,
    grad: torch.Tensor,
    *,
    step_size: float,
    grad_clip: float | None = None,
    noise_std: float = 0.0,
    clamp: tuple[float | None, float | None] | None = (-1.0, 1.0),
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """clamp(x + step_size * clip(grad, ±grad_clip) + noise_std * N(0, 1), *clamp), fused.

    Not differentiable: the output never requires grad, like a detached tensor (no warning).
    """
    args = _arguments(x, grad, step_size, grad_clip, noise_std, clamp, noise, generator)
    return implementation("sgld_step", x.device)(*args)


def sgld_step_(
    x: torch.Tensor,
    grad: torch.Tensor,
    *,
    step_size: float,
    grad_clip: float | None = None,
    noise_std: float = 0.0,
    clamp: tuple[float | None, float | None] | None = (-1.0, 1.0),
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """In-place sgld_step: updates and returns x.

    Not differentiable, like an optimizer step: with grad mode on, an x that requires grad is
    refused (RuntimeError), so run it under torch.no_grad() or on a detached tensor. The update
    bumps x's version counter, so autograd rejects a backward through values saved before it.
    x must not overlap itself (an expanded tensor, say), and grad and noise must be either x
    itself or disjoint from it (ValueError otherwise): the kernels write x while reading them.
    """
    args = _arguments(x, grad, step_size, grad_clip, noise_std, clamp, noise, generator)
    implementation("sgld_step_", x.device)(*args)
    return x
