"""The faithful eager reference of the official iteration (ebjdat/benchmarks/official.py)
computes the same loss and gradients as our trainer's `official` preset on the same inputs,
buffer draws and (zero) adversarial starts.

What differs is only the optimisation itself, and that is exact here:
- chunks of 2 under BN eval mode are per-sample computations;
- the clean logits of the perception loss are the same numbers whether cached or recomputed,
  and sampleXadv's separate f(x~, y) forward repeats the perception loss's f.classify(x~) (the
  two graphs of x~ back-propagate to the sum of their gradients);
- PYLD's 10 x 5 x 0.2 inner steps equal 10 clipped steps of size 1 because conv1 is linear
  (see docs/method-notes.md, 'PYLD equals clipped SGLD');
- the second f(x_p_d) forward repeats the first's output (train-mode BN uses batch statistics)
  and only moves running statistics after they were read; with it the official loop forwards
  x_adv twice, and the preset's train.official_bn_updates repeats both forwards without graphs,
  so that the BN running statistics after the step agree too.
Everything runs in float64, so the tolerance is rounding only."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from ebjdat.benchmarks.official import OfficialSettings, official_loss
from ebjdat.models import JEM
from ebjdat.train import config
from ebjdat.train.trainer import Trainer


def test_reference_computes_the_official_preset_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config.load_preset("official")
    for assignment in [
        "data.dataset=synthetic",
        "model.arch=wrn-10-1",
        "data.batch_size=4",
        "data.labelled_batch_size=4",
        "sgld.buffer_size=8",
        "sgld.init=uniform",
        "sgld.reinit_freq=0",
        "adv.random_start=false",
        "train.eval_limit=0",
        "train.select_metric=val_acc",  # no robust validation runs
        "optim.lr=0",
        "optim.weight_decay=0",
        "data.noise_std=0",
    ]:
        config.override(cfg, assignment)
    trainer = Trainer(
        config=cfg.validate(), out_dir=tmp_path, progress_bar=False, log=lambda m: None
    )
    trainer.model.double()
    reference = copy.deepcopy(trainer.model)

    g = torch.Generator().manual_seed(0)
    x_pos = torch.rand(4, 3, 32, 32, generator=g, dtype=torch.float64)
    x_lab = torch.rand(4, 3, 32, 32, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 7, 3])
    z0 = torch.rand(4, 3, 32, 32, generator=g, dtype=torch.float64) * 2 - 1
    idx = torch.arange(4)
    monkeypatch.setattr(trainer.buffer, "sample", lambda n: (z0.clone(), idx))
    monkeypatch.setattr(trainer.buffer, "update", lambda i, z: None)

    terms = trainer.train_step(x_pos, x_lab, y)
    want = official_loss(
        reference,
        JEM.to_internal(x_pos),
        JEM.to_internal(x_lab),
        y,
        buffer=torch.zeros(8, 3, 32, 32, dtype=torch.float64),
        init_random=None,
        s=OfficialSettings(),
        x_q0=(z0.clone(), idx),
        adv_start=torch.zeros_like(x_lab),
    )
    torch.testing.assert_close(terms.total.detach(), want.detach(), rtol=1e-9, atol=1e-9)
    want.backward()
    for (name, p), q in zip(trainer.model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-7, atol=1e-9, msg=name)
    # The running statistics too, through the official loop's extra train-mode forwards.
    ours, theirs = dict(trainer.model.named_buffers()), dict(reference.named_buffers())
    assert ours.keys() == theirs.keys() and any("running_mean" in k for k in ours)
    for name, value in ours.items():
        torch.testing.assert_close(value, theirs[name], rtol=1e-9, atol=1e-12, msg=name)


def test_reference_init_draws_from_the_class_gaussians() -> None:
    """JEM++'s init_random as the reference runs it: each image from a uniformly chosen class's
    Gaussian, clipped to [-1, 1]; checked against the known means and covariances."""
    from ebjdat.benchmarks.official import class_gaussian_init

    means = torch.tensor([[-0.5, 0.2], [0.4, -0.1]])
    cov = torch.tensor([[[0.01, 0.004], [0.004, 0.02]], [[0.03, -0.01], [-0.01, 0.01]]])
    init = class_gaussian_init(means, torch.linalg.cholesky(cov), (2, 1, 1))
    torch.manual_seed(0)
    x = init(4000).view(4000, 2)
    assert x.abs().max() <= 1
    k = (x[:, 0] > 0).long()  # the two classes are far apart along the first coordinate
    assert 0.45 < k.float().mean() < 0.55
    for c in range(2):
        xc = x[k == c]
        torch.testing.assert_close(xc.mean(0), means[c], atol=0.012, rtol=0)
        torch.testing.assert_close(torch.cov(xc.T), cov[c], atol=0.004, rtol=0)
