"""ebjdat.attacks: the EB-JDAT adversarial sampler (training) and PGD (evaluation).

Stand-in models implement `logits_internal(z)` on [-1, 1] images; eager PyTorch references
written here are the test oracles (torchattacks is only an optional extra).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ebjdat.attacks import (
    AdvConfig,
    adversarial_objective,
    adversarial_samples,
    perception_loss,
    pgd_attack,
    unit_logits,
)

SHAPE = (3, 8, 8)


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10, scale: float = 1.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.LeakyReLU(0.2),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, num_classes),
        )
        with torch.no_grad():
            self.net[-1].weight.mul_(scale)

    def logits_internal(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.logits_internal(2 * x01 - 1)


class Linear(nn.Module):
    """logits = W flatten(z): the input gradient of any logit is constant."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def logits_internal(self, z: torch.Tensor) -> torch.Tensor:
        return z.flatten(1) @ self.weight.T


def make_net(seed: int = 0, dtype: torch.dtype = torch.float32, scale: float = 5.0) -> TinyNet:
    """A net with non-trivial BN running statistics, in train mode (as during training)."""
    torch.manual_seed(seed)
    net = TinyNet(scale=scale).to(dtype)
    with torch.no_grad():
        for _ in range(3):
            net.logits_internal(torch.rand(16, *SHAPE, dtype=dtype) * 2 - 1)
    return net.train()


