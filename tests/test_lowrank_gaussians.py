"""Class Gaussians that scale to 64 px: the low-rank-plus-diagonal covariance, checked against
numpy references, its exactness at full rank, its memory at 3x64x64, the automatic choice and
its logged reason, both draw paths and weights_only round trips."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from ebjdat.sampling import ClassGaussians, ReplayBuffer, fit_class_gaussians
from ebjdat.sampling import gaussians as gmod

SHAPE = (3, 2, 4)  # D = 24
D = 24


def structured(n_per_class: int, classes: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Images of a few strong directions plus weak isotropic noise, small enough never to be
    clipped: a covariance whose top directions are well separated from the rest."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for k in range(classes):
        scale = torch.tensor([0.04, 0.025, 0.015], dtype=torch.float64)
        basis = torch.randn(D, 3, generator=g, dtype=torch.float64) * scale
        z = torch.randn(n_per_class, 3, generator=g, dtype=torch.float64)
        noise = 0.003 * torch.randn(n_per_class, D, generator=g, dtype=torch.float64)
        xs.append(0.1 * (k - 0.5) + z @ basis.T + noise)
        ys.append(torch.full((n_per_class,), k))
    return torch.cat(xs).reshape(-1, *SHAPE), torch.cat(ys)


def numpy_reference(x: torch.Tensor, labels: torch.Tensor, k: int, rank: int, jitter: float):
    """Top-`rank` eigenpairs of the biased class covariance (numpy), plus the per-pixel variance
    they leave out and the jitter on the diagonal: the covariance the low-rank kind should hold."""
    xk = x[labels == k].reshape(-1, D).numpy()
    sub = xk - xk.mean(0)
    cov = sub.T @ sub / len(xk)
    lam, vec = np.linalg.eigh(cov)
    lam, vec = lam[::-1][:rank], vec[:, ::-1][:, :rank]
    low = (vec * lam) @ vec.T
    return low + np.diag(np.clip(np.diag(cov) - np.diag(low), 0, None) + jitter)


def test_lowrank_matches_the_numpy_reference_and_its_samples() -> None:
    x, labels = structured(400)
    gs = ClassGaussians().fit(
        x, labels, 2, covariance="lowrank", rank=3, dtype=torch.float64, log=lambda m: None
    )
    assert gs.covariance == "lowrank" and gs.rank == 3 and gs.scale_tril is None
    assert gs.factor.shape == (2, D, 3) and gs.diag_std.shape == (2, D)
    g = torch.Generator().manual_seed(1)
    n = 200_000
    classes = torch.arange(n) % 2
    s = gs.sample(n, classes=classes, generator=g).reshape(n, D)
    assert s.abs().max() < 1  # nothing clipped: the sample covariance is the model's
    for k in range(2):
        want = torch.from_numpy(numpy_reference(x, labels, k, 3, 1e-4).copy())
        torch.testing.assert_close(gs.covariance_matrix(k), want, atol=1e-10, rtol=0)
        mean = x[labels == k].reshape(-1, D).mean(0)
        torch.testing.assert_close(gs.means[k], mean, atol=1e-12, rtol=0)
        sk = s[classes == k]
        torch.testing.assert_close(sk.mean(0), mean, atol=1.5e-3, rtol=0)
        torch.testing.assert_close(torch.cov(sk.T), want, atol=6e-4, rtol=0)


@pytest.mark.parametrize("n_per_class", [10, 60])  # fewer images than D (Gram route), more
def test_lowrank_at_full_rank_is_the_full_covariance(n_per_class: int) -> None:
    x, labels = structured(n_per_class)
    full = ClassGaussians().fit(x, labels, 2, dtype=torch.float64, covariance="full")
    low = ClassGaussians().fit(x, labels, 2, dtype=torch.float64, covariance="lowrank", rank=D)
    assert full.covariance == "full" and low.covariance == "lowrank"
    assert low.rank == min(D, n_per_class)
    torch.testing.assert_close(low.means, full.means, atol=0, rtol=0)
    for k in range(2):
        torch.testing.assert_close(
            low.covariance_matrix(k), full.covariance_matrix(k), atol=1e-12, rtol=0
        )


def test_randomized_directions_agree_with_the_exact_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above EXACT_EIGH_MAX_DIM the top directions come from a seeded randomized range finder;
    with a clear spectral gap it recovers the exact rank-3 part, and leaves the global RNG be."""
    x, labels = structured(300)
    exact = ClassGaussians().fit(x, labels, 2, covariance="lowrank", rank=3, dtype=torch.float64)
    monkeypatch.setattr(gmod, "EXACT_EIGH_MAX_DIM", 4)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    approx = ClassGaussians().fit(x, labels, 2, covariance="lowrank", rank=3, dtype=torch.float64)
    assert torch.equal(torch.get_rng_state(), before)
    for k in range(2):
        torch.testing.assert_close(
            approx.covariance_matrix(k), exact.covariance_matrix(k), atol=1e-8, rtol=0
        )


