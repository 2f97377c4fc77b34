"""pgd_step on every CPU-reachable backend against the float64 reference and known answers."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import LAYOUTS, cpu_backends, dtypes_for, relayout, run, shapes, tol, values
from hypothesis import given
from hypothesis import strategies as st

from ebjdat import ops
from ebjdat.ops.pgd_step import reference

BACKENDS = cpu_backends()


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_matches_float64_reference(backend: str, data: st.DataObject) -> None:
    dtype = data.draw(st.sampled_from(dtypes_for(backend)), "dtype")
    shape = data.draw(shapes(min_dims=1), "shape")
    layouts = [data.draw(st.sampled_from(LAYOUTS), f"layout{i}") for i in range(3)]
    norm = data.draw(st.sampled_from(["linf", "l2"]), "norm")
    eps = data.draw(st.sampled_from([None, 0.0, 0.03, 0.5]), "eps")
    step = data.draw(st.sampled_from([0.0, 0.01, 0.25]), "step")
    clamp = data.draw(st.sampled_from([None, (0.0, 1.0), (-1.0, 1.0)]), "clamp")
    seed = data.draw(st.integers(0, 2**31), "seed")
    x_orig = values(shape, seed).abs()
    x_adv = (x_orig + 0.05 * values(shape, seed + 1)).to(dtype)
    x_orig = x_orig.to(dtype)
    # Keep gradients away from 0 in low precision so sign() is the same in every dtype.
    g = values(shape, seed + 2).to(dtype)
    tensors = [relayout(t, lay) for t, lay in zip((x_adv, g, x_orig), layouts, strict=True)]
    out = run(backend, ops.pgd_step, *tensors, step_size=step, eps=eps, norm=norm, clamp=clamp)
    assert out.dtype == dtype and out.shape == x_adv.shape
    lo, hi = (None, None) if clamp is None else clamp
    ref = reference(*(t.double() for t in tensors), step, eps, norm, lo, hi)
    torch.testing.assert_close(out.double(), ref, **tol(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_linf_known_answer(backend: str) -> None:
    x = torch.tensor([[0.5, 0.5, 0.5, 0.98, 0.02]])
    xa = torch.tensor([[0.5, 0.55, 0.45, 0.98, 0.02]])
    g = torch.tensor([[1.0, 1.0, -1.0, 1.0, -2.0]])
    out = run(backend, ops.pgd_step, xa, g, x, step_size=0.04, eps=0.06, norm="linf")
    torch.testing.assert_close(out, torch.tensor([[0.54, 0.56, 0.44, 1.0, 0.0]]))
    free = run(backend, ops.pgd_step, xa, g, x, step_size=0.04, eps=None, norm="linf", clamp=None)
    torch.testing.assert_close(free, torch.tensor([[0.54, 0.59, 0.41, 1.02, -0.02]]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_l2_known_answer(backend: str) -> None:
    """A 3-4-5 gradient steps 0.5 along (0.6, 0.8); a delta of norm 1 projects to norm eps."""
    x = torch.zeros(2, 2)
    g = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    out = run(backend, ops.pgd_step, x, g, x, step_size=0.5, eps=None, norm="l2", clamp=None)
    torch.testing.assert_close(out, torch.tensor([[0.3, 0.4], [0.0, 0.0]]))  # zero grad: no step
    xa = torch.tensor([[0.6, 0.8], [0.1, 0.0]])
    proj = run(
        backend,
        ops.pgd_step,
        xa,
        torch.zeros(2, 2),
        x,
        step_size=0.5,
        eps=0.5,
        norm="l2",
        clamp=None,
    )
    torch.testing.assert_close(proj, torch.tensor([[0.3, 0.4], [0.1, 0.0]]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_result_inside_ball(backend: str, norm: str) -> None:
    x = values((8, 3, 5, 5), 0).abs()
    xa = (x + 0.3 * values(x.shape, 1)).clamp(0, 1)
    g = values(x.shape, 2)
    out = run(
        backend, ops.pgd_step, xa.float(), g.float(), x.float(), step_size=0.2, eps=0.1, norm=norm
    )
    delta = (out.double() - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= 0.1 + 1e-6).all()
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates(backend: str) -> None:
    nan = math.nan
    x = torch.tensor([[0.5, 0.5, nan]])
    xa = torch.tensor([[0.5, nan, 0.5]])
    g = torch.tensor([[nan, 1.0, 1.0]])
    for norm in ("linf", "l2"):
        out = run(backend, ops.pgd_step, xa, g, x, step_size=0.1, eps=0.2, norm=norm)
        assert torch.isnan(out).all(), (norm, out)


def test_bad_input_names_the_argument() -> None:
    x = torch.zeros(2, 3)
    cases = [
        (dict(norm="l1"), ValueError, "norm must be 'linf' or 'l2'"),
        (dict(eps=-0.1), ValueError, "eps must be >= 0"),
        (dict(step_size=-1.0), ValueError, "step_size must be >= 0"),
        (dict(grad=torch.zeros(2, 1)), ValueError, "grad has shape"),
        (dict(x_orig=torch.zeros(2, 3, dtype=torch.float16)), TypeError, "x_orig has dtype"),
        (dict(x_orig=torch.zeros(2, 3, device="meta")), ValueError, "x_orig is on meta"),
    ]
    for kw, err, msg in cases:
        args = dict(grad=torch.zeros(2, 3), x_orig=x, step_size=0.1, eps=0.1) | kw
        with pytest.raises(err, match=msg):
            ops.pgd_step(x, args.pop("grad"), args.pop("x_orig"), **args)
    with pytest.raises(ValueError, match="batch dimension"):
        ops.pgd_step(
            torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0), step_size=0.1, eps=0.1
        )
    with pytest.raises(TypeError, match="x_adv must be float32"):
        ops.pgd_step(torch.zeros(2, dtype=torch.int64), x[0, :2], x[0, :2], step_size=1, eps=1)
