"""Safety properties of the ops on every CPU-reachable backend, each against autograd's own
behaviour or an independent float64 computation:

1. autograd: the in-place update bumps versions and refuses tracked tensors, the functional step
   ops are not differentiable (outputs never require grad, no warning), energy_head is;
2. memory overlap of the in-place write (internal, partial; full overlap is fine);
3. energy_head over its whole temperature range, and the range check;
4. L2 norms of pgd_step at extreme gradient and delta scales.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pytest
import torch
from helpers import NATIVE_CPU, TRITON_CPU, cpu_backends, gen, run, values

from ebjdat import ops
from ebjdat.ops.pgd_step import reference as pgd_reference

BACKENDS = cpu_backends()


# -- entries into the in-place op: the public function per backend, and the dispatcher's own -----


def _public(backend: str) -> Callable[..., None]:
    def call(x: torch.Tensor, grad: torch.Tensor, noise: torch.Tensor | None = None) -> None:
        std = 0.0 if noise is None else 0.5
        run(backend, ops.sgld_step_, x, grad, step_size=0.1, noise_std=std, clamp=None, noise=noise)

    return call


def _packet(packet) -> Callable[..., None]:  # noqa: ANN001
    def call(x: torch.Tensor, grad: torch.Tensor, noise: torch.Tensor | None = None) -> None:
        packet(x, grad, 0.1, None, 0.0 if noise is None else 0.5, None, None, noise, None)

    return call


INPLACE = {f"ops.sgld_step_[{b}]": _public(b) for b in BACKENDS}
if NATIVE_CPU:
    INPLACE["torch.ops.ebjdat.sgld_step_"] = _packet(torch.ops.ebjdat.sgld_step_)
if TRITON_CPU:
    INPLACE["torch.ops.ebjdat.sgld_step__triton"] = _packet(torch.ops.ebjdat.sgld_step__triton)


def expected_step(x: torch.Tensor, grad: torch.Tensor, noise: torch.Tensor | None = None):  # noqa: ANN201
    out = x.double() + 0.1 * grad.double()
    return out if noise is None else out + 0.5 * noise.double()


# -- 1. autograd ----------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", list(INPLACE))
def test_inplace_update_bumps_the_version_counter(entry: str) -> None:
    """The sequence that once gave a silently wrong gradient, run as it must be (grad mode off):
    autograd now refuses the stale backward exactly as it does after torch's own in-place op."""
    a = torch.rand(3, requires_grad=True)
    b = a * 2
    c = (b**2).sum()
    version = b._version
    with torch.no_grad():
        INPLACE[entry](b, torch.ones(3))
    assert b._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        c.backward()
    # The same sequence with torch's own in-place op raises the same error.
    b2 = a * 2
    c2 = (b2**2).sum()
    with torch.no_grad():
        b2.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        c2.backward()


@pytest.mark.parametrize("entry", list(INPLACE))
def test_inplace_update_refuses_a_tracked_tensor(entry: str) -> None:
    leaf = torch.rand(4, requires_grad=True)
    before = leaf.detach().clone()
    with pytest.raises(
        RuntimeError, match="a leaf Variable that requires grad is being used in an in-place"
    ):
        INPLACE[entry](leaf, torch.ones(4))
    # torch's own wording, for comparison
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad"):
        leaf.add_(1.0)
    nonleaf = leaf * 2
    version = nonleaf._version
    with pytest.raises(RuntimeError, match=r"not differentiable.*torch\.no_grad\(\)"):
        INPLACE[entry](nonleaf, torch.ones(4))
    assert torch.equal(leaf.detach(), before) and nonleaf._version == version
    torch.testing.assert_close(nonleaf.detach(), before * 2)


@pytest.mark.parametrize("entry", list(INPLACE))
def test_inplace_update_is_an_optimizer_step_under_no_grad(entry: str) -> None:
    w = torch.rand(5, requires_grad=True)
    g = torch.rand(5)
    want = expected_step(w.detach(), g)
    version = w._version
    with torch.no_grad():
        INPLACE[entry](w, g)
    assert w.requires_grad and w.is_leaf and w.grad_fn is None and w._version > version
    torch.testing.assert_close(w.detach().double(), want)
    (w**2).sum().backward()  # a fresh graph through the updated leaf is fine
    torch.testing.assert_close(w.grad, 2 * w.detach())
    # Detached views share the version counter, so saved values are still protected.
    saved = w * 3
    loss = (saved**2).sum()
    INPLACE[entry](saved.detach(), g)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("entry", list(INPLACE))
