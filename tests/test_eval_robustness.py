"""ebjdat.eval.robustness: PGD against torchattacks, AutoAttack on CPU, the two protocols, the
gradient-masking sanity checks, and absent metrics.

Models are tiny (an MLP / a linear map on 1×8×8 images) and the labels are the model's own
predictions, so clean accuracy is 100% and every drop is the attack's doing.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ebjdat.attacks import pgd_attack
from ebjdat.eval import (
    PROTOCOLS,
    autoattack_accuracy,
    clean_accuracy,
    default_eps,
    evaluate_robustness,
    make_autoattack,
    pgd_accuracy,
    sanity_checks,
    sanity_report,
)

torchattacks = pytest.importorskip("torchattacks")

K = 4  # torchattacks' APGD-T (AutoAttack standard) needs at least 4 classes


class MLP(nn.Module):
    def __init__(self, k: int = K) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Linear(nn.Module):
    """Smooth; optionally quantises its input with torch.round, whose gradient is zero
    everywhere: the textbook gradient-masked model."""

    def __init__(self, quantise: int | None = None, k: int = K) -> None:
        super().__init__()
        self.lin = nn.Linear(64, k)
        self.quantise = quantise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantise:
            x = torch.round(x * self.quantise) / self.quantise
        return self.lin(x.flatten(1))


def _data(model: nn.Module, n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return x, model(x).argmax(dim=1)


@pytest.fixture(scope="module")
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return MLP().eval()


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.05), ("l2", 0.5)])
def test_pgd_matches_torchattacks(mlp: nn.Module, norm: str, eps: float) -> None:
    x, y = _data(mlp, 64)
    steps, alpha = 10, 2.5 * eps / 10
    if norm == "linf":
        ta = torchattacks.PGD(mlp, eps=eps, alpha=alpha, steps=steps, random_start=False)
    else:
        ta = torchattacks.PGDL2(mlp, eps=eps, alpha=alpha, steps=steps, random_start=False)
    adv_ta = ta(x, y)
    adv = pgd_attack(
        mlp, x, y, eps=eps, step_size=alpha, steps=steps, norm=norm, random_start=False
    )
    with torch.no_grad():
        acc_ta = (mlp(adv_ta).argmax(1) == y).float().mean().item()
    acc = pgd_accuracy(mlp, x, y, eps=eps, norm=norm, steps=steps, random_start=False)
    assert 0.05 < acc_ta < 0.95  # the comparison means something
    assert abs(acc - acc_ta) <= 0.02
    assert (adv - adv_ta).abs().amax() <= 1e-4
    # defaults: step 2.5·eps/steps, random start; still within the ball and in [0, 1]
    gen = torch.Generator().manual_seed(0)
    acc_rs = pgd_accuracy(mlp, x, y, eps=eps, norm=norm, steps=steps, generator=gen)
    assert abs(acc_rs - acc_ta) <= 0.1


def test_autoattack_standard_runs_on_cpu(mlp: nn.Module) -> None:
    x, y = _data(mlp, 8, seed=2)
    y[0] = (y[0] + 1) % K  # one clean error: clean accuracy 7/8
    clean = clean_accuracy(mlp, x, y)
    assert clean == pytest.approx(7 / 8)
    state = torch.get_rng_state()
    aa = autoattack_accuracy(mlp, x, y, eps=0.03, norm="Linf", n_classes=K, batch_size=4)
    assert torch.equal(torch.get_rng_state(), state)  # torchattacks' reseeding is confined
    assert 0.0 <= aa <= clean
    pgd = pgd_accuracy(mlp, x, y, eps=0.03, generator=torch.Generator().manual_seed(0))
    assert aa <= pgd + 1 / 8  # AutoAttack is at least about as strong as PGD-20
    assert autoattack_accuracy(mlp, x, y, eps=0.5, n_classes=K) == 0.0
    with pytest.raises(ValueError, match="n_classes"):
        autoattack_accuracy(mlp, x, y, eps=0.03, n_classes=3)


def test_autoattack_versions_compose_the_documented_attacks(mlp: nn.Module) -> None:
    std = make_autoattack(mlp, eps=0.1, version="standard", n_classes=K)
    assert type(std).__name__ == "AutoAttack" and std.version == "standard"
    paper = make_autoattack(mlp, eps=0.1, version="paper", n_classes=K)
    apgd_ce, apgd_dlr, fab, square = paper.attacks
    assert (apgd_ce.loss, apgd_ce.steps, apgd_ce.n_restarts) == ("ce", 20, 1)
    assert (type(apgd_dlr).__name__, apgd_dlr.loss, apgd_dlr.steps) == ("APGD", "dlr", 20)
    assert (type(fab).__name__, fab.multi_targeted, fab.steps) == ("FAB", True, 20)
    assert (type(square).__name__, square.n_queries) == ("Square", 5000)
    full = make_autoattack(mlp, eps=0.1, version="full", n_classes=K)
    assert [a.steps for a in full.attacks[:3]] == [100, 100, 100]
    # the paper version runs too, and never beats clean accuracy
    x, y = _data(mlp, 8, seed=3)
    assert autoattack_accuracy(mlp, x, y, eps=0.3, version="paper", n_classes=K) == 0.0


def test_paper_protocol_labels_itself(mlp: nn.Module) -> None:
    x, y = _data(mlp, 16)
    gen = torch.Generator().manual_seed(0)
    kw = dict(eps=8 / 255, attacks=("pgd20",), n_classes=K, generator=gen)
    paper = evaluate_robustness(mlp, x, y, protocol="paper", **kw)
    assert paper["protocol"] == "paper"
    assert paper["eps_requested"] == pytest.approx(8 / 255)
    assert paper["eps"] == pytest.approx(4 / 255)
    assert paper["input_noise"] == pytest.approx(0.015)
    assert paper["pgd20_step_size"] == pytest.approx(0.5 / 255)  # official alpha 1/255 in [-1,1]
    note = paper["protocol_note"].lower()
    assert "not" in note and "standard" in note and "[-1,1]" in note
    std = evaluate_robustness(mlp, x, y, protocol="standard", **kw)
    assert std["protocol"] == "standard" and std["eps"] == pytest.approx(8 / 255)
    assert std["input_noise"] == 0.0 and "not" not in std["protocol_note"].lower().split()
    assert std["pgd20_acc"] <= paper["pgd20_acc"] + 2 / 16  # twice the eps: no more robust
    assert PROTOCOLS["paper"].pixel_eps(8 / 255) == pytest.approx(4 / 255)


def test_absent_metrics_are_absent(mlp: nn.Module) -> None:
    x, y = _data(mlp, 8)
    r = evaluate_robustness(mlp, x, y, eps=0.05, attacks=(), n_classes=K)
    assert r["clean_acc"] == 1.0 and r["n_examples"] == 8 and r["norm"] == "linf"
    assert not any(k.startswith(("pgd", "autoattack", "sanity")) for k in r)
    r = evaluate_robustness(mlp, x, y, eps=0.05, attacks=("pgd5",), n_classes=K)
    assert "pgd5_acc" in r and "pgd20_acc" not in r and "autoattack_acc" not in r
    with pytest.raises(ValueError, match="unknown attack"):
        evaluate_robustness(mlp, x, y, eps=0.05, attacks=("fgsm",), n_classes=K)


def test_non_finite_logits_count_as_wrong() -> None:
    """argmax of a NaN row is class 0: without the rule, a broken model would score the share
    of class 0 in the labels."""

    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(x.shape[0], K)
            logits[:, 0] = 1.0
            logits[x[:, 0, 0, 0] > 0.5] = float("nan")
            return logits

    x = torch.zeros(8, 1, 8, 8)
    x[1::2] = 1.0  # these four give NaN logits
    y = torch.zeros(8, dtype=torch.long)
    assert clean_accuracy(Broken(), x, y, batch_size=3) == 0.5


def test_default_eps() -> None:
    assert default_eps("cifar10", "linf") == pytest.approx(8 / 255)
    assert default_eps("cifar100", "L2") == 0.5
    assert default_eps("digits", "Linf") == 0.1
    assert default_eps("digits", "l2") == 0.5


def test_sanity_checks_flag_a_gradient_masked_model() -> None:
    torch.manual_seed(0)
    smooth = Linear().eval()
    masked = Linear(quantise=4).eval()  # rounds pixels to multiples of 1/4
    masked.load_state_dict(smooth.state_dict())
    gen = torch.Generator().manual_seed(0)
    for norm, eps in (("linf", 0.05), ("l2", 0.5)):
        x, y = _data(smooth, 48)
        assert sanity_checks(smooth, x, y, eps=eps, norm=norm, generator=gen) == []
    # Images on the 1/4 grid, and 2·eps < 1/8: no perturbation of the checked sizes changes the
    # masked model's input, so the outcome does not depend on the random starts.
    x = torch.randint(0, 5, (48, 1, 8, 8), generator=torch.Generator().manual_seed(2)) / 4
    with torch.no_grad():
        y = masked(x).argmax(dim=1)
    for norm, eps in (("linf", 0.05), ("l2", 0.06)):
        report = sanity_report(masked, x, y, eps=eps, norm=norm, generator=gen)
        text = " ".join(report["warnings"])
        assert "does not fall" in text, report
        assert "no better than random noise" in text, report
        assert "zero input gradient" in text, report
        assert report["reachable_eps_acc"] <= 0.1 or "every image is reachable" in text


def test_sanity_flags_a_stronger_attack_doing_worse(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake PGD whose accuracy rises with the step count must trip the strength check."""
    import ebjdat.eval.robustness as rob

    def fake(model01, x, y, *, eps, steps, restarts, **_):  # noqa: ANN001, ANN202
        return max(0.0, 0.6 - eps) if steps < 100 else 0.9

    monkeypatch.setattr(rob, "pgd_accuracy", fake)
    x, y = torch.rand(10, 1, 8, 8), torch.zeros(10, dtype=torch.long)
    report = sanity_report(lambda t: torch.zeros(t.shape[0], K), x, y, eps=0.1, norm="linf")
    assert any("stronger attack" in w for w in report["warnings"])
