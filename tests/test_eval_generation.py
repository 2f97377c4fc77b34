"""Generation metrics: the Fréchet distance against closed forms, the deterministic cached
digits feature space (fid_digits), the Inception-unavailable message, the official buffer
selection, fresh SGLD samples and the energy figure."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ebjdat.eval import generation as G
from ebjdat.eval.energy import energy_gaps, energy_histogram


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One extractor cache for the whole session (both eval test files use it)."""
    path = tmp_path_factory.getbasetemp() / "ebjdat-cache"
    old = os.environ.get("EBJDAT_CACHE")
    os.environ["EBJDAT_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("EBJDAT_CACHE", None)
    else:
        os.environ["EBJDAT_CACHE"] = old


# ---- Fréchet distance -----------------------------------------------------------------------


def test_frechet_distance_diagonal_closed_form() -> None:
    rng = np.random.default_rng(0)
    for d in (1, 5, 64):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
        expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
        got = G.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_frechet_distance_commuting_identity_and_general_cases() -> None:
    rng = np.random.default_rng(1)
    d = 16
    mu = rng.normal(size=d)
    # Identical Gaussians: 0. Scaled identities: d (a + b - 2 sqrt(ab)) + |mu1 - mu2|^2.
    a = rng.normal(size=(d, d))
    cov = a @ a.T + 0.1 * np.eye(d)
    assert G.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8)
    got = G.frechet_distance(mu, 2.0 * np.eye(d), mu + 1.0, 0.5 * np.eye(d))
    assert got == pytest.approx(d * 1.0 + d * (2.0 + 0.5 - 2.0), rel=1e-12)
    # Commuting (shared eigenvectors): sum over eigenvalues of (sqrt(l1) - sqrt(l2))^2.
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    l1, l2 = rng.uniform(0.1, 2, d), rng.uniform(0.1, 2, d)
    got = G.frechet_distance(mu, q @ np.diag(l1) @ q.T, mu, q @ np.diag(l2) @ q.T)
    assert got == pytest.approx(((np.sqrt(l1) - np.sqrt(l2)) ** 2).sum(), rel=1e-8)
    # General full covariances: the textbook formula with scipy's sqrtm, and symmetry.
    from scipy.linalg import sqrtm

    b = rng.normal(size=(d, d))
    cov2 = b @ b.T + 0.1 * np.eye(d)
    mu2 = rng.normal(size=d)
    ref = ((mu - mu2) ** 2).sum() + np.trace(cov + cov2 - 2 * np.real(sqrtm(cov @ cov2)))
    assert G.frechet_distance(mu, cov, mu2, cov2) == pytest.approx(ref, rel=1e-7)
    assert G.frechet_distance(mu2, cov2, mu, cov) == pytest.approx(ref, rel=1e-7)
    # Rank-deficient covariances (fewer samples than dimensions) stay finite and >= 0.
    few = rng.normal(size=(5, d))
    m, s = G.feature_statistics(torch.from_numpy(few))
    value = G.frechet_distance(m, s, mu, cov)
    assert np.isfinite(value) and value >= 0
    with pytest.raises(ValueError, match="covariances"):
        G.frechet_distance(mu, cov[:3, :3], mu, cov)


# ---- fid_digits ------------------------------------------------------------------------------


def test_fid_digits_separates_real_digits_from_noise(shared_cache: Path) -> None:
    from ebjdat.data import load_split_tensors

    train, _ = load_split_tensors("digits", "train")
    test, _ = load_split_tensors("digits", "test")
    real = G.fid_digits(test, train)
    noise = G.fid_digits(
        torch.rand(len(test), 1, 8, 8, generator=torch.Generator().manual_seed(0)), train
    )
    assert real < 5.0, real
    assert noise > 50.0 * max(real, 1.0), (real, noise)
    path = shared_cache / f"{G.DIGITS_EXTRACTOR_VERSION}.pt"
    assert path.is_file()
    # Loaded back from the cache (weights_only), the features are the same.
    before = G.digits_features(test[:20])
    G._EXTRACTOR.clear()
    torch.testing.assert_close(G.digits_features(test[:20]), before)
    with pytest.raises(ValueError, match=r"\[N, 1, 8, 8\]"):
        G.digits_features(torch.rand(2, 3, 8, 8))


# ---- Inception -------------------------------------------------------------------------------


def test_inception_unavailable_says_how_to_provide_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(G.INCEPTION_WEIGHTS_ENV, raising=False)
    x = torch.rand(4, 3, 8, 8)
    with pytest.raises(G.InceptionUnavailable) as err:
        G.inception_metrics(x, x, download=False)
    message = str(err.value)
    expected = tmp_path / "torch" / "hub" / "checkpoints" / G.INCEPTION_FILE
    assert str(expected) in message and G.INCEPTION_WEIGHTS_ENV in message

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(G.InceptionUnavailable, match="download failed"):
        G.inception_metrics(x, x)
    monkeypatch.setenv(G.INCEPTION_WEIGHTS_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(G.InceptionUnavailable, match="nowhere.pth"):
        G.inception_extractor()


# ---- the official buffer selection -----------------------------------------------------------


class _Toy(nn.Module):
    """logits = W flatten(z): a stand-in energy model with logits_internal."""

    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, k)

    def logits_internal(self, z: torch.Tensor) -> torch.Tensor:
        return self.lin(z.flatten(1))