def test_inplace_update_in_inference_mode(entry: str) -> None:
    x = torch.zeros(6)
    g = values((6,), 1).float()
    with torch.inference_mode():
        INPLACE[entry](x, g)
        t = torch.zeros(6)
        INPLACE[entry](t, g)
    torch.testing.assert_close(x.double(), expected_step(torch.zeros(6), g))
    torch.testing.assert_close(t, x)


def _warnings_are_errors() -> None:
    """Inside catch_warnings: every warning of ours fails the test; the Triton interpreter's own
    are let through: it evaluates masked-off lanes (numpy RuntimeWarnings), and triton 3.6's
    reads one-element arrays as scalars (a numpy DeprecationWarning)."""
    warnings.simplefilter("error")
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    warnings.filterwarnings(
        "ignore", message="Conversion of an array with ndim > 0", category=DeprecationWarning
    )


def _functional_calls(backend: str) -> dict[str, Callable[..., torch.Tensor]]:
    def sgld(x, g):  # noqa: ANN001, ANN202
        return run(backend, ops.sgld_step, x, g, step_size=0.1, noise_std=0.2, generator=gen(0))

    def pgd(norm: str):  # noqa: ANN202
        return lambda x, g: run(
            backend, ops.pgd_step, x, g, x.detach() * 0.9, step_size=0.1, eps=0.05, norm=norm
        )

    def init(norm: str):  # noqa: ANN202
        return lambda x, g: run(backend, ops.pgd_init, x, eps=0.1, norm=norm, generator=gen(1))

    return {
        "sgld_step": sgld,
        "pgd_step-linf": pgd("linf"),
        "pgd_step-l2": pgd("l2"),
        "pgd_init-linf": init("linf"),
        "pgd_init-l2": init("l2"),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "op", ["sgld_step", "pgd_step-linf", "pgd_step-l2", "pgd_init-linf", "pgd_init-l2"]
)
def test_functional_ops_are_not_differentiable(backend: str, op: str) -> None:
    """Outputs never require grad (even from inputs that do), carry no grad_fn, equal the
    detached computation, and no warning is emitted."""
    fn = _functional_calls(backend)[op]
    x0 = values((3, 2, 4), 0).float().abs()
    g0 = values((3, 2, 4), 1).float()
    want = fn(x0, g0)
    leaf_x, leaf_g = x0.clone().requires_grad_(), g0.clone().requires_grad_()
    with warnings.catch_warnings():
        _warnings_are_errors()
        for x, g in ((leaf_x, leaf_g), (leaf_x * 1, leaf_g * 1)):
            out = fn(x, g)
            assert not out.requires_grad and out.grad_fn is None
            torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert leaf_x.grad is None and leaf_g.grad is None


@pytest.mark.parametrize(
    "packet",
    [
        p
        for p, ok in (
            ("sgld_step", NATIVE_CPU),
            ("pgd_step", NATIVE_CPU),
            ("pgd_init", NATIVE_CPU),
            ("sgld_step_triton", TRITON_CPU),
            ("pgd_step_triton", TRITON_CPU),
            ("pgd_init_triton", TRITON_CPU),
        )
        if ok
    ],
)
def test_direct_functional_calls_are_not_differentiable(packet: str) -> None:
    op = getattr(torch.ops.ebjdat, packet)
    x = values((2, 5), 0).float().abs().requires_grad_()
    g = values((2, 5), 1).float().requires_grad_()
    with warnings.catch_warnings():
        _warnings_are_errors()
        if packet.startswith("sgld"):
            out = op(x, g, 0.1, None, 0.0, None, None, None, None)
        elif packet.startswith("pgd_step"):
            out = op(x, g, x, 0.1, 0.05, "l2", 0.0, 1.0)
        else:
            out = op(x, 0.1, "l2", 0.0, 1.0, None)
    assert not out.requires_grad and out.grad_fn is None


def _energy_weighted(out: tuple) -> torch.Tensor:
    return out[0].sum() - 0.7 * out[1].sum() + 0.5 * out[2].sum()


