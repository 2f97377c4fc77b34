"""ebjdat.sampling: SGLD sampler, PYLD equivalence, replay buffer, class Gaussians.

Tiny stand-in models implement the JEM contract (`logits_internal(z)` on [-1, 1] images) so
these tests do not depend on ebjdat.models.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from ebjdat import ops
from ebjdat.sampling import ClassGaussians, ReplayBuffer, SGLDConfig, model_mode, sgld

SHAPE = (3, 8, 8)


class TinyJEM(nn.Module):
    """conv1 (linear, the layer PYLD differentiates through) followed by a small BN net."""

    def __init__(self, num_classes: int = 10, bn: bool = True, scale: float = 1.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        norm = nn.BatchNorm2d if bn else nn.Identity
        self.rest = nn.Sequential(
            norm(8),
            nn.LeakyReLU(0.2),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            norm(8),
            nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, num_classes),
        )
        with torch.no_grad():
            self.rest[-1].weight.mul_(scale)

    def logits_internal(self, z: torch.Tensor) -> torch.Tensor:
        return self.rest(self.conv1(z))

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.logits_internal(2 * x01 - 1)


def make_model(seed: int = 0, **kw: object) -> TinyJEM:
    torch.manual_seed(seed)
    return TinyJEM(**kw)


def uniform(n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g, dtype=dtype) * 2 - 1


def energy(model: TinyJEM, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), model_mode(model, False):
        return ops.energy_head(model.logits_internal(z)).energy


# -- SGLD ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["sadajem", "jem"])
def test_sgld_lowers_energy(preset: str) -> None:
    model = make_model(bn=False, scale=5.0)
    z0 = uniform(16, 1)
    sampler = getattr(SGLDConfig, preset)()
    # A small step keeps the ascent in the linear regime of this random net.
    sampler = SGLDConfig(**{**sampler.__dict__, "step_size": 0.05, "steps": 20})
    z = sampler(model, z0, generator=torch.Generator().manual_seed(0))
    assert energy(model, z).mean() < energy(model, z0).mean() - 1e-3


def test_sgld_matches_eager_loop_and_is_deterministic() -> None:
    model = make_model(scale=20.0).double()
    z0 = uniform(6, 2, torch.float64)
    kw = dict(steps=4, step_size=0.3, grad_clip=0.5, noise_std=0.0, bn_train=True)
    a = sgld(model, z0, **kw)
    b = sgld(model, z0, **kw)
    assert torch.equal(a, b)
    z = z0.clone()
    for _ in range(4):  # eager reference (test only)
        zr = z.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model.logits_internal(zr).logsumexp(1).sum(), zr)
        z = (z + 0.3 * g.clamp(-0.5, 0.5)).clamp(-1, 1)
    torch.testing.assert_close(a, z, atol=1e-12, rtol=0)
    assert not torch.equal(a, z0)


def test_sgld_noise_reproducible_by_generator() -> None:
    model = make_model(bn=False)
    z0 = uniform(4, 3)
    kw = dict(steps=3, step_size=1.0, noise_std=0.01, grad_clip=None, clamp=None)
    a = sgld(model, z0, generator=torch.Generator().manual_seed(5), **kw)
    b = sgld(model, z0, generator=torch.Generator().manual_seed(5), **kw)
    c = sgld(model, z0, generator=torch.Generator().manual_seed(6), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_presets() -> None:
    model = make_model()
    z0 = uniform(4, 4)
    jem, jempp = SGLDConfig.jem(), SGLDConfig.jempp()
    assert (jem.steps, jem.step_size, jem.noise_std, jem.grad_clip) == (10, 1.0, 0.01, None)
    assert jem.clamp is False and jem.bn_train is False and jem.init == "uniform"
    assert jempp == SGLDConfig.sadajem()
    assert (jempp.steps, jempp.step_size, jempp.noise_std, jempp.grad_clip) == (10, 1.0, 0.0, 1.0)
    assert jempp.clamp is True and jempp.bn_train is True
    for s in (jem, jempp):
        z = s(model, z0)
        assert z.shape == z0.shape and torch.isfinite(z).all()


def test_sgld_clamp_grads_modes_and_input_untouched() -> None:
    model = make_model(scale=50.0)
    model.train()
    model.rest[0].eval()  # a mixed state must come back exactly
    modes = [m.training for m in model.modules()]
    seen: list[bool] = []
    model.rest[3].register_forward_pre_hook(lambda m, _: seen.append(m.training))
    stats = model.rest[3].running_mean.clone()
    z0 = uniform(8, 5)
    z0_copy = z0.clone()
    z = sgld(model, z0, steps=3, step_size=1.0, noise_std=0.1, clamp=(-0.5, 0.5), bn_train=True)
    assert z.min() >= -0.5 and z.max() <= 0.5 and not z.requires_grad
    assert torch.equal(z0, z0_copy)
    assert all(p.grad is None for p in model.parameters())
    assert [m.training for m in model.modules()] == modes
    assert seen == [True] * 3 and not torch.equal(stats, model.rest[3].running_mean)
    seen.clear()
    stats = model.rest[3].running_mean.clone()
    sgld(model, z0, steps=2, step_size=1.0, bn_train=False)
    assert seen == [False] * 2 and torch.equal(stats, model.rest[3].running_mean)
    assert [m.training for m in model.modules()] == modes


def test_samplers_freeze_parameters_only_while_they_run() -> None:
    """Inside SGLD and the adversarial sampler no parameter requires grad (so a compiled model's
    backward computes input gradients only); afterwards each flag is exactly as before, a
    parameter frozen by the user included."""
    from ebjdat.attacks import adversarial_samples

    model = make_model()
    model.rest[-1].bias.requires_grad_(False)
    before = [p.requires_grad for p in model.parameters()]
    seen: list[bool] = []
    model.conv1.register_forward_pre_hook(
        lambda m, _: seen.append(any(p.requires_grad for p in model.parameters()))
    )
    z0 = uniform(4, 1)
    sgld(model, z0, steps=2, step_size=1.0, bn_train=True)
    adversarial_samples(model, z0, torch.arange(4))
    assert seen and not any(seen)
    assert [p.requires_grad for p in model.parameters()] == before
    assert all(p.grad is None for p in model.parameters())


def test_cuda_graph_switch_refuses_cpu_tensors() -> None:
    """The CUDA-graph path itself is tested in tests/test_cuda.py (GPU only); on CPU asking for
    it is a clear error, never a silent eager fallback."""
    from ebjdat.attacks import adversarial_samples

    model, z0 = make_model(), uniform(2, 0)
    with pytest.raises(ValueError, match="cuda_graph=True needs CUDA tensors"):
        sgld(model, z0, steps=1, step_size=1.0, cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph=True needs CUDA tensors"):
        adversarial_samples(model, z0, torch.arange(2), cuda_graph=True)


def test_cuda_graph_cache_key_is_stable_and_holds_no_model() -> None:
    """The captured-graph cache is keyed by the forward function: a fresh bound method of the
    same model must hit the same entry, and the key must not keep the model alive."""
    import gc
    import weakref

    from ebjdat.sampling.cuda_graphs import callable_key

    model = make_model()
    assert callable_key(model.logits_internal) == callable_key(model.logits_internal)
    assert callable_key(model.logits_internal) != callable_key(make_model().logits_internal)
    fn = torch.compile(model.logits_internal)
    assert callable_key(fn) == callable_key(fn)
    keys = [callable_key(model.logits_internal), callable_key(fn)]
    ref = weakref.ref(model)
    del model, fn
    gc.collect()
    assert ref() is None and len(keys) == 2


def test_sgld_under_no_grad_and_inference_mode() -> None:
    model = make_model(bn=False)
    z0 = uniform(2, 6)
    ref = sgld(model, z0, steps=2, step_size=0.1)
    with torch.no_grad():
        a = sgld(model, z0, steps=2, step_size=0.1)
    with torch.inference_mode():
        b = sgld(model, z0.clone(), steps=2, step_size=0.1)
    assert torch.equal(ref, a) and torch.equal(ref, b)


def test_class_conditional_raises_true_class_logit() -> None:
    model = make_model(bn=False, scale=5.0)
    z0 = uniform(10, 7)
    y = torch.arange(10)
    z = sgld(model, z0, steps=10, step_size=0.05, grad_clip=1.0, y=y)
    with torch.no_grad():
        before = model.logits_internal(z0).gather(1, y[:, None])
        after = model.logits_internal(z).gather(1, y[:, None])
    assert (after > before).all()


def test_sample_buffer_writes_chains_back() -> None:
    model = make_model(bn=False)
    buf = ReplayBuffer(20, SHAPE, generator=torch.Generator().manual_seed(0))
    sampler = SGLDConfig(steps=2, step_size=0.1)
    state = buf.generator.get_state()
    z = sampler.sample_buffer(model, buf, 5)
    buf.generator.set_state(state)
    _, idx = buf.sample(5)
    # idx may repeat: the last write to a slot wins
    last = {int(i): k for k, i in enumerate(idx)}
    for i, k in last.items():
        assert torch.equal(buf.buffer[i], z[k])


# -- PYLD (JEM++ YOPO) equivalence ---------------------------------------------------------------


def pyld_reference(
    conv1: nn.Module,
    rest: nn.Module,
    z0: torch.Tensor,
    *,
    n_steps: int = 10,
    in_steps: int = 5,
    pyld_lr: float = 0.2,
    eps: float = 1.0,
) -> torch.Tensor:
    """JEM++'s sample_q (sgld_lr 0, sgld_std 0) written out literally: at each outer step
    p = d(sum LSE)/d(conv1 output); then `in_steps` ascents of H = sum conv1(x) * p with the
    gradient clipped to +-eps, step pyld_lr, and x clipped to [-1, 1] after each."""
    x_k = z0.clone().requires_grad_(True)
    for _ in range(n_steps):
        layer_one_out = conv1(x_k)
        e_x = rest(layer_one_out).logsumexp(1).sum()
        p = torch.autograd.grad(e_x, [layer_one_out])[0].detach()
        tmp_inp = x_k.detach().clone().requires_grad_(True)
        for _ in range(in_steps):
            h = (conv1(tmp_inp) * p).sum()
            eta_grad = torch.autograd.grad(h, [tmp_inp])[0]
            tmp_inp = torch.clamp(
                tmp_inp.detach() + torch.clamp(eta_grad, -eps, eps) * pyld_lr, -1, 1
            ).requires_grad_(True)
        x_k = tmp_inp.detach().requires_grad_(True)
    return x_k.detach()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pyld_equals_clipped_sgld(dtype: torch.dtype) -> None:
    """Full 10-step chains in float64; in float32 rounding differences (5 x 0.2 vs 1.0) are
    amplified by this deliberately steep net over 10 steps, so there one outer step is
    compared, each from the same start."""
    model = make_model(seed=3, scale=30.0).to(dtype)
    model.train()  # JEM++ samples with BN in train mode
    z0 = uniform(8, 8, dtype)
    steps = 10 if dtype == torch.float64 else 1
    ref = pyld_reference(model.conv1, model.rest, z0, n_steps=steps)
    ours = sgld(model, z0, steps=steps, step_size=1.0, grad_clip=1.0, noise_std=0.0, bn_train=True)
    # The case exercises both the gradient clip and the [-1, 1] clamp.
    zr = z0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model.logits_internal(zr).logsumexp(1).sum(), zr)
    assert (g.abs() > 1).any() and (g.abs() < 1).any()
    assert (ours.abs() == 1).any() and (ours.abs() < 1).any()
    assert (ours - ref).abs().max() <= (1e-10 if dtype == torch.float64 else 1e-6)


# -- replay buffer -------------------------------------------------------------------------------


def test_reinit_frequency() -> None:
    buf = ReplayBuffer(500, (2,), reinit_freq=0.25, generator=torch.Generator().manual_seed(1))
    buf.buffer.fill_(5.0)  # outside [-1, 1]: fresh uniform starts are recognisable
    x0, idx = buf.sample(8000)
    assert idx.min() >= 0 and idx.max() < 500
    frac = (x0[:, 0] != 5.0).float().mean().item()
    assert abs(frac - 0.25) < 4 * (0.25 * 0.75 / 8000) ** 0.5
    fresh = x0[x0[:, 0] != 5.0]
    assert fresh.min() >= -1 and fresh.max() <= 1
    for p, expect in ((0.0, 0.0), (1.0, 1.0)):
        b = ReplayBuffer(10, (2,), reinit_freq=p)
        b.buffer.fill_(5.0)
        assert (b.sample(100)[0][:, 0] != 5.0).float().mean().item() == expect


def test_uniform_init_and_update() -> None:
    buf = ReplayBuffer(50, SHAPE, generator=torch.Generator().manual_seed(0))
    assert buf.buffer.shape == (50, *SHAPE) and len(buf) == 50
    assert buf.buffer.min() >= -1 and buf.buffer.max() <= 1 and buf.buffer.std() > 0.5
    idx = torch.tensor([3, 7, 11])
    x = torch.full((3, *SHAPE), 0.25)
    buf.update(idx, x)
    assert torch.equal(buf.buffer[idx], x)
    assert not (buf.buffer[0] == 0.25).all()


@pytest.mark.parametrize("init", ["uniform", "gaussian"])
def test_buffer_state_dict_round_trip(init: str) -> None:
    gaussians = None
    if init == "gaussian":
        imgs, labels = torch.rand(60, *SHAPE) * 2 - 1, torch.arange(60) % 3
        gaussians = ClassGaussians().fit(imgs, labels, 3)
    kw = dict(init=init, gaussians=gaussians, reinit_freq=0.3)
    a = ReplayBuffer(40, SHAPE, generator=torch.Generator().manual_seed(0), **kw)
    a.sample(8)
    f = io.BytesIO()
    torch.save(a.state_dict(include_gaussians=True), f)
    f.seek(0)
    state = torch.load(f, weights_only=True)
    b = ReplayBuffer(40, SHAPE, generator=torch.Generator().manual_seed(99), **kw)
    b.load_state_dict(state)
    assert torch.equal(a.buffer, b.buffer)
    for _ in range(3):
        (xa, ia), (xb, ib) = a.sample(16), b.sample(16)
        assert torch.equal(xa, xb) and torch.equal(ia, ib)


# -- class Gaussians -----------------------------------------------------------------------------


def synthetic(n: int = 3000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three 2-d classes with known means and covariances, well inside [-1, 1]."""
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[-0.5, 0.2], [0.3, -0.3], [0.1, 0.5]], dtype=torch.float64)
    chols = torch.tensor(
        [[[0.10, 0.0], [0.05, 0.08]], [[0.05, 0.0], [0.0, 0.12]], [[0.07, 0.0], [-0.03, 0.06]]],
        dtype=torch.float64,
    )
    labels = torch.arange(3 * n) % 3
    eps = torch.randn(3 * n, 2, generator=g, dtype=torch.float64)
    x = means[labels] + torch.einsum("nij,nj->ni", chols[labels], eps)
    return x.reshape(-1, 1, 1, 2), labels, means, chols @ chols.transpose(1, 2)


