"""ebjdat.eval.robustness: PGD against torchattacks, AutoAttack on CPU (the original engine and
the torchattacks port, which agree on a small model; the original finds what PGD misses on a
gradient-masked one), the two protocols, the gradient-masking sanity checks, and absent metrics.

Models are tiny (an MLP / a linear map on 1×8×8 images) and the labels are the model's own
predictions, so clean accuracy is 100% and every drop is the attack's doing.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from ebjdat.attacks import pgd_attack
from ebjdat.eval import (
    PROTOCOLS,
    SettingsError,
    autoattack_accuracy,
    autoattack_run,
    clean_accuracy,
    default_eps,
    evaluate_robustness,
    make_autoattack,
    make_original_autoattack,
    pgd_accuracy,
    resolve_autoattack,
    sanity_checks,
    sanity_report,
    wilson_interval,
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


def _needs(engine: str) -> None:
    if engine == "original":
        pytest.importorskip("pyautoattack")


@pytest.mark.parametrize("engine", ["original", "torchattacks"])
def test_autoattack_standard_runs_on_cpu(mlp: nn.Module, engine: str) -> None:
    _needs(engine)
    x, y = _data(mlp, 8, seed=2)
    y[0] = (y[0] + 1) % K  # one clean error: clean accuracy 7/8
    clean = clean_accuracy(mlp, x, y)
    assert clean == pytest.approx(7 / 8)
    state = torch.get_rng_state()
    kw = dict(n_classes=K, engine=engine)
    aa = autoattack_accuracy(mlp, x, y, eps=0.03, norm="Linf", batch_size=4, **kw)
    assert torch.equal(torch.get_rng_state(), state)  # the engines' reseeding is confined
    assert 0.0 <= aa <= clean
    pgd = pgd_accuracy(mlp, x, y, eps=0.03, generator=torch.Generator().manual_seed(0))
    assert aa <= pgd + 1 / 8  # AutoAttack is at least about as strong as PGD-20
    assert autoattack_accuracy(mlp, x, y, eps=0.5, **kw) == 0.0
    assert autoattack_accuracy(mlp, x, y, eps=3.0, norm="l2", **kw) == 0.0
    with pytest.raises(ValueError, match="n_classes"):
        autoattack_accuracy(mlp, x, y, eps=0.03, n_classes=3, engine=engine)


def test_the_engines_agree_on_a_small_model(mlp: nn.Module) -> None:
    """The original AutoAttack and the torchattacks port, "standard" version, on the same 32
    examples of a smooth 4-class MLP (L-inf, eps 0.05, where about a quarter stay robust).

    Margin: at most 2 of the 32 examples (6.25 points) may be judged differently, and the
    original may be weaker by at most one example. Both run the same four attacks (APGD-CE,
    APGD-T, FAB-T, Square 5000) with different random draws, but the port runs 10 iterations
    per gradient attack where the original runs 100, so an example whose adversarial point
    lies deep in a corner of the ball can be found by one and not the other; on this model
    they agree on every example (measured: 25.0% both; 1 example of 32 differs under L2 at
    eps 0.3, which is left out here for time)."""
    pytest.importorskip("pyautoattack")
    x, y = _data(mlp, 32)
    kw = dict(eps=0.05, norm="linf", n_classes=K, seed=0)
    ours = autoattack_run(mlp, x, y, engine="original", **kw)
    port = autoattack_run(mlp, x, y, engine="torchattacks", **kw)
    assert (ours["engine"], port["engine"]) == ("original", "torchattacks")
    assert 0.1 < port["acc"] < 0.9  # the comparison means something
    differ = int((ours["robust"] != port["robust"]).sum())
    assert differ <= 2, (ours["acc"], port["acc"])
    assert ours["acc"] <= port["acc"] + 1 / 32
    assert ours["checks"] == [] and port["checks"] == []  # a smooth deterministic model
    assert ours["acc"] <= pgd_accuracy(mlp, x, y, eps=0.05, generator=torch.Generator()) + 1 / 32


def _off_grid(n: int, seed: int = 2) -> torch.Tensor:
    """Images whose pixels sit 0.08 from a rounding threshold of a 1/4 quantiser (k/4 ± 0.045):
    a change of more than 0.08 towards it moves the quantised pixel, a smaller one does not."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 5, (n, 1, 8, 8), generator=g) / 4
    side = torch.where(torch.rand(n, 1, 8, 8, generator=g) < 0.5, -1.0, 1.0)
    return (k + 0.045 * side).clamp(0, 1)