@pytest.mark.parametrize("backend", BACKENDS)
def test_energy_head_stays_differentiable(backend: str) -> None:
    """Gradients of all three outputs agree with float64 autograd through torch's own ops; a
    double backward either works (reference) or raises (fused kernels), never silently zero."""
    base = (values((5, 7), 3) * 4).float()
    y = torch.tensor([0, 6, 3, 3, 1])
    logits = base.clone().requires_grad_()
    out = run(backend, ops.energy_head, logits, y, temperature=0.7)
    assert all(t.requires_grad for t in out)
    _energy_weighted(out).backward()
    l64 = base.double().requires_grad_()
    lse = torch.logsumexp(l64, 1)
    ly = l64.gather(1, y[:, None]).squeeze(1)
    _energy_weighted((-0.7 * torch.logsumexp(l64 / 0.7, 1), -ly, lse - ly)).backward()
    torch.testing.assert_close(logits.grad.double(), l64.grad, rtol=1e-5, atol=1e-6)

    fresh = base.clone().requires_grad_()
    energy = run(backend, ops.energy_head, fresh, temperature=0.7).energy
    (grad,) = torch.autograd.grad(energy.sum(), fresh, create_graph=True)
    assert grad.requires_grad
    r64 = base.double().requires_grad_()
    (g64,) = torch.autograd.grad(
        (-0.7 * torch.logsumexp(r64 / 0.7, 1)).sum(), r64, create_graph=True
    )
    (h64,) = torch.autograd.grad((g64**2).sum(), r64)
    if backend == "reference":
        (h,) = torch.autograd.grad((grad**2).sum(), fresh)
        torch.testing.assert_close(h.double(), h64, rtol=1e-4, atol=1e-6)
    else:
        with pytest.raises(RuntimeError, match="double backward"):
            torch.autograd.grad((grad**2).sum(), fresh)
        with pytest.raises(RuntimeError, match="double backward"):
            (grad**2).sum().backward()


# -- 2. memory overlap of the in-place write ------------------------------------------------------


def _shifted() -> tuple:
    buf = values((41,), 0).float()
    return buf[:-1], buf[1:], None


def _noise_shifted() -> tuple:
    buf = values((41,), 0).float()
    return buf[:-1], values((40,), 1).float(), buf[1:]


def _transposed() -> tuple:
    m = values((5, 5), 0).float()
    return m, m.t(), None


def _strided_sharing() -> tuple:
    buf = values((30,), 0).float()
    return buf[0:20:2], buf[4:24:2], None


def _expanded() -> tuple:
    return torch.zeros(1, 6).expand(3, 6), torch.zeros(3, 6), None


def _self_overlapping() -> tuple:
    base = values((9,), 0).float()
    return base.as_strided((3, 3), (1, 1)), torch.zeros(3, 3), None


OVERLAPS = {
    "grad shifted by one": (_shifted, "grad partially overlaps x"),
    "noise shifted by one": (_noise_shifted, "noise partially overlaps x"),
    "grad is x transposed": (_transposed, "grad partially overlaps x"),
    "strided views sharing elements": (_strided_sharing, "grad partially overlaps x"),
    "expanded x": (_expanded, "x has elements that share memory"),
    "self-overlapping x": (_self_overlapping, "x has elements that share memory"),
}


@pytest.mark.parametrize("entry", list(INPLACE))
@pytest.mark.parametrize("case", list(OVERLAPS))
def test_overlapping_inplace_write_is_refused(entry: str, case: str) -> None:
    make, message = OVERLAPS[case]
    x, grad, noise = make()
    before = x.clone()
    with pytest.raises(ValueError, match=message):
        INPLACE[entry](x, grad, noise)
    assert torch.equal(x, before)  # refused before anything was written


@pytest.mark.parametrize("entry", list(INPLACE))
def test_large_shifted_views_raise_instead_of_racing(entry: str) -> None:
    buf = torch.rand(2_000_001)
    before = buf.clone()
    with pytest.raises(ValueError, match="grad partially overlaps x"):
        INPLACE[entry](buf[:-1], buf[1:])
    assert torch.equal(buf, before)


def _same_tensor() -> tuple:
    x = values((4, 6), 0).float()
    return x, x, None


def _same_view_twice() -> tuple:
    buf = values((20,), 0).float()
    return buf[3:13].view(2, 5), buf[3:13].view(2, 5), None


def _disjoint_halves() -> tuple:
    buf = values((20,), 0).float()
    return buf[:10], buf[10:], buf[10:]


def _interleaved() -> tuple:
    buf = values((20,), 0).float()
    return buf[0::2], buf[1::2], None


def _distinct_as_strided() -> tuple:
    # Elements 0, 3, 2, 5, 4, 7: the strides alone cannot tell that they are distinct.
    base = values((8,), 0).float()
    return base.as_strided((3, 2), (2, 3)), values((3, 2), 1).float(), None


ALLOWED = {
    "grad is x": _same_tensor,
    "grad is the same view": _same_view_twice,
    "disjoint halves": _disjoint_halves,
    "interleaved views": _interleaved,
    "distinct as_strided x": _distinct_as_strided,
}