def test_buffer_selection_keeps_the_confident_fraction_per_class() -> None:
    torch.manual_seed(0)
    model = _Toy(4, 3)
    buf = torch.rand(200, 1, 2, 2) * 2 - 1
    kept = G.buffer_samples_official(model, buf, ratio=0.5, batch_size=64)
    with torch.no_grad():
        p = torch.softmax(model.logits_internal(buf), 1)
    conf, pred = p.max(1)
    expected = sum(int((pred == k).sum() * 0.5) for k in range(3))
    assert len(kept) == expected
    for k in range(3):
        idx = torch.nonzero(pred == k).squeeze(1)
        top = idx[conf[idx].argsort(descending=True)[: int(len(idx) * 0.5)]]
        want = ((buf[top] + 1) / 2).flatten(1)
        got = kept.flatten(1)
        assert all(bool((got == row).all(1).any()) for row in want)
    assert kept.min() >= 0 and kept.max() <= 1
    with pytest.raises(ValueError, match="ratio"):
        G.buffer_samples_official(model, buf, ratio=0.0)


def test_buffer_selection_refuses_non_finite_scores() -> None:
    """Top-k over NaN confidences would pick arbitrary images under the name of a metric."""
    torch.manual_seed(0)
    model = _Toy(4, 3)
    buf = torch.rand(20, 1, 2, 2) * 2 - 1
    broken = buf.clone()
    broken[5] = float("nan")
    with pytest.raises(ValueError, match="1 of 20 replay-buffer images are not finite"):
        G.buffer_samples_official(model, broken, ratio=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(ValueError, match="confidences on 20 of 20"):
        G.buffer_samples_official(model, buf, ratio=0.5)


# ---- fresh samples ---------------------------------------------------------------------------


def test_draw_samples_from_noise_and_class_starts_restores_bn() -> None:
    from ebjdat.models.jem import build_model
    from ebjdat.sampling import ClassGaussians, SGLDConfig

    torch.manual_seed(0)
    model = build_model("wrn-10-1", num_classes=3, in_channels=1, image_size=8, norm="batch")
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    chain = SGLDConfig(steps=2, step_size=1.0, noise_std=0.01, grad_clip=1.0, bn_train=True)
    kw = dict(batch_size=4, progress=False)
    x = G.draw_samples(
        model,
        6,
        chain,
        start="noise",
        shape=(1, 8, 8),
        generator=torch.Generator().manual_seed(1),
        **kw,
    )
    assert x.shape == (6, 1, 8, 8) and x.min() >= 0 and x.max() <= 1
    for k, v in model.state_dict().items():  # BN running stats restored after train-mode SGLD
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert not model.training
    imgs = torch.rand(30, 1, 8, 8) * 2 - 1
    gauss = ClassGaussians().fit(imgs, torch.arange(30) % 3, 3)
    a = G.draw_samples(
        model, 5, chain, start="class", gaussians=gauss, generator=torch.Generator().manual_seed(2),
        **kw,
    )
    b = G.draw_samples(
        model, 5, chain, start="class", gaussians=gauss, generator=torch.Generator().manual_seed(2),
        **kw,
    )
    torch.testing.assert_close(a, b)  # reproducible from the generator
    with pytest.raises(ValueError, match="Gaussians"):
        G.draw_samples(model, 2, chain, start="class", **kw)


# ---- the energy figure -----------------------------------------------------------------------


def test_energy_gaps_and_histogram(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    e = {
        "clean": torch.randn(300, generator=g) - 5,
        "adv": torch.randn(200, generator=g) - 3,
        "generated": torch.randn(100, generator=g) - 4.5,
    }
    gaps = energy_gaps(e)
    assert gaps["energy_gap_clean_adv"] == pytest.approx(
        float(e["adv"].double().mean() - e["clean"].double().mean())
    )
    assert gaps["energy_gap_clean_gen"] == pytest.approx(
        float(e["generated"].double().mean() - e["clean"].double().mean())
    )
    assert {"energy_mean_clean", "energy_mean_adversarial", "energy_mean_generated"} <= set(gaps)
    assert "energy_gap_clean_gen" not in energy_gaps({"clean": e["clean"], "adv": e["adv"]})
    path = energy_histogram(tmp_path / "energy.png", e, title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


# ---- the Inception path, with a stand-in extractor -------------------------------------------


class _LookupExtractor(nn.Module):
    """Stands in for torch-fidelity's InceptionV3 at the seam the evaluation uses (`extractor`):
    uint8 [N, 3, H, W] in, (features, logits) out. Each image carries its row number in its
    first two pixels, and the features and logits are looked up in fixed tables, so the test
    knows exactly which features the metrics were computed from."""

    def __init__(self, features: torch.Tensor, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("features", features.double())
        self.register_buffer("logits", logits.double())
        self.dummy = nn.Parameter(torch.zeros(()))  # inception_features asks for its device

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        idx = x[:, 0, 0, 0].long() * 256 + x[:, 0, 0, 1].long()
        return self.features[idx], self.logits[idx]


def _indexed_images(rows: range) -> torch.Tensor:
    """[0, 1] images whose first two pixels spell each row number in base 256."""
    x = torch.zeros(len(rows), 3, 4, 4)
    idx = torch.tensor(list(rows))
    x[:, 0, 0, 0] = (idx // 256).float() / 255
    x[:, 0, 0, 1] = (idx % 256).float() / 255
    return x


def test_inception_path_with_a_stand_in_extractor() -> None:
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(0)
    d, k, n = 6, 5, 400
    a = rng.normal(size=(d, d))
    cov1, cov2 = np.eye(d), a @ a.T / d + 0.5 * np.eye(d)
    mu1, mu2 = np.zeros(d), rng.normal(size=d)
    f1 = rng.multivariate_normal(mu1, cov1, size=n)
    f2 = rng.multivariate_normal(mu2, cov2, size=n)
    logits = rng.normal(size=(2 * n, k)) * 3
    net = _LookupExtractor(torch.from_numpy(np.vstack([f1, f2])), torch.from_numpy(logits))
    x1, x2 = _indexed_images(range(n)), _indexed_images(range(n, 2 * n))

    def fid(m1: np.ndarray, s1: np.ndarray, m2: np.ndarray, s2: np.ndarray) -> float:
        return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(sqrtm(s1 @ s2))))

    same = G.inception_metrics(x1, x1, extractor=net, progress=False)
    assert same["fid"] == pytest.approx(0.0, abs=1e-6)
    got = G.inception_metrics(x1, x2, extractor=net, progress=False)
    # The sample moments' Fréchet distance in float64, the textbook way...
    sample = fid(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    assert got["fid"] == pytest.approx(sample, rel=1e-6)
    # ... and the two Gaussians' closed form, which n = 400 samples estimate within a margin.
    assert got["fid"] == pytest.approx(fid(mu1, cov1, mu2, cov2), rel=0.25)
    # IS = exp(E KL(p(y|x) || p(y))) over torch-fidelity's 10 shuffled splits, in numpy.
    z = logits[:n][np.random.RandomState(2020).permutation(n)]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = []
    for i in range(10):
        c = p[i * n // 10 : (i + 1) * n // 10]
        scores.append(np.exp((c * (np.log(c) - np.log(c.mean(0)))).sum(1).mean()))
    assert got["inception_score"] == pytest.approx(np.mean(scores), rel=1e-9)
    # KID with one subset of the full sets: the unbiased MMD² of the cubic polynomial kernel.
    kernel = lambda u, v: (u @ v.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = kernel(f1, f1), kernel(f2, f2), kernel(f1, f2)
    mmd = (
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )
    pool1, logit1 = G.inception_features(net, x1, progress=False)
    pool2, _ = G.inception_features(net, x2, progress=False)
    torch.testing.assert_close(pool1, torch.from_numpy(f1))
    assert G.inception_metrics_from_features(pool1, logit1, pool2)["kid"] == pytest.approx(
        mmd, rel=1e-6
    )


def test_sample_count_warning_threshold() -> None:
    assert "fewer than 10,000" in (G.sample_count_warning(9_999, "FID") or "")
    assert G.sample_count_warning(10_000, "FID") is None
    assert G.sample_count_warning(50_000, "FID") is None


def test_draw_samples_reports_its_starts() -> None:
    """on_start sees exactly what 0 SGLD steps return: the init-only baseline's images."""
    from ebjdat.models.jem import build_model
    from ebjdat.sampling import SGLDConfig

    torch.manual_seed(0)
    model = build_model("wrn-10-1", num_classes=3, in_channels=1, image_size=8, norm="batch")
    model.eval()
    starts: list[torch.Tensor] = []
    kw = dict(start="noise", shape=(1, 8, 8), batch_size=4, progress=False)
    zero = G.draw_samples(
        model, 6, SGLDConfig(steps=0), generator=torch.Generator().manual_seed(1), **kw
    )
    G.draw_samples(
        model, 6, SGLDConfig(steps=2, step_size=1.0, noise_std=0.01),
        generator=torch.Generator().manual_seed(1), on_start=starts.append, **kw,
    )  # fmt: skip
    assert [len(b) for b in starts] == [4, 2]
    torch.testing.assert_close(torch.cat(starts)[:4], zero[:4])


def test_fresh_chains_default_to_the_training_chain_length() -> None:
    """A short-run model generates at the length it was trained with: fresh chains take the
    checkpoint's sgld.steps (and its other SGLD settings) unless told otherwise."""
    from ebjdat.eval.fresh_samples import SamplerOverrides
    from ebjdat.train.config import load_preset

    cfg = load_preset("digits")
    cfg.sgld.steps = 7
    resolved = SamplerOverrides().resolve(cfg)
    assert resolved.sgld == cfg.sgld and resolved.start == "class"
    assert SamplerOverrides(steps=3).resolve(cfg).sgld.steps == 3