def test_64px_gaussians_are_low_rank_small_and_say_why() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (15, 3, 64, 64), generator=g, dtype=torch.uint8)
    labels = torch.arange(15) % 3
    messages: list[str] = []
    gs = fit_class_gaussians(x, labels, 3, log=messages.append)
    d = 3 * 64 * 64
    assert len(messages) == 1 and "low-rank" in messages[0] and str(d) in messages[0]
    assert gs.covariance == "lowrank" and gs.rank == 5  # 5 images per class: exact
    assert gs.shape == (3, 64, 64) and gs.factor.shape == (3, d, 5)
    assert all(t.numel() <= 3 * d * 5 for t in gs.state_dict().values())
    assert gs.nbytes == 4 * 3 * d * (5 + 2) < 1 << 20  # a full covariance would need 1.8 GB
    s = gs.sample(6, classes=torch.tensor([0, 1, 2, 0, 1, 2]), generator=g)
    assert s.shape == (6, 3, 64, 64) and s.min() >= -1 and s.max() <= 1
    # Each image draws near its own class mean (5-image classes: the mean is far from others).
    mine = (s.reshape(6, d) - gs.means[[0, 1, 2, 0, 1, 2]]).norm(dim=1)
    other = (s.reshape(6, d) - gs.means[[1, 2, 0, 1, 2, 0]]).norm(dim=1)
    assert (mine < other).all()
    buf = ReplayBuffer(9, (3, 64, 64), init="gaussian", gaussians=gs,
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert buf.buffer.shape == (9, 3, 64, 64) and buf.buffer.abs().max() <= 1


def test_auto_choice_follows_the_dimension_and_is_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    x, labels = structured(20)
    messages: list[str] = []
    small = fit_class_gaussians((x + 1) / 2, labels, 2, log=messages.append)
    assert small.covariance == "full" and "full covariance" in messages[-1]
    assert f"{D} <= {gmod.FULL_COVARIANCE_MAX_DIM}" in messages[-1]
    monkeypatch.setattr(gmod, "FULL_COVARIANCE_MAX_DIM", D - 1)
    big = fit_class_gaussians((x + 1) / 2, labels, 2, log=messages.append)
    assert big.covariance == "lowrank" and f"{D} > {D - 1}" in messages[-1]
    assert f"rank {min(gmod.LOWRANK_RANK, 20)}" in messages[-1]
    explicit = ClassGaussians().fit(x, labels, 2, covariance="full", log=messages.append)
    assert explicit.covariance == "full" and "as requested" in messages[-1]
    with pytest.raises(ValueError, match="covariance"):
        ClassGaussians().fit(x, labels, 2, covariance="diag")
    with pytest.raises(ValueError, match="rank"):
        ClassGaussians().fit(x, labels, 2, covariance="lowrank", rank=0)


def test_lowrank_sync_free_draw_equals_the_grouped_one() -> None:
    x, labels = structured(30, classes=3)
    gs = ClassGaussians().fit(x, labels, 3, covariance="lowrank", rank=4, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    eps = torch.randn(50, 4 + D, generator=g, dtype=torch.float64)
    classes = torch.randint(3, (50,), generator=g)
    torch.testing.assert_close(
        gs._draw_all_classes(eps, classes), gs._draw_grouped(eps, classes), rtol=1e-12, atol=1e-12
    )


def _round_trip(state: dict) -> dict:
    f = io.BytesIO()
    torch.save(state, f)
    f.seek(0)
    return torch.load(f, weights_only=True)


@pytest.mark.parametrize("covariance", ["full", "lowrank"])
def test_state_round_trip_and_device_copies(covariance: str) -> None:
    x, labels = structured(20, classes=3)
    gs = ClassGaussians().fit(x, labels, 3, covariance=covariance, rank=4)
    other = ClassGaussians()
    other.load_state_dict(_round_trip(gs.state_dict()))
    assert other.covariance == covariance and other.shape == gs.shape and other.rank == gs.rank
    for a, b in zip(gs._tensors(), other._tensors(), strict=True):
        assert torch.equal(a, b)
    draw = [h.sample(7, generator=torch.Generator().manual_seed(3)) for h in (gs, other)]
    assert torch.equal(*draw)
    assert gs.to("cpu") is gs
    buf = ReplayBuffer(12, SHAPE, init="gaussian", gaussians=gs, reinit_freq=0.5,
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    state = _round_trip(buf.state_dict(include_gaussians=True))
    again = ReplayBuffer(12, SHAPE, init="gaussian", gaussians=gs, reinit_freq=0.5,
                         generator=torch.Generator().manual_seed(9))  # fmt: skip
    again.load_state_dict(state)
    assert again.gaussians.covariance == covariance
    (xa, ia), (xb, ib) = buf.sample(10), again.sample(10)
    assert torch.equal(xa, xb) and torch.equal(ia, ib)
    if torch.cuda.is_available():  # both draw paths on the device (random classes: sync-free)
        cuda = gs.to("cuda")
        gen = torch.Generator("cuda").manual_seed(0)
        s = cuda.sample(16, generator=gen)
        assert s.device.type == "cuda" and s.shape == (16, *SHAPE)
        eps = torch.randn(16, cuda.rank + D if covariance == "lowrank" else D, device="cuda")
        classes = torch.arange(16, device="cuda") % 3
        torch.testing.assert_close(
            cuda._draw_all_classes(eps, classes), cuda._draw_grouped(eps, classes)
        )
    with pytest.raises(ValueError, match="scale_tril|factor"):
        ClassGaussians().load_state_dict(
            {k: v for k, v in gs.state_dict().items() if k not in ("scale_tril", "factor")}
        )