@pytest.mark.parametrize("entry", list(INPLACE))
@pytest.mark.parametrize("case", list(ALLOWED))
def test_full_or_no_overlap_is_fine(entry: str, case: str) -> None:
    x, grad, noise = ALLOWED[case]()
    want = expected_step(x, grad, noise)  # every element reads only itself (or other memory)
    INPLACE[entry](x, grad, noise)
    torch.testing.assert_close(x.double(), want, rtol=1e-6, atol=1e-6)


# -- 3. energy_head over its whole temperature range ----------------------------------------------

TEMPERATURES = [1e-30, 1e-12, 1e-9, 1e-6, 1e-3, 0.1, 1.0, 10.0, 1e3, 1e6, 1e30]


def _float64_energy(logits: torch.Tensor, y: torch.Tensor, t: float) -> tuple:
    lse = torch.logsumexp(logits, 1)
    ly = logits.gather(1, y[:, None]).squeeze(1)
    return -t * torch.logsumexp(logits / t, 1), -ly, lse - ly


@pytest.mark.parametrize("backend", BACKENDS)
def test_energy_head_matches_float64_over_the_temperature_range(backend: str) -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 10, generator=g) * 3
    y = torch.randint(0, 10, (64,), generator=g)
    dtypes = [torch.float32] + ([torch.float64] if backend != "triton" else [])
    for dtype in dtypes:
        tight = dtype == torch.float64
        for t in TEMPERATURES:
            logits = base.to(dtype).clone().requires_grad_()
            out = run(backend, ops.energy_head, logits, y, temperature=t)
            l64 = base.double().requires_grad_()
            ref = _float64_energy(l64, y, t)
            # Relative to the value, since |energy| grows like T * log(K) for a large T.
            fwd = {"rtol": 1e-12 if tight else 2e-6, "atol": 1e-12 if tight else 1e-5}
            for got, want in zip(out, ref, strict=True):
                assert torch.isfinite(got).all(), (dtype, t)
                torch.testing.assert_close(got.double(), want.detach(), **fwd, msg=f"T={t:g}")
            _energy_weighted(out).backward()
            _energy_weighted(ref).backward()
            bwd = {"rtol": 1e-10 if tight else 1e-5, "atol": 1e-10 if tight else 1e-5}
            torch.testing.assert_close(logits.grad.double(), l64.grad, **bwd, msg=f"T={t:g}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "temperature", [0.0, -1.0, math.nan, math.inf, -math.inf, 1e-31, 1e31, 1e-300]
)
def test_temperature_out_of_range_is_rejected(backend: str, temperature: float) -> None:
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="temperature"):
        run(backend, ops.energy_head, logits, temperature=temperature)


ENERGY_PACKETS = (("energy_head", NATIVE_CPU), ("energy_head_triton", TRITON_CPU))