def data(n: int, seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(n, *SHAPE, generator=g, dtype=dtype) * 1.6 - 0.8
    return z, torch.randint(0, 10, (n,), generator=g)


def logits_eval(net: TinyNet, z: torch.Tensor) -> torch.Tensor:
    was = net.training
    net.eval()
    with torch.no_grad():
        out = net.logits_internal(z)
    net.train(was)
    return out


# -- adversarial sampler -------------------------------------------------------------------------


# The official code's effective sampler: its 8/255 and 2/255 act on [-1, 1] images.
OFFICIAL = dict(
    objective="logit", perception_loss=True, project=False, eps=4 / 255, step_size=1 / 255
)


def official(**changes: object) -> AdvConfig:
    return AdvConfig(**{**OFFICIAL, **changes})


def test_config_units_and_defaults() -> None:
    cfg = AdvConfig()  # the sound defaults: CE, projected, 8/255 and 2/255 pixel units
    assert (cfg.objective, cfg.perception_loss, cfg.project) == ("ce", False, True)
    assert (cfg.steps, cfg.random_start, cfg.norm) == (5, True, "linf")
    assert (cfg.eps, cfg.step_size) == (8 / 255, 2 / 255)
    eps, alpha = official().internal()  # pixel units -> [-1, 1] units: x2
    assert eps == pytest.approx(8 / 255) and alpha == pytest.approx(2 / 255)
    with pytest.raises(ValueError, match="adv.objective"):
        AdvConfig(objective="energy").check()
    with pytest.raises(ValueError, match="adv.eps"):
        adversarial_samples(make_net(), *data(2, 0), AdvConfig(eps=-0.1))


def test_official_preset_is_the_official_sampler() -> None:
    from ebjdat.train.config import load_preset

    assert load_preset("official").validate().adv == official()


@pytest.mark.parametrize("objective", ["logit", "ce"])
def test_sampler_raises_its_objective(objective: str) -> None:
    net = make_net()
    z, y = data(8, 1)
    cfg = official(
        objective=objective,
        perception_loss=False,
        eps=0.02,
        step_size=0.005,
        steps=5,
        random_start=False,
    )
    z_adv = adversarial_samples(net, z, y, cfg)
    before, after = logits_eval(net, z), logits_eval(net, z_adv)
    if objective == "logit":
        assert after.gather(1, y[:, None]).sum() > before.gather(1, y[:, None]).sum()
    else:
        ce = nn.functional.cross_entropy
        assert ce(after, y, reduction="sum") > ce(before, y, reduction="sum")
    # with the perception term the full objective still rises
    cfg = official(objective=objective, eps=0.02, step_size=0.005, random_start=False)
    z_adv = adversarial_samples(net, z, y, cfg)
    clean = unit_logits(before)
    assert adversarial_objective(logits_eval(net, z_adv), y, cfg, clean) > adversarial_objective(
        before, y, cfg, clean
    )


def test_projection_respects_eps() -> None:
    net = make_net()
    z, y = data(8, 2)
    cfg = official(project=True, eps=0.01, step_size=0.01, steps=5)
    z_adv = adversarial_samples(net, z, y, cfg, generator=torch.Generator().manual_seed(0))
    dist = (z_adv - z).abs().max().item()
    assert dist <= 2 * 0.01 + 1e-6 and dist > 0.019
    assert z_adv.min() >= -1 and z_adv.max() <= 1


def test_no_projection_bound_is_attained() -> None:
    """Official settings: start U(+-8/255), 5 steps of 2/255 (internal units), no projection.
    With every logit gradient positive each step moves every pixel up by alpha, so the
    L-inf distance is max(u) + 5 alpha, which reaches 18/255 for ~2e5 pixels."""
    g = torch.Generator().manual_seed(0)
    w = torch.rand(10, 3 * 32 * 32, generator=g) + 0.1
    model = Linear(w)
    z = torch.rand(64, 3, 32, 32, generator=g) * 1.6 - 0.8
    y = torch.randint(0, 10, (64,), generator=g)
    cfg = official(perception_loss=False)  # 4/255, 1/255 pixel units, 5 steps
    z_adv = adversarial_samples(model, z, y, cfg, generator=torch.Generator().manual_seed(1))
    dist = (z_adv - z).abs()
    bound = 8 / 255 + 5 * 2 / 255
    assert dist.max().item() <= bound + 1e-6
    assert dist.max().item() >= bound - 1e-5
    assert dist.max().item() > 8 / 255 + 1e-3  # well outside the eps-ball
    # with the projection the same walk is held at eps
    proj = adversarial_samples(model, z, y, official(perception_loss=False, project=True))
    torch.testing.assert_close((proj - z).abs().max(), torch.tensor(8 / 255), atol=1e-6, rtol=0)


def test_bn_eval_during_attack_and_modes_restored() -> None:
    net = make_net()
    net.net[1].eval()  # mixed state, restored exactly
    modes = [m.training for m in net.modules()]
    seen: list[bool] = []
    net.net[4].register_forward_pre_hook(lambda m, _: seen.append(m.training))
    stats = net.net[4].running_mean.clone()
    z, y = data(4, 3)
    adversarial_samples(net, z, y, official(steps=3))
    assert seen and not any(seen)
    assert len(seen) == 1 + 3  # clean logits once + one forward per step
    assert torch.equal(stats, net.net[4].running_mean)
    assert [m.training for m in net.modules()] == modes
    assert all(p.grad is None for p in net.parameters())


def test_perception_loss_matches_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    clean, adv = torch.randn(5, 10, generator=g), torch.randn(5, 10, generator=g)
    # the official feat_diff: per sample, normalise by its own L2 norm (+1e-10), squared
    # difference summed over logits; then summed over the batch
    total = 0.0
    for a, b in zip(clean, adv, strict=True):
        na = a / (a.pow(2).sum().sqrt() + 1e-10)
        nb = b / (b.pow(2).sum().sqrt() + 1e-10)
        total += ((na - nb) ** 2).sum().item()
    assert perception_loss(unit_logits(clean), adv).item() == pytest.approx(total, rel=1e-6)


@pytest.mark.parametrize("objective", ["logit", "ce"])
def test_one_step_matches_eager_reference(objective: str) -> None:
    net = make_net(dtype=torch.float64)
    z, y = data(6, 4, torch.float64)
    cfg = official(
        objective=objective, steps=2, random_start=False, eps=0.02, step_size=0.01
    )
    ours = adversarial_samples(net, z, y, cfg)
    net.eval()
    with torch.no_grad():
        ref_clean = net.logits_internal(z)
        ref_clean = ref_clean / (ref_clean.norm(dim=1, keepdim=True) + 1e-10)
    x = z.clone()
    for _ in range(2):
        xr = x.clone().requires_grad_(True)
        logits = net.logits_internal(xr)
        if objective == "logit":
            obj = logits.gather(1, y[:, None]).sum()
        else:
            obj = nn.functional.cross_entropy(logits, y, reduction="sum")
        unit = logits / (logits.norm(dim=1, keepdim=True) + 1e-10)
        obj = obj + ((ref_clean - unit) ** 2).sum()
        (grad,) = torch.autograd.grad(obj, xr)
        x = (x + 2 * 0.01 * grad.sign()).clamp(-1, 1)
    torch.testing.assert_close(ours, x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("objective", ["logit", "ce"])
def test_chunk_invariance(objective: str) -> None:
    """The official code processes chunks of 2; with the random start removed, the full batch
    gives the same samples (every term is per-sample in eval mode, the objective a sum)."""
    net = make_net(dtype=torch.float64)
    z, y = data(10, 5, torch.float64)
    cfg = official(objective=objective, random_start=False, eps=0.03, step_size=0.01)
    full = adversarial_samples(net, z, y, cfg)
    chunks = torch.cat(
        [adversarial_samples(net, z[i : i + 2], y[i : i + 2], cfg) for i in range(0, 10, 2)]
    )
    assert torch.equal(full, chunks)
    assert not torch.equal(full, z)


def test_sampler_input_untouched_and_no_grad_context() -> None:
    net = make_net()
    z, y = data(4, 6)
    z_copy = z.clone()
    cfg = official(random_start=False)
    ref = adversarial_samples(net, z, y, cfg)
    with torch.no_grad():
        again = adversarial_samples(net, z, y, cfg)
    with torch.inference_mode():
        inf = adversarial_samples(net, z.clone(), y.clone(), cfg)
    assert torch.equal(ref, again) and torch.equal(ref, inf)
    assert torch.equal(z, z_copy) and not ref.requires_grad


# -- PGD for evaluation --------------------------------------------------------------------------


def eager_pgd(model, x, y, *, eps, alpha, steps, norm):  # noqa: ANN001, ANN201
    """torchattacks' PGD / PGDL2 (random_start=False), in plain PyTorch."""
    x_adv = x.clone()
    for _ in range(steps):
        xr = x_adv.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(xr), y)
        (grad,) = torch.autograd.grad(loss, xr)
        if norm == "linf":
            x_adv = x_adv + alpha * grad.sign()
            delta = torch.clamp(x_adv - x, -eps, eps)
        else:
            gn = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            x_adv = x_adv + alpha * grad / gn
            delta = x_adv - x
            dn = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            delta = delta * torch.clamp(eps / dn, max=1.0)
        x_adv = torch.clamp(x + delta, 0, 1)
    return x_adv


def classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10)
    ).eval()