def test_original_autoattack_finds_what_pgd_misses_on_a_gradient_masked_model() -> None:
    """A linear model behind torch.round has an input gradient of exactly zero: PGD never moves
    from its random start (uniform in the ball, which rarely reaches 0.08 on the right side),
    while Square, in the original's standard version, searches the ball's corners without
    gradients and flips most predictions. The original's own checks say both things."""
    pytest.importorskip("pyautoattack")
    torch.manual_seed(0)
    masked = Linear(quantise=4).eval()
    x = _off_grid(32)
    with torch.no_grad():
        y = masked(x).argmax(dim=1)
    eps = 0.1
    pgd = pgd_accuracy(masked, x, y, eps=eps, generator=torch.Generator().manual_seed(0))
    r = evaluate_robustness(masked, x, y, eps=eps, attacks=("autoattack",), n_classes=K)
    assert r["autoattack_engine"] == "original" and r["autoattack_version"] == "standard"
    assert pgd >= 0.75, pgd  # measured 0.91
    assert r["autoattack_acc"] <= pgd - 0.5, (r["autoattack_acc"], pgd)  # measured 0.19
    text = " ".join(r["autoattack_checks"])
    assert "zero gradient" in text and "Square Attack has decreased" in text, text
    low, high = r["autoattack_acc_ci95"]
    assert low <= r["autoattack_acc"] <= high


