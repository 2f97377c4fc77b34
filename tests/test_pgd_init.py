"""pgd_init: agrees with the reference on every backend, stays inside the ball, fills it."""

from __future__ import annotations

import pytest
import torch
from helpers import LAYOUTS, cpu_backends, dtypes_for, gen, relayout, run, shapes, tol, values
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from ebjdat import ops
from ebjdat.ops.pgd_init import reference

BACKENDS = cpu_backends()


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_matches_float64_reference(backend: str, data: st.DataObject) -> None:
    dtype = data.draw(st.sampled_from(dtypes_for(backend)), "dtype")
    shape = data.draw(shapes(min_dims=1), "shape")
    layout = data.draw(st.sampled_from(LAYOUTS), "layout")
    norm = data.draw(st.sampled_from(["linf", "l2"]), "norm")
    eps = data.draw(st.sampled_from([0.0, 0.03, 0.5]), "eps")
    clamp = data.draw(st.sampled_from([None, (0.0, 1.0)]), "clamp")
    seed = data.draw(st.integers(0, 2**31), "seed")
    x = relayout(values(shape, seed).abs().to(dtype), layout)
    out = run(backend, ops.pgd_init, x, eps=eps, norm=norm, clamp=clamp, generator=gen(seed))
    assert out.dtype == dtype and out.shape == x.shape
    lo, hi = (None, None) if clamp is None else clamp
    ref = reference(x.double(), eps, norm, lo, hi, gen(seed))
    torch.testing.assert_close(out.double(), ref, **tol(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_linf_is_uniform_in_the_box(backend: str) -> None:
    x = torch.full((64, 3, 8, 8), 0.5)
    out = run(backend, ops.pgd_init, x, eps=0.1, norm="linf", generator=gen(0))
    delta = (out - x).flatten().double() / 0.1
    assert delta.abs().max() <= 1.0
    # Kolmogorov-Smirnov against U(-1, 1): a wrong range or a lumpy fill fails.
    assert stats.kstest(delta.numpy(), stats.uniform(-1, 2).cdf).pvalue > 1e-4
    # Adjacent coordinates are uncorrelated.
    assert abs(torch.corrcoef(torch.stack([delta[:-1], delta[1:]]))[0, 1]) < 0.02


@pytest.mark.parametrize("backend", BACKENDS)
def test_l2_is_uniform_in_the_ball(backend: str) -> None:
    """Uniform in a d-ball: (||delta|| / eps)^d ~ U(0, 1) and directions are isotropic. The
    interpreter runs one program per sample, so Triton is checked on fewer samples against the
    reference, which carries the statistics."""
    d, n = 12, 4000
    x = torch.zeros(n, 3, 4)
    if backend == "triton":
        few = run(backend, ops.pgd_init, x[:48], eps=0.5, norm="l2", clamp=None, generator=gen(1))
        torch.testing.assert_close(few, reference(x[:48], 0.5, "l2", None, None, gen(1)))
        backend = "reference"
    out = run(backend, ops.pgd_init, x, eps=0.5, norm="l2", clamp=None, generator=gen(1))
    delta = out.reshape(n, d).double()
    radius = delta.norm(dim=1) / 0.5
    assert radius.max() <= 1.0 + 1e-6
    assert stats.kstest((radius**d).numpy(), "uniform").pvalue > 1e-4
    direction = delta / delta.norm(dim=1, keepdim=True)
    assert direction.mean(0).abs().max() < 0.1  # E[u] = 0
    cov = direction.T @ direction / n  # E[u u^T] = I / d
    torch.testing.assert_close(cov, torch.eye(d, dtype=torch.float64) / d, atol=0.02, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clamped_and_reproducible(backend: str) -> None:
    x = values((16, 3, 4, 4), 0).abs().float()
    a = run(backend, ops.pgd_init, x, eps=0.5, generator=gen(3))
    b = run(backend, ops.pgd_init, x, eps=0.5, generator=gen(3))
    c = run(backend, ops.pgd_init, x, eps=0.5, generator=gen(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_bad_input_names_the_argument() -> None:
    with pytest.raises(ValueError, match="eps must be >= 0"):
        ops.pgd_init(torch.zeros(2, 3), eps=-1.0)
    with pytest.raises(ValueError, match="norm must be"):
        ops.pgd_init(torch.zeros(2, 3), eps=0.1, norm="L2")
    with pytest.raises(TypeError, match="x must be float32"):
        ops.pgd_init(torch.zeros(2, 3, dtype=torch.uint8), eps=0.1)
    with pytest.raises(ValueError, match="batch dimension"):
        ops.pgd_init(torch.tensor(0.5), eps=0.1)