@pytest.mark.parametrize("norm,eps,alpha", [("linf", 8 / 255, 2 / 255), ("l2", 0.5, 0.1)])
def test_pgd_matches_eager_reference(norm: str, eps: float, alpha: float) -> None:
    model = classifier()
    x = torch.rand(16, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    ours = pgd_attack(
        model, x, y, eps=eps, step_size=alpha, steps=10, norm=norm, random_start=False
    )
    ref = eager_pgd(model, x, y, eps=eps, alpha=alpha, steps=10, norm=norm)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    with torch.inference_mode():  # evaluation code may run under inference mode
        again = pgd_attack(
            model,
            x.clone(),
            y.clone(),
            eps=eps,
            step_size=alpha,
            steps=10,
            norm=norm,
            random_start=False,
        )
    assert torch.equal(ours, again)
    assert ours.min() >= 0 and ours.max() <= 1
    dist = (ours - x).abs().amax() if norm == "linf" else (ours - x).flatten(1).norm(dim=1).max()
    assert dist <= eps + 1e-6
    assert all(p.grad is None for p in model.parameters())


def test_pgd_restarts_never_increase_accuracy() -> None:
    model = classifier(1)
    x = torch.rand(64, *SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(1)  # clean accuracy 1 by construction
    accs, advs = [], []
    for restarts in (1, 3, 6):
        adv = pgd_attack(
            model,
            x,
            y,
            eps=0.03,
            step_size=0.01,
            steps=3,
            restarts=restarts,
            generator=torch.Generator().manual_seed(7),
        )
        assert (adv - x).abs().max() <= 0.03 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        with torch.no_grad():
            accs.append((model(adv).argmax(1) == y).float().mean().item())
        advs.append(adv)
    assert 0 < accs[0] < 1  # the attack is neither useless nor total here
    assert accs[0] >= accs[1] >= accs[2]
    # samples fooled by the first restart keep that first adversarial example
    fooled = model(advs[0]).argmax(1) != y
    assert torch.equal(advs[1][fooled], advs[0][fooled])
