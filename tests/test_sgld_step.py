"""sgld_step / sgld_step_ on every CPU-reachable backend against the float64 reference."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import LAYOUTS, cpu_backends, dtypes_for, gen, relayout, run, shapes, tol, values
from hypothesis import given
from hypothesis import strategies as st

from ebjdat import ops
from ebjdat.ops.sgld_step import reference

BACKENDS = cpu_backends()


def expected(x, g, step, clip, std, clamp, seed=None, noise=None):  # noqa: ANN001, ANN201
    lo, hi = (None, None) if clamp is None else clamp
    n64 = None if noise is None else noise.double()
    generator = None if seed is None else gen(seed)
    return reference(x.double(), g.double(), step, clip, std, lo, hi, n64, generator)


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_matches_float64_reference(backend: str, data: st.DataObject) -> None:
    dtype = data.draw(st.sampled_from(dtypes_for(backend)), "dtype")
    shape = data.draw(shapes(), "shape")
    layout = data.draw(st.sampled_from(LAYOUTS), "layout")
    grad_layout = data.draw(st.sampled_from(LAYOUTS), "grad_layout")
    clip = data.draw(st.sampled_from([None, 0.0, 0.01, 0.5]), "grad_clip")
    std = data.draw(st.sampled_from([0.0, 0.01, 1.0]), "noise_std")
    clamp = data.draw(st.sampled_from([None, (-1.0, 1.0), (0.0, None), (None, 0.25)]), "clamp")
    step = data.draw(st.sampled_from([0.0, 1.0, 0.37]), "step")
    seed = data.draw(st.integers(0, 2**31), "seed")
    x = relayout(values(shape, seed, 1.5).to(dtype), layout)
    g = relayout(values(shape, seed + 1, 3.0).to(dtype), grad_layout)
    out = run(
        backend,
        ops.sgld_step,
        x,
        g,
        step_size=step,
        grad_clip=clip,
        noise_std=std,
        clamp=clamp,
        generator=gen(seed),
    )
    assert out.dtype == dtype and out.shape == x.shape
    assert out.stride() == torch.empty_like(x).stride()
    ref = expected(x, g, step, clip, std, clamp, seed=seed)
    torch.testing.assert_close(out.double(), ref, **tol(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_inplace_equals_functional(backend: str, layout: str) -> None:
    x = relayout(values((3, 4, 5, 6), 0).float(), layout)
    g = values((3, 4, 5, 6), 1).float()
    kw = dict(step_size=0.5, grad_clip=0.3, noise_std=0.1)
    functional = run(backend, ops.sgld_step, x, g, generator=gen(7), **kw)
    target = x.clone() if layout != "strided" else relayout(x.contiguous(), "strided")
    returned = run(backend, ops.sgld_step_, target, g, generator=gen(7), **kw)
    assert returned is target
    torch.testing.assert_close(target, functional, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_explicit_noise_is_parity_mode(backend: str) -> None:
    x, g, n = (values((5, 7), s).float() for s in range(3))
    out = run(backend, ops.sgld_step, x, g, step_size=0.2, noise_std=0.3, noise=n, clamp=None)
    torch.testing.assert_close(out, x + 0.2 * g + 0.3 * n)


@pytest.mark.parametrize("backend", BACKENDS)
def test_switches_off(backend: str) -> None:
    """grad_clip=None, clamp=None, noise_std=0 and zero gradients each leave their part out."""
    x = values((4, 9), 0).float() * 3
    g = values((4, 9), 1).float() * 3
    plain = run(backend, ops.sgld_step, x, g, step_size=1.0, clamp=None)
    torch.testing.assert_close(plain, x + g)
    zero = run(backend, ops.sgld_step, x, torch.zeros_like(x), step_size=1.0, clamp=None)
    torch.testing.assert_close(zero, x, rtol=0, atol=0)
    clipped = run(backend, ops.sgld_step, x, g, step_size=1.0, grad_clip=0.1, clamp=(-1.0, 1.0))
    torch.testing.assert_close(clipped, (x + g.clamp(-0.1, 0.1)).clamp(-1, 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_inf(backend: str) -> None:
    """Defined behaviour: NaN anywhere in x or grad gives NaN (never silently clamped to a
    bound); an infinite gradient is clipped when grad_clip is set, else clamped, else infinite."""
    nan, inf = math.nan, math.inf
    x = torch.tensor([0.0, nan, 0.0, 0.0, 0.0, 0.5])
    g = torch.tensor([nan, 0.0, inf, -inf, inf, 0.0])
    clipped = run(backend, ops.sgld_step, x, g, step_size=1.0, grad_clip=0.25, clamp=(-1.0, 1.0))
    torch.testing.assert_close(
        clipped, torch.tensor([nan, nan, 0.25, -0.25, 0.25, 0.5]), equal_nan=True
    )
    bounded = run(backend, ops.sgld_step, x, g, step_size=1.0, clamp=(-1.0, 1.0))
    torch.testing.assert_close(
        bounded, torch.tensor([nan, nan, 1.0, -1.0, 1.0, 0.5]), equal_nan=True
    )
    free = run(backend, ops.sgld_step, x, g, step_size=1.0, clamp=None)
    torch.testing.assert_close(free, torch.tensor([nan, nan, inf, -inf, inf, 0.5]), equal_nan=True)


def test_bad_input_names_the_argument() -> None:
    x = torch.zeros(2, 3)
    cases = [
        (dict(grad=torch.zeros(3, 2)), ValueError, "grad has shape"),
        (dict(grad=torch.zeros(1, 3)), ValueError, "never broadcast"),
        (dict(grad=torch.zeros(2, 3, dtype=torch.float64)), TypeError, "grad has dtype"),
        (dict(grad=torch.zeros(2, 3, device="meta")), ValueError, "grad is on meta"),
        (dict(grad=torch.zeros(2, 3, dtype=torch.int64)), TypeError, "grad must be float32"),
        (dict(step_size=-0.1), ValueError, "step_size must be >= 0"),
        (dict(noise_std=-1.0), ValueError, "noise_std must be >= 0"),
        (dict(grad_clip=-1.0), ValueError, "grad_clip must be >= 0"),
        (dict(clamp=(1.0, -1.0)), ValueError, "clamp min 1 exceeds clamp max -1"),
        (dict(clamp=0.5), TypeError, "clamp must be None or a"),
        (dict(noise=torch.zeros(2, 2)), ValueError, "noise has shape"),
        (dict(generator=5), TypeError, "generator must be a torch.Generator"),
        (dict(step_size=float("nan")), ValueError, "step_size must not be NaN"),
    ]
    for kw, err, msg in cases:
        args = dict(grad=torch.zeros(2, 3), step_size=0.1) | kw
        with pytest.raises(err, match=msg):
            ops.sgld_step(x, **args)
    with pytest.raises(TypeError, match="x must be float32"):
        ops.sgld_step(torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, 3), step_size=0.1)