def test_the_original_engine_keeps_its_messages_and_the_trace_function(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Its dynamic-defence check clears sys.settrace and its checks log to stderr: the caller's
    trace function is put back, and the messages are returned instead of printed."""
    pytest.importorskip("pyautoattack")
    from pyautoattack import checks

    from ebjdat.eval.robustness import _engine_messages

    atk = make_original_autoattack(MLP(), eps=0.1, n_classes=K)

    def tracer(frame, event, arg):  # noqa: ANN001, ANN202
        return None

    probs = nn.Sequential(MLP(), nn.Softmax(dim=1)).eval()
    x = torch.rand(4, 1, 8, 8)
    before = sys.gettrace()
    sys.settrace(tracer)
    try:
        with _engine_messages(atk.logger) as messages:
            checks.check_dynamic(probs, x, logger=atk.logger)
            checks.check_range_output(probs, x, logger=atk.logger)
            checks.check_range_output(probs, x)  # no logger: through `warnings`
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(before)
    assert len(messages) == 2 and all("probability distribution" in m for m in messages)
    assert capsys.readouterr().err == ""


def test_resolve_autoattack_and_its_refusals() -> None:
    assert resolve_autoattack("standard") == ("original", "standard")
    assert resolve_autoattack("standard", "torchattacks") == ("torchattacks", "standard")
    assert resolve_autoattack("standard", None, "plus") == ("original", "plus")
    assert resolve_autoattack("standard", "torchattacks", "full") == ("torchattacks", "full")
    assert resolve_autoattack("paper") == ("torchattacks", "paper")
    assert resolve_autoattack("paper", "torchattacks") == ("torchattacks", "paper")
    bad = [
        (("standard", "original", "full"), "aa_version", "not a version of the original"),
        (("paper", "original", None), "aa_impl", "cannot run the paper protocol"),
        (("paper", None, "standard"), "aa_version", "under the paper protocol"),
        (("standard", "cleverhans", None), "aa_impl", "must be 'original' or 'torchattacks'"),
        (("standard", None, "paper"), "aa_version", "must be one of standard, plus, rand"),
    ]
    for args, field, text in bad:
        with pytest.raises(SettingsError, match=text) as info:
            resolve_autoattack(*args)
        assert info.value.field == field


def test_report_keys_engine_and_intervals(mlp: nn.Module) -> None:
    """Every accuracy has its Wilson interval; AutoAttack says which engine ran it."""
    pytest.importorskip("pyautoattack")
    x, y = _data(mlp, 16)
    y[:3] = (y[:3] + 1) % K  # clean accuracy 13/16
    r = evaluate_robustness(
        mlp, x, y, eps=3.0, norm="l2", attacks=("pgd5", "autoattack"), n_classes=K, sanity=True,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert r["clean_acc"] == 13 / 16
    assert r["clean_acc_ci95"] == pytest.approx(list(wilson_interval(13, 16)))
    for key in ("pgd5_acc", "autoattack_acc"):
        count = round(r[key] * 16)
        assert r[f"{key}_ci95"] == pytest.approx(list(wilson_interval(count, 16))), key
    assert r["autoattack_engine"] == "original" and r["autoattack_version"] == "standard"
    assert isinstance(r["autoattack_checks"], list)
    assert "original AutoAttack" in r["protocol_note"]
    sanity = r["sanity"]
    for key in ("clean_acc", "reachable_eps_acc", "strong_pgd_acc", "random_noise_acc"):
        assert len(sanity[f"{key}_ci95"]) == 2, key
    assert set(sanity["pgd_acc_by_eps_ci95"]) == set(sanity["pgd_acc_by_eps"])
    port = evaluate_robustness(
        mlp, x, y, eps=3.0, norm="l2", attacks=("autoattack",), n_classes=K, aa_impl="torchattacks"
    )
    assert port["autoattack_engine"] == "torchattacks" and port["autoattack_checks"] == []
    assert "torchattacks' port" in port["protocol_note"]
    with pytest.raises(SettingsError, match="paper protocol"):
        evaluate_robustness(
            mlp, x, y, protocol="paper", eps=0.1, attacks=(), n_classes=K, aa_impl="original"
        )


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
    for version in ("plus", "rand"):
        assert make_autoattack(mlp, eps=0.1, version=version, n_classes=K).version == version
    # the paper version runs too, and never beats clean accuracy
    x, y = _data(mlp, 8, seed=3)
    assert autoattack_accuracy(mlp, x, y, eps=0.3, version="paper", n_classes=K) == 0.0


def test_the_original_engine_runs_its_versions_unmodified(mlp: nn.Module) -> None:
    pytest.importorskip("pyautoattack")
    std = make_original_autoattack(mlp, eps=0.1, version="standard", n_classes=10)
    assert std.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert (std.apgd.n_iter, std.apgd.n_restarts, std.apgd_targeted.n_iter) == (100, 1, 100)
    assert (std.apgd_targeted.n_target_classes, std.fab.n_target_classes) == (9, 9)
    assert (std.fab.n_iter, std.square.n_queries) == (100, 5000)
    few = make_original_autoattack(mlp, eps=0.1, version="standard", n_classes=K)
    assert (few.apgd_targeted.n_target_classes, few.fab.n_target_classes) == (K - 1, K - 1)
    plus = make_original_autoattack(mlp, eps=0.1, version="plus", n_classes=10)
    assert plus.attacks_to_run == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    rand = make_original_autoattack(mlp, eps=0.1, version="rand", n_classes=10)
    assert (rand.attacks_to_run, rand.apgd.eot_iter) == (["apgd-ce", "apgd-dlr"], 20)
    with pytest.raises(ValueError, match="version"):
        make_original_autoattack(mlp, eps=0.1, version="full", n_classes=10)


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