@pytest.mark.parametrize("packet", [p for p, ok in ENERGY_PACKETS if ok])
@pytest.mark.parametrize("temperature", [0.0, math.nan, math.inf, 1e31])
def test_direct_calls_check_the_temperature(packet: str, temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        getattr(torch.ops.ebjdat, packet)(torch.zeros(2, 3), None, temperature)


# -- 4. L2 norms of pgd_step at extreme scales -----------------------------------------------------

SCALES = [1e-40, 1e-30, 1e-13, 1e-5, 1.0, 1e19, 1e30, 3e38]


# The Triton interpreter sums in numpy, which warns when the unscaled sum overflows (the kernel
# then rescales: that is the point of the test).
_OVERFLOW_OK = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


def _unit_rows(g: torch.Tensor) -> torch.Tensor:
    """g / ||g|| per sample in float64, whose range holds the squares of any float32."""
    g64 = g.double().flatten(1)
    n = torch.linalg.vector_norm(g64, dim=1, keepdim=True)
    return torch.where(n > 0, g64 / n, 0.0).view(g.shape)


def _gradients(scales: list[float], seed: int = 0) -> torch.Tensor:
    """One sample per scale, each with max |g| = scale (0: an all-zero gradient)."""
    base = values((len(scales), 3, 4, 4), seed)
    base = base / base.flatten(1).abs().amax(1).view(-1, 1, 1, 1)
    return (base * torch.tensor(scales, dtype=torch.float64).view(-1, 1, 1, 1)).float()


@_OVERFLOW_OK
@pytest.mark.parametrize("backend", BACKENDS)
def test_l2_step_is_a_unit_direction_at_every_scale(backend: str) -> None:
    x_adv = values((1, 3, 4, 4), 5).float().abs().expand(len(SCALES), -1, -1, -1).contiguous()
    for g in (_gradients(SCALES), _gradients(SCALES[::-1], seed=1)):  # one batch, mixed scales
        out = run(
            backend, ops.pgd_step, x_adv, g, x_adv, step_size=0.5, eps=None, norm="l2", clamp=None
        )
        want = x_adv.double() + 0.5 * _unit_rows(g)
        torch.testing.assert_close(out.double(), want, rtol=0, atol=2e-6)
        step = torch.linalg.vector_norm((out.double() - x_adv.double()).flatten(1), dim=1)
        torch.testing.assert_close(step, torch.full_like(step, 0.5), rtol=0, atol=2e-6)
        ref = pgd_reference(x_adv.double(), g.double(), x_adv.double(), 0.5, None, "l2", None, None)
        torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
def test_l2_step_at_float64_extremes(backend: str) -> None:
    scales = [5e-324, 1e-300, 1e-200, 1.0, 1e200, 1e300, 1.7e308]
    base = _gradients([1.0] * len(scales)).double()  # max |base| = 1 in every sample
    g = base * torch.tensor(scales, dtype=torch.float64).view(-1, 1, 1, 1)
    x = torch.zeros_like(g)
    out = run(backend, ops.pgd_step, x, g, x, step_size=1.0, eps=None, norm="l2", clamp=None)
    # Each sample's direction is its base pattern's; the subnormal one is rounded to multiples
    # of 5e-324, so its pattern is g / 5e-324 itself.
    base[0] = g[0] / 5e-324
    torch.testing.assert_close(out, _unit_rows(base), rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_l2_zero_gradient_takes_no_step(backend: str) -> None:
    g = _gradients([0.0, 1e-30, 0.0, 1e30])
    x_adv = values(g.shape, 2).float().abs()
    x_orig = (x_adv + 0.01).contiguous()
    for eps in (None, 1.0):
        out = run(
            backend, ops.pgd_step, x_adv, g, x_orig, step_size=0.5, eps=eps, norm="l2", clamp=None
        )
        for i in (0, 2):
            # x_orig + (x_adv - x_orig) rounds like the projection's formula
            want = x_adv[i] if eps is None else x_orig[i] + (x_adv[i] - x_orig[i])
            assert torch.equal(out[i], want), (eps, i)
        moved = torch.linalg.vector_norm((out[1::2] - x_adv[1::2]).double().flatten(1), dim=1)
        assert (moved > 0.49).all() if eps is None else torch.isfinite(moved).all()


@_OVERFLOW_OK
@pytest.mark.parametrize("backend", BACKENDS)
def test_l2_projection_at_extreme_scales(backend: str) -> None:
    """With grad = 0 the output is x_orig + the projected delta: delta from 1e-35 to 3e38, eps
    from 1e-36 to 1, against float64."""
    cases = [(1e30, 1.0), (3e38, 1.0), (1e-35, 1e-36), (1e-35, 1.0), (1.0, 0.5), (1e19, 1e19)]
    delta = _gradients([c[0] for c in cases], seed=3)
    x_orig = torch.zeros_like(delta)
    grad = torch.zeros_like(delta)
    for i, (_, eps) in enumerate(cases):
        out = run(
            backend,
            ops.pgd_step,
            delta[i : i + 1],
            grad[:1],
            x_orig[:1],
            step_size=0.1,
            eps=eps,
            norm="l2",
            clamp=None,
        )[0].double()
        d64 = delta[i].double()
        n = torch.linalg.vector_norm(d64)
        want = d64 * min(1.0, eps / n.item())
        torch.testing.assert_close(out, want, rtol=2e-6, atol=0, msg=f"case {cases[i]}")
        assert torch.linalg.vector_norm(out) <= eps * (1 + 2e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_l2_non_finite_gradient_makes_only_its_sample_nan(backend: str) -> None:
    g = _gradients([1.0, 1.0, 1.0])
    g[0, 0, 0, 0] = math.inf
    g[2, 1, 2, 3] = math.nan
    x = torch.full_like(g, 0.5)
    out = run(backend, ops.pgd_step, x, g, x, step_size=0.1, eps=0.2, norm="l2")
    assert torch.isnan(out[0]).all() and torch.isnan(out[2]).all()
    torch.testing.assert_close(out[1].double(), (0.5 + 0.1 * _unit_rows(g[1:2])[0]).clamp(0, 1))