def test_gaussians_fit_and_sample_recover_class_statistics() -> None:
    x, labels, means, covs = synthetic()
    gs = ClassGaussians().fit(x, labels, 3, jitter=1e-4, dtype=torch.float64)
    assert gs.shape == (1, 1, 2) and gs.num_classes == 3
    torch.testing.assert_close(gs.means, means, atol=0.01, rtol=0)
    fitted_cov = gs.scale_tril @ gs.scale_tril.transpose(1, 2)
    torch.testing.assert_close(fitted_cov, covs + 1e-4 * torch.eye(2), atol=2e-3, rtol=0)
    g = torch.Generator().manual_seed(1)
    classes = torch.arange(30000) % 3
    s = gs.sample(30000, classes=classes, generator=g)
    assert s.shape == (30000, 1, 1, 2)
    for k in range(3):
        sk = s[classes == k].reshape(-1, 2)
        torch.testing.assert_close(sk.mean(0), means[k], atol=0.01, rtol=0)
        torch.testing.assert_close(
            torch.cov(sk.T), covs[k] + 1e-4 * torch.eye(2), atol=2e-3, rtol=0
        )
    # uniform class choice when classes is None
    s = gs.sample(30000, generator=g).reshape(-1, 2)
    torch.testing.assert_close(s.mean(0), means.mean(0), atol=0.01, rtol=0)


