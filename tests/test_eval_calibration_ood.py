"""ebjdat.eval.calibration and ebjdat.eval.ood: ECE on predictions with a known answer, the
reliability PNG, AUROC against scikit-learn, the digits OOD sets, and the JEM scores on a model
whose log p(x) is known in closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ebjdat.eval import (
    auroc,
    calibration_bins,
    digits_ood_sets,
    expected_calibration_error,
    ood_auroc,
    ood_scores,
    ood_sets_for,
    reliability_diagram,
)


def _preds(conf: float, n: int, n_correct: int, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """n rows with top probability `conf` on class 0; the first n_correct labels are 0."""
    probs = torch.full((n, k), (1 - conf) / (k - 1), dtype=torch.float64)
    probs[:, 0] = conf
    labels = torch.ones(n, dtype=torch.long)
    labels[:n_correct] = 0
    return probs, labels


# ---- calibration -----------------------------------------------------------------------------


def test_ece_known_answers() -> None:
    assert expected_calibration_error(*_preds(0.8, 10, 8)) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(*_preds(0.9, 10, 5)) == pytest.approx(0.4)
    assert expected_calibration_error(*_preds(1.0, 4, 4)) == pytest.approx(0.0, abs=1e-12)
    # Two bins by hand: 6 samples at 0.95 confidence, 3 right (gap 0.45, mass 0.6);
    # 4 samples at 0.35, all right (gap 0.65, mass 0.4): ECE = 0.6·0.45 + 0.4·0.65 = 0.53.
    p1, l1 = _preds(0.95, 6, 3)
    p2, l2 = _preds(0.35, 4, 4)
    probs, labels = torch.cat([p1, p2]), torch.cat([l1, l2])
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.53)
    bins = calibration_bins(probs.numpy(), labels.numpy(), n_bins=10)
    assert bins.count.sum() == 10 and bins.count[9] == 6 and bins.count[3] == 4
    assert bins.accuracy[9] == pytest.approx(0.5) and bins.confidence[3] == pytest.approx(0.35)
    assert np.isnan(bins.accuracy[0])  # empty bins carry no number
    # one bin: ECE is |overall accuracy - mean confidence| = |0.7 - (6·0.95 + 4·0.35)/10|
    assert expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(0.01)


def test_ece_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        expected_calibration_error(torch.rand(5), torch.zeros(5))
    with pytest.raises(ValueError):
        expected_calibration_error(torch.rand(5, 3), torch.zeros(4))


def test_reliability_diagram_writes_a_png(tmp_path) -> None:  # noqa: ANN001
    pytest.importorskip("matplotlib")
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(200, 10, generator=g), dim=1)
    labels = torch.randint(0, 10, (200,), generator=g)
    path = tmp_path / "reliability.png"
    ece = reliability_diagram(probs, labels, path, title="toy")
    assert ece == pytest.approx(expected_calibration_error(probs, labels))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


# ---- AUROC -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["continuous", "ties", "separable"])
def test_auroc_matches_sklearn(kind: str) -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    if kind == "continuous":
        s_in, s_out = rng.normal(0.5, 1, 300), rng.normal(0, 1, 200)
    elif kind == "ties":
        s_in, s_out = rng.integers(0, 5, 300).astype(float), rng.integers(0, 4, 150).astype(float)
    else:
        s_in, s_out = rng.uniform(2, 3, 50), rng.uniform(0, 1, 70)
    expected = roc_auc_score(np.r_[np.ones(s_in.size), np.zeros(s_out.size)], np.r_[s_in, s_out])
    assert auroc(torch.tensor(s_in), torch.tensor(s_out)) == pytest.approx(expected, abs=1e-12)
    assert auroc(s_out, s_in) == pytest.approx(1 - expected, abs=1e-12)
    assert auroc(np.zeros(3), np.zeros(4)) == 0.5  # all tied
    with pytest.raises(ValueError):
        auroc(np.array([]), s_out)


# ---- OOD sets --------------------------------------------------------------------------------


def test_digits_ood_sets() -> None:
    x = torch.randint(0, 17, (20, 1, 8, 8), generator=torch.Generator().manual_seed(0)) / 16
    sets = digits_ood_sets(x, torch.Generator().manual_seed(1))
    assert set(sets) == {"inverted", "uniform_noise", "pixel_shuffle", "vflip"}
    for name, s in sets.items():
        assert s.shape == x.shape and s.dtype == torch.float32, name
        assert 0.0 <= s.min() and s.max() <= 1.0, name
    assert torch.equal(sets["inverted"], 1 - x)
    assert torch.equal(sets["vflip"], x.flip(-2))
    # shuffling permutes each image's pixels: same sorted values, different order
    flat, shuf = x.flatten(1), sets["pixel_shuffle"].flatten(1)
    assert torch.equal(flat.sort(dim=1).values, shuf.sort(dim=1).values)
    assert not torch.equal(flat, shuf)
    again = digits_ood_sets(x, torch.Generator().manual_seed(1))
    assert torch.equal(again["pixel_shuffle"], sets["pixel_shuffle"])  # the generator decides
    u8 = digits_ood_sets((x * 255).round().to(torch.uint8))["inverted"]  # uint8 input too
    assert u8.dtype == torch.float32 and u8.max() <= 1.0


def test_ood_sets_for_skips_missing_data(tmp_path) -> None:  # noqa: ANN001
    x = torch.rand(30, 3, 32, 32)
    out = ood_sets_for("cifar10", root=tmp_path, n=10, generator=torch.Generator(), x=x)
    assert set(out["skipped"]) == {"svhn", "cifar100"}
    assert all(isinstance(r, str) and r for r in out["skipped"].values())
    assert set(out["sets"]) == {"uniform_noise", "interp"}
    assert all(s.shape == (10, 3, 32, 32) for s in out["sets"].values())
    digits = ood_sets_for("digits", n=12, generator=torch.Generator().manual_seed(0))
    assert digits["skipped"] == {} and set(digits["sets"]) >= {"inverted", "pixel_shuffle"}
    assert all(s.shape == (12, 1, 8, 8) for s in digits["sets"].values())


# ---- scores on a model with a closed-form log p(x) -------------------------------------------


class GaussianMixture(nn.Module):
    """logits_k(x) = -‖x - μ_k‖² / 2 (flattened): log p(x) = logsumexp_k logits_k (+ const) is
    known exactly, and is largest at the means."""

    def __init__(self, means: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("means", means)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.flatten(1)[:, None, :] - self.means[None]
        return -0.5 * d.pow(2).sum(-1)


def test_jem_scores_on_a_known_density() -> None:
    g = torch.Generator().manual_seed(0)
    means = torch.rand(3, 16, generator=g)
    model = GaussianMixture(means)
    # in-distribution: near the means; out: uniform noise in the box (far from all means)
    idx = torch.arange(60) % 3
    x_in = (means[idx] + 0.02 * torch.randn(60, 16, generator=g)).reshape(60, 1, 4, 4)
    x_out = torch.rand(60, 1, 4, 4, generator=g)
    s = ood_scores(model, x_in, batch_size=16)
    assert set(s) == {"log_px", "max_softmax", "grad_norm"}
    assert all(v.shape == (60,) for v in s.values())
    flat = x_in.flatten(1)
    d2 = (flat[:, None, :] - means[None]).pow(2).sum(-1)
    expected_lpx = torch.logsumexp(-0.5 * d2, dim=1)
    torch.testing.assert_close(s["log_px"], expected_lpx, rtol=1e-5, atol=1e-5)
    # ∇ log p(x) = Σ_k softmax_k (μ_k - x)
    grad = (torch.softmax(-0.5 * d2, 1)[:, :, None] * (means[None] - flat[:, None, :])).sum(1)
    torch.testing.assert_close(s["grad_norm"], -grad.norm(dim=1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s["max_softmax"], torch.softmax(-0.5 * d2, 1).amax(1))
    result = ood_auroc(model, x_in, {"noise": x_out, "same": x_in.clone()})
    assert result["noise"]["log_px"] == 1.0 and result["noise"]["grad_norm"] == 1.0
    assert all(v == 0.5 for v in result["same"].values())  # identical sets: all ties


def test_ood_auroc_leaves_out_scores_that_are_not_finite() -> None:
    """A NaN image in one set makes that set's scores unrankable: they are left out, not
    computed from the finite part and not reported as NaN; the other set is unaffected."""
    g = torch.Generator().manual_seed(0)
    model = GaussianMixture(torch.rand(3, 16, generator=g))
    x_in = torch.rand(20, 1, 4, 4, generator=g)
    broken = torch.rand(20, 1, 4, 4, generator=g)
    broken[3] = float("nan")
    result = ood_auroc(model, x_in, {"noise": torch.rand(20, 1, 4, 4, generator=g),
                                     "broken": broken})  # fmt: skip
    assert set(result["noise"]) == {"log_px", "max_softmax", "grad_norm"}
    assert result["broken"] == {}
    with pytest.raises(ValueError, match="NaN"):
        auroc(torch.tensor([0.0, float("nan")]), torch.tensor([1.0]))
