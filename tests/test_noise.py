"""The in-kernel Gaussian noise: distribution, reproducibility, independence, and the same
numbers from every backend for the same (seed, offset)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import NATIVE_CPU, TRITON_CPU, cpu_backends, gen, run
from scipy import stats

from ebjdat import ops
from ebjdat.ops import _philox


def draw(backend: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pure noise: x = 0, grad = 0, noise_std = 1, no clamp."""
    z = torch.zeros(n)
    return run(
        backend, ops.sgld_step, z, z, step_size=0.0, noise_std=1.0, clamp=None, generator=generator
    )


def sizes(backend: str) -> int:
    return 1 << 18 if backend == "triton" else 1 << 20


def test_philox_known_answers() -> None:
    """Random123's published Philox4x32-10 known-answer vectors."""
    cases = [
        ([0, 0, 0, 0], (0, 0), [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        (
            [0xFFFFFFFF] * 4,
            (0xFFFFFFFF, 0xFFFFFFFF),
            [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD],
        ),
        (
            [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
            (0xA4093822, 0x299F31D0),
            [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
        ),
    ]
    for counter, key, want in cases:
        words = _philox.philox_rounds([torch.tensor([c]) for c in counter], key)
        assert [int(w) for w in words] == want


@pytest.mark.skipif(not TRITON_CPU, reason="needs triton with TRITON_INTERPRET=1")
def test_reference_generator_is_tritons_randn4x() -> None:
    """Our PyTorch Philox + Box-Muller reproduces tl.randn4x itself, counters above 2^32 too."""
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(out_ptr, seed, base, BLOCK: tl.constexpr):
        q = tl.arange(0, BLOCK)
        n1, n2, n3, n4 = tl.randn4x(seed, base + q.to(tl.int64))
        tl.store(out_ptr + 4 * q, n1)
        tl.store(out_ptr + 4 * q + 1, n2)
        tl.store(out_ptr + 4 * q + 2, n3)
        tl.store(out_ptr + 4 * q + 3, n4)

    for seed, base in [(0, 0), (123456789, 7), (2**62 + 12345, 2**32 - 3)]:
        out = torch.empty(4 * 64)
        kernel[(1,)](out, seed, base, BLOCK=64)
        ref = _philox.normals(seed, base, out.numel(), torch.device("cpu"))
        torch.testing.assert_close(ref, out, atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("backend", cpu_backends())
def test_distribution(backend: str) -> None:
    n = sizes(backend)
    x = draw(backend, n, gen(0)).double()
    se = 1 / math.sqrt(n)
    assert abs(x.mean()) < 5 * se
    assert abs(x.std() - 1) < 5 * se / math.sqrt(2)
    for k in (1.0, 2.0, 3.0):
        p = 2 * stats.norm.sf(k)
        observed = (x.abs() > k).double().mean().item()
        assert abs(observed - p) < 5 * math.sqrt(p * (1 - p) / n), (k, observed, p)
    assert stats.kstest(x[:200_000].numpy(), "norm").pvalue > 1e-4
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("backend", cpu_backends())
def test_reproducible_and_fresh(backend: str) -> None:
    torch.manual_seed(1234)
    a = draw(backend, 4096)
    b = draw(backend, 4096)
    torch.manual_seed(1234)
    c = draw(backend, 4096)
    assert torch.equal(a, c), "torch.manual_seed must reproduce the noise"
    assert not torch.equal(a, b), "successive calls must draw fresh noise"
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1]) < 0.1


@pytest.mark.parametrize("backend", cpu_backends())
def test_independent_across_elements(backend: str) -> None:
    """No correlation at the lags where the scheme could leak: the Box-Muller pair (1), the
    lanes of one Philox block (2, 3), neighbouring blocks (4, 8) and the 32-wide CPU chunk."""
    x = draw(backend, sizes(backend), gen(5)).double()
    bound = 5 / math.sqrt(x.numel())
    for lag in (1, 2, 3, 4, 8, 32):
        a, b = x[:-lag], x[lag:]
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1]) < bound, lag
        # Dependence that correlation misses (e.g. a shared Box-Muller radius) shows in squares.
        assert abs(torch.corrcoef(torch.stack([a * a, b * b]))[0, 1]) < bound, lag


@pytest.mark.skipif(not (NATIVE_CPU and TRITON_CPU), reason="needs the C++ kernel and Triton")
def test_same_seed_same_noise_on_cpu_kernel_and_triton() -> None:
    n = 10_000 + 3  # not a multiple of the block or chunk sizes
    cpu = draw("cpu", n, gen(42))
    tri = draw("triton", n, gen(42))
    ref = draw("reference", n, gen(42))
    torch.testing.assert_close(cpu, tri, atol=4e-6, rtol=4e-6)  # libm ulps in log/sin/cos
    torch.testing.assert_close(cpu, ref, atol=4e-6, rtol=4e-6)
    assert (cpu == tri).double().mean() > 0.5


@pytest.mark.parametrize("backend", cpu_backends())
def test_noise_scales_and_adds(backend: str) -> None:
    """noise_std scales the same draw: x + step*g + s*n, with n fixed by the generator."""
    x = torch.linspace(-0.5, 0.5, 999)
    n = draw(backend, 999, gen(9))
    out = run(
        backend,
        ops.sgld_step,
        x,
        torch.ones_like(x),
        step_size=0.1,
        noise_std=0.01,
        clamp=None,
        generator=gen(9),
    )
    torch.testing.assert_close(out, x + 0.1 + 0.01 * n)