def test_fit_class_gaussians_takes_uint8_or_unit_float_pixels() -> None:
    """Training, evaluation and sampling fit the same Gaussians: pixels are converted to the
    model's [-1, 1] units by fit_class_gaussians itself, from uint8 or [0, 1] floats alike."""
    from ebjdat.sampling import fit_class_gaussians

    g = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (60, 1, 2, 2), dtype=torch.uint8, generator=g)
    labels = torch.arange(60) % 3
    want = ClassGaussians().fit(x8.float() / 255 * 2 - 1, labels, 3)
    for images in (x8, x8.float() / 255):
        got = fit_class_gaussians(images, labels, 3)
        assert got.shape == (1, 2, 2)
        torch.testing.assert_close(got.means, want.means)
        torch.testing.assert_close(got.scale_tril, want.scale_tril)


def test_sync_free_gaussian_draw_equals_the_grouped_one() -> None:
    """The draw CUDA uses for random classes (every row through every class, no host sync)
    gives the grouped draw's numbers; both are exercised here on CPU."""
    x, labels, _, _ = synthetic()
    gs = ClassGaussians().fit(x, labels, 3, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    eps = torch.randn(50, 2, generator=g, dtype=torch.float64)
    classes = torch.randint(3, (50,), generator=g)
    torch.testing.assert_close(
        gs._draw_all_classes(eps, classes), gs._draw_grouped(eps, classes), rtol=1e-12, atol=1e-12
    )


def test_gaussian_samples_clipped_and_buffer_balanced() -> None:
    x = torch.cat([torch.randn(200, 4) * 0.5 + 0.9, torch.randn(200, 4) * 0.05 - 0.2])
    labels = torch.cat([torch.zeros(200), torch.ones(200)]).long()
    gs = ClassGaussians().fit(x, labels, 2)
    s = gs.sample(2000, generator=torch.Generator().manual_seed(0))
    assert s.min() >= -1 and s.max() <= 1 and (s == 1).any()
    buf = ReplayBuffer(
        400, (4,), init="gaussian", gaussians=gs, generator=torch.Generator().manual_seed(0)
    )
    assert buf.buffer.min() >= -1 and buf.buffer.max() <= 1
    # size/K draws per class: the second half of the classes sits near -0.2 with small spread
    near = (buf.buffer - (-0.2)).abs().max(dim=1).values < 0.3
    assert near.sum().item() == 200


def test_gaussians_state_dict_weights_only() -> None:
    x, labels, _, _ = synthetic(50)
    gs = ClassGaussians().fit(x, labels, 3)
    f = io.BytesIO()
    torch.save(gs.state_dict(), f)
    f.seek(0)
    other = ClassGaussians()
    other.load_state_dict(torch.load(f, weights_only=True))
    assert torch.equal(other.means, gs.means) and other.shape == gs.shape
    a = gs.sample(7, generator=torch.Generator().manual_seed(3))
    b = other.sample(7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="class 3"):
        ClassGaussians().fit(x, labels, 4)


def test_buffer_update_with_repeated_slots_is_last_wins() -> None:
    """A slot drawn twice in one batch keeps the batch's last chain, as a sequential loop of
    writes would: never whichever thread happened to write last."""
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        buf = ReplayBuffer(8, (3, 16, 16), generator=torch.Generator().manual_seed(1))
        idx = torch.randint(0, 8, (64,), generator=g)  # many repeats
        x = torch.randn(64, 3, 16, 16, generator=g)
        want = buf.buffer.clone()
        for i, slot in enumerate(idx.tolist()):  # reference: one write at a time
            want[slot] = x[i]
        buf.update(idx, x)
        assert torch.equal(buf.buffer, want)


def test_a_plain_classifier_samples_as_its_energy_model() -> None:
    """A module of [0, 1] images needs no lambda: the samplers read it through the one unit
    conversion, exactly as when it is wrapped in ebjdat.Classifier."""
    from ebjdat import AdvConfig, Classifier, SGLDConfig, adversarial_samples

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(SHAPE), 5)).double()
    z0 = uniform(6, 7, torch.float64)
    y = torch.arange(6) % 5
    chain = SGLDConfig(steps=3, step_size=0.1, noise_std=0.01)
    plain = chain(net, z0, generator=torch.Generator().manual_seed(1))
    wrapped = chain(Classifier(net, 5), z0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain, wrapped) and not torch.equal(plain, z0)
    lam = chain(
        net, z0, generator=torch.Generator().manual_seed(1), logits_fn=lambda z: net((z + 1) / 2)
    )
    assert torch.equal(plain, lam)
    adv = AdvConfig(steps=2)
    a = adversarial_samples(net, z0, y, adv, generator=torch.Generator().manual_seed(2))
    b = adversarial_samples(
        Classifier(net, 5), z0, y, adv, generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(a, b)
