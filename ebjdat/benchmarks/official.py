"""A faithful eager re-implementation of one official EB-JDAT-JEM++ training iteration
(train_jempp.py + sampleXadv), for comparison only: never used to train. docs/method-notes.md
describes it in 'One official training iteration', 'The official adversarial sampler' and
'PYLD equals clipped SGLD'.

It keeps every cost the official loop pays:
- f(x_p_d) is forwarded before sampling and again for the alignment term;
- the PYLD sampler: 10 outer steps, each a full forward/backward to the conv1 output, then 5
  inner steps ascending H = sum(conv1(x) * p), with unfused clip/step/clamp;
- the adversarial sampler in chunks of 2 under f.eval() with sampleXadv's three forwards per
  step (f(x~, y) for the objective, then f.classify(x) and f.classify(x~) again inside the
  perception loss, so two graphs of x~ are back-propagated), unfused sign/step/clamp, no eps-ball
  projection;
- the replay buffer's reinitialisation as `sample_p_0` does it, with JEM++'s `init_random`: one
  class-Gaussian draw per image of the batch, sample by sample, at every iteration.
Everything runs on this package's model classes (`JEM.logits_internal` is the official
`classify`; logsumexp of it is `f`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Timer = Callable[[str], contextlib.AbstractContextManager]


@contextlib.contextmanager
def _no_timer(name: str) -> Iterator[None]:
    yield


@dataclass
class OfficialSettings:
    """train.sh values of the JEM++ variant (docs/method-notes.md, 'The official
    hyperparameters'); eps and alpha in [-1, 1] units."""

    n_steps: int = 10
    in_steps: int = 5
    pyld_lr: float = 0.2
    pyld_eps: float = 1.0  # the inner gradient clip
    reinit_freq: float = 0.05
    eps: float = 8 / 255
    alpha: float = 2 / 255
    chunk: int = 2
    p_x_weight: float = 1.0
    p_y_given_x_weight: float = 1.0
    p_x_xadv_weight: float = 0.1
    p_y_given_xadv_weight: float = 1.0


def _f(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.logits_internal(x).logsumexp(1)


def sample_p_0(
    buffer: torch.Tensor, batch: int, reinit_freq: float, init_random: Callable[[int], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    inds = torch.randint(0, buffer.size(0), (batch,), device=buffer.device)
    buffer_samples = buffer[inds]
    random_samples = init_random(batch)
    choose = (torch.rand(batch, device=buffer.device) < reinit_freq).float()[:, None, None, None]
    return choose * random_samples + (1 - choose) * buffer_samples, inds


def class_gaussian_init(
    means: torch.Tensor, scale_tril: torch.Tensor, shape: tuple[int, ...]
) -> Callable[[int], torch.Tensor]:
    """JEM++'s `init_random`: for each of the n images a uniformly chosen class and one draw
    from that class's MultivariateNormal, filled in one by one on the host, clipped to [-1, 1].
    (means [K, D] and scale_tril [K, D, D] as ebjdat.sampling.ClassGaussians holds them.)"""
    dists = [
        torch.distributions.MultivariateNormal(mean, scale_tril=tril)
        for mean, tril in zip(means, scale_tril, strict=True)
    ]

    def init_random(n: int) -> torch.Tensor:
        new = torch.zeros(n, *shape)
        for i in range(n):
            k = int(torch.randint(len(dists), ()))
            new[i] = dists[k].sample().view(shape)
        return torch.clamp(new, -1, 1).to(means.device)

    return init_random


def pyld(model: nn.Module, x0: torch.Tensor, s: OfficialSettings) -> torch.Tensor:
    """The official YOPO/PYLD sampler (train mode): p from a full backward to conv1's output,
    then inner steps on the Hamiltonian through conv1 alone."""
    conv1 = model.backbone.conv1
    captured: dict[str, torch.Tensor] = {}

    def keep(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        captured["out"] = out

    x_k = x0.detach().clone()
    handle = conv1.register_forward_hook(keep)
    try:
        for _ in range(s.n_steps):
            x_k.requires_grad_(True)
            energy = _f(model, x_k).sum()
            (p,) = torch.autograd.grad(energy, captured["out"])
            x_k = x_k.detach()
            for _ in range(s.in_steps):
                x_k.requires_grad_(True)
                ham = (conv1(x_k) * p).sum()
                (g,) = torch.autograd.grad(ham, x_k)
                x_k = x_k.detach() + s.pyld_lr * torch.clamp(g, -s.pyld_eps, s.pyld_eps)
                x_k = torch.clamp(x_k, -1.0, 1.0)
    finally:
        handle.remove()
    return x_k.detach()


def _p_loss(clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    def unit(v: torch.Tensor) -> torch.Tensor:
        return v / (v.norm(dim=1, keepdim=True) + 1e-10)

    return ((unit(clean) - unit(adv)) ** 2).sum()


def sample_x_adv(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    s: OfficialSettings,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """sampleXadv: eval mode, chunks of 2, clean logits recomputed each step, no projection.
    `start` replaces the U(-eps, eps) random start (for equivalence tests)."""
    model.eval()
    outs = []
    for i in range(0, x.size(0), s.chunk):
        xc, yc = x[i : i + s.chunk], y[i : i + s.chunk]
        delta = (
            torch.empty_like(xc).uniform_(-s.eps, s.eps)
            if start is None
            else start[i : i + s.chunk]
        )
        x_adv = torch.clamp(xc + delta, -1.0, 1.0).detach()
        for _ in range(s.in_steps):
            x_adv.requires_grad_(True)
            energies = model.logits_internal(x_adv).gather(1, yc[:, None])  # f(x_adv_k, y)
            p_loss = _p_loss(model.logits_internal(xc), model.logits_internal(x_adv))
            (g,) = torch.autograd.grad(energies.sum() + p_loss, x_adv, retain_graph=True)
            x_adv = torch.clamp(x_adv.detach() + s.alpha * torch.sign(g), -1.0, 1.0)
        outs.append(x_adv.detach())
    model.train()
    return torch.cat(outs)


def official_loss(
    model: nn.Module,
    x_p_d: torch.Tensor,
    x_lab: torch.Tensor,
    y_lab: torch.Tensor,
    buffer: torch.Tensor,
    init_random: Callable[[int], torch.Tensor],
    s: OfficialSettings | None = None,
    *,
    timer: Timer = _no_timer,
    x_q0: tuple[torch.Tensor, torch.Tensor] | None = None,
    adv_start: torch.Tensor | None = None,
) -> torch.Tensor:
    """The official loss of one iteration, in the official order (internal [-1, 1] inputs).
    x_q0 = (samples, buffer indices) and adv_start pin the random draws (equivalence tests)."""
    s = s or OfficialSettings()
    model.train()
    with timer("loss_forward"):
        fp = _f(model, x_p_d)  # plc 'alltrain1': positives before sampling
    with timer("sgld"):
        x0, inds = (
            x_q0
            if x_q0 is not None
            else sample_p_0(buffer, x_p_d.size(0), s.reinit_freq, init_random)
        )
        x_q = pyld(model, x0, s)
        buffer[inds] = x_q
    with timer("loss_forward"):
        fq = _f(model, x_q)
        loss = s.p_x_weight * -(fp.mean() - fq.mean())
        loss = loss + s.p_y_given_x_weight * F.cross_entropy(model.logits_internal(x_lab), y_lab)
    with timer("adversarial"):
        x_adv = sample_x_adv(model, x_lab, y_lab, s, adv_start)
    with timer("loss_forward"):
        loss = loss + s.p_x_xadv_weight * -(_f(model, x_p_d).mean() - _f(model, x_adv).mean())
        loss = loss + s.p_y_given_xadv_weight * F.cross_entropy(model.logits_internal(x_adv), y_lab)
    return loss


def official_iteration(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x_p_d: torch.Tensor,
    x_lab: torch.Tensor,
    y_lab: torch.Tensor,
    buffer: torch.Tensor,
    init_random: Callable[[int], torch.Tensor],
    s: OfficialSettings | None = None,
    *,
    timer: Timer = _no_timer,
) -> float:
    loss = official_loss(model, x_p_d, x_lab, y_lab, buffer, init_random, s, timer=timer)
    with timer("loss_backward"):
        optimizer.zero_grad()
        loss.backward()
    with timer("optimizer"):
        if loss.abs().item() > 1e8:
            raise RuntimeError("official loop: loss exploded")
        optimizer.step()
    return loss.item()
