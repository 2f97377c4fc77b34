"""Training: config and presets, the loss against hand computation, checkpoints, a short digits
run, divergence rollback, SAM and a 2-process DDP run (faults and resume: test_faults.py; CLI
misuse: test_cli_misuse_train.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ebjdat import checkpoint
from ebjdat.checkpoint import CheckpointError
from ebjdat.train import config, losses
from ebjdat.train.config import ConfigError
from ebjdat.train.trainer import Trainer, TrainingStopped

# A digits run small enough for the suite: seconds per epoch.
TINY = [
    "model.arch=wrn-10-1",
    "sgld.buffer_size=128",
    "sgld.steps=3",
    "adv.steps=2",
    "train.eval_limit=64",
    "train.eval_steps=3",
    "optim.warmup_iters=0",
    "optim.lr=0.003",
    "data.batch_size=32",
    "data.labelled_batch_size=32",
    "train.sample_grid=16",
]


def tiny_config(*extra: str, preset: str = "digits") -> config.Config:
    cfg = config.load_preset(preset)
    for assignment in (*TINY, *extra):
        config.override(cfg, assignment)
    return cfg.validate()


def test_every_preset_loads_and_validates() -> None:
    names = config.preset_names()
    assert {
        "digits",
        "digits-jem",
        "digits-pgd-at",
        "ebjdat-jempp",
        "ebjdat-sadajem",
        "ebjdat-jem",
        "jem",
        "pgd-at",
        "official",
    } <= set(names)
    for name in names:
        cfg = config.load_preset(name).validate()
        assert cfg.description
        assert config.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    official = config.load_preset("official")
    assert not official.adv.project and official.adv.objective == "logit"
    assert official.adv.perception_loss and official.loss.align_positives == "unpaired"
    assert official.adv.eps == pytest.approx(4 / 255)  # 8/255 in [-1, 1] units
    assert official.optim.warmup_from == "zero"
    assert official.sgld.gaussian_fit == "augmented" and official.train.official_bn_updates
    sound = config.load_preset("ebjdat-jempp")
    assert sound.adv.project and sound.loss.align_positives == "paired"
    assert sound.optim.warmup_from == "one" and sound.sgld.gaussian_fit == "clean"
    assert not any(
        config.load_preset(name).train.official_bn_updates
        for name in config.preset_names()
        if name != "official"
    )
    assert config.load_preset("ebjdat-sadajem").optim.name == "sam"
    assert config.load_preset("digits-pgd-at").loss.w_px == 0
    assert not config.load_preset("digits-jem").adv.enabled


def test_overrides_and_errors_name_the_key(tmp_path: Path) -> None:
    cfg = config.load_preset("digits")
    config.override(cfg, "sgld.grad_clip=none")
    config.override(cfg, "optim.decay_epochs=[3, 5]")
    config.override(cfg, "adv.project=false")
    assert cfg.sgld.grad_clip is None and cfg.optim.decay_epochs == [3, 5]
    assert cfg.adv.project is False
    for bad, message in [
        ("sgld.steps=many", "sgld.steps: cannot use 'many' as int"),
        ("sgld.nope=1", "unknown key sgld.nope"),
        ("nosection.x=1", "unknown section"),
        ("steps", "must look like section.key=value"),
    ]:
        with pytest.raises(ConfigError, match=message):
            config.override(config.load_preset("digits"), bad)
    with pytest.raises(ConfigError, match="adv.objective must be one of"):
        config.override(config.load_preset("digits"), "adv.objective=energy").validate()
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        config.load_preset("nope")
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text('extends = "digits"\n[sgld]\nstepz = 3\n')
    with pytest.raises(ConfigError, match="bad.toml: unknown key sgld.stepz"):
        config.load_file(bad_file)
    bad_file.write_text("[sgld\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load_file(bad_file)
    with pytest.raises(ConfigError, match="train.sync_every must be >= 1"):
        config.override(config.load_preset("digits"), "train.sync_every=0").validate()
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.cuda_graphs needs a CUDA device"):
            Trainer(
                config=tiny_config("train.cuda_graphs=true"),
                out_dir=tmp_path / "graphs",
                device="cpu",
            )


def test_loss_terms_against_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    pos, q, lab, adv = (torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(4))
    y = torch.tensor([0, 1, 2, 3, 0])

    def energy(logits: torch.Tensor) -> torch.Tensor:
        return -torch.logsumexp(logits, 1)

    def ce(logits: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, y)

    for positives in ("paired", "unpaired"):
        cfg = config.LossConfig(
            w_px=0.7, w_ce=1.3, w_align=0.2, w_ce_adv=0.9, align_positives=positives
        )
        terms = losses.eb_jdat_loss(cfg, losses.Forward(pos, q, lab, adv), y, True)
        align_pos = energy(lab) if positives == "paired" else energy(pos)
        want = (
            0.7 * (energy(pos).mean() - energy(q).mean())
            + 1.3 * ce(lab)
            + 0.2 * (align_pos.mean() - energy(adv).mean())
            + 0.9 * ce(adv)
        )
        torch.testing.assert_close(terms.total, want)
    need = losses.needs(config.LossConfig(w_px=0, w_ce=0, w_align=0, w_ce_adv=1), True)
    assert need == {
        "samples": False,
        "adversarial": True,
        "positives": False,
        "labelled": False,
        "align": False,
        "ce_adv": True,
    }


def test_warmup_schedule_against_hand_values() -> None:
    """optim.warmup_from: "one" gives step i (from 0) lr (i + 1) / n, "zero" the official
    lr i / n (step 0 at LR 0); after n steps both are lr, then decayed per epoch."""
    from ebjdat.train.schedule import learning_rate

    one = config.OptimConfig(lr=0.01, warmup_iters=1000, decay_epochs=[2, 4], decay_rate=0.2)
    zero = config.OptimConfig(
        lr=0.01, warmup_iters=1000, decay_epochs=[2, 4], decay_rate=0.2, warmup_from="zero"
    )
    for i, want_one, want_zero in [
        (0, 1e-5, 0.0),
        (1, 2e-5, 1e-5),
        (499, 0.005, 0.00499),
        (999, 0.01, 0.00999),
        (1000, 0.01, 0.01),
        (5000, 0.01, 0.01),
    ]:
        assert learning_rate(one, i, 1) == pytest.approx(want_one, rel=1e-12, abs=0)
        assert learning_rate(zero, i, 1) == pytest.approx(want_zero, rel=1e-12, abs=0)
    assert learning_rate(zero, 0, 0) == 0.0  # exactly: the first step only seeds momentum
    assert learning_rate(zero, 2000, 2) == pytest.approx(0.002)  # one decay
    assert learning_rate(zero, 4000, 4, scale=0.5) == pytest.approx(0.0002)  # two, a rollback
    assert learning_rate(zero, 10, 3, scale=0.5) == pytest.approx(0.00005)  # warm-up: no decay
    off = config.OptimConfig(lr=0.01, warmup_iters=0, warmup_from="zero")
    assert learning_rate(off, 0, 0) == 0.01  # no warm-up: full rate from the first step
    with pytest.raises(ConfigError, match="optim.warmup_from must be one of"):
        config.override(config.load_preset("digits"), "optim.warmup_from=two").validate()


def test_augmented_gaussian_fit_is_one_augmented_pass() -> None:
    """sgld.gaussian_fit = "augmented" fits the class Gaussians to one shuffled pass over the
    training split through the labelled stream's pad-crop, flip and noise, from a generator of
    its own: its means and covariances equal those of the same pass recomputed here image by
    image, the streamed path fits the same, and no other random stream of the build moves."""
    import torch.nn.functional as F

    from ebjdat.data import load_split_tensors
    from ebjdat.train.build import build_training, gaussian_fit_seed

    extra = ("data.augment_flip=true", "data.augment_pad=2", "data.workers=0")

    def build(*more: str):  # noqa: ANN202 - TrainingParts and the global RNG state after it
        parts = build_training(config=tiny_config(*extra, *more), device="cpu", log=lambda m: None)
        return parts, torch.get_rng_state()

    clean, clean_rng = build()
    aug, aug_rng = build("sgld.gaussian_fit=augmented")
    streamed, _ = build("sgld.gaussian_fit=augmented", "data.loader=stream")

    # The same pass by hand: the permutation, then per batch the crop offsets, flips and noise.
    x, y = load_split_tensors("digits", "train")
    x = x.double()
    n, (c, h, w), b, pad = len(x), x.shape[1:], aug.cfg.data.labelled_batch_size, 2
    g = torch.Generator().manual_seed(gaussian_fit_seed(aug.cfg.train.seed))
    perm = torch.randperm(n, generator=g)
    images, labels = [], []
    for start in range(0, n, b):
        idx = perm[start : start + b]
        offsets = torch.randint(0, 2 * pad + 1, (len(idx), 2), generator=g)
        flips = torch.rand(len(idx), generator=g) < 0.5
        noise = torch.randn((len(idx), c, h, w), generator=g).double()
        for j, i in enumerate(idx.tolist()):
            r, q = offsets[j].tolist()
            padded = F.pad(x[i : i + 1], (pad,) * 4, mode="reflect")[0]
            crop = padded[:, r : r + h, q : q + w]
            crop = crop.flip(-1) if flips[j] else crop
            images.append(2 * (crop + 0.03 / 2 * noise[j]) - 1)  # noise 0.03 in [-1, 1] units
            labels.append(int(y[i]))
    z, labels = torch.stack(images).flatten(1), torch.tensor(labels)
    gaussians = aug.buffer.gaussians
    for k in range(aug.num_classes):
        zk = z[labels == k]
        mean = zk.mean(0)
        cov = (zk - mean).T @ (zk - mean) / len(zk) + 1e-4 * torch.eye(zk.shape[1])
        torch.testing.assert_close(gaussians.means[k].double(), mean, atol=1e-6, rtol=0)
        torch.testing.assert_close(
            gaussians.covariance_matrix(k).double(), cov, atol=1e-5, rtol=1e-4
        )
        clean_mean = (2 * x[y == k] - 1).flatten(1).mean(0)
        torch.testing.assert_close(clean.buffer.gaussians.means[k].double(), clean_mean)
        assert (gaussians.means[k].double() - clean_mean).abs().max() > 1e-2
    for key, tensor in gaussians.state_dict().items():
        torch.testing.assert_close(streamed.buffer.gaussians.state_dict()[key], tensor, msg=key)
    # Only the Gaussians (and the buffer drawn from them) differ.
    assert torch.equal(clean_rng, aug_rng)
    for p, q in zip(clean.model.parameters(), aug.model.parameters(), strict=True):
        assert torch.equal(p, q)
    for a, b_ in [
        (clean.labelled.generator, aug.labelled.generator),
        (clean.positives.generator, aug.positives.generator),
        (clean.buffer.generator, aug.buffer.generator),
        (clean.generator, aug.generator),
    ]:
        assert torch.equal(a.get_state(), b_.get_state())
    assert not torch.equal(clean.buffer.buffer, aug.buffer.buffer)


def test_checkpoint_is_atomic_and_safe(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    checkpoint.save(path, {"w": torch.arange(3), "meta": {"epoch": 2, "seeds": [1, 2]}})
    state = checkpoint.load(path)
    assert torch.equal(state["w"], torch.arange(3)) and state["meta"]["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind
    old = os.umask(0o027)
    try:
        checkpoint.save(path, {"w": torch.arange(3)})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640  # the umask decides, as for any new file
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        checkpoint.load(path)
    torch.save({"format": "something else"}, path)
    with pytest.raises(CheckpointError, match="not an ebjdat checkpoint"):
        checkpoint.load(path)

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, ("echo pwned",))

    torch.save({"format": checkpoint.FORMAT, "version": 1, "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="pickled Python object") as refused:
        checkpoint.load(path)  # weights_only refuses to unpickle it
    assert "weights_only" not in str(refused.value)  # torch's advice to disable it: never shown
    path.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError) as garbage:
        checkpoint.load(path)
    assert "weights_only" not in str(garbage.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "missing.pt")


def test_short_digits_run_learns(tmp_path: Path) -> None:
    trainer = Trainer(
        config=tiny_config("train.epochs=3"), out_dir=tmp_path, progress_bar=False, log=print
    )
    before = trainer.evaluate()["val_acc"]
    last = trainer.fit()
    assert last["val_acc"] > max(0.5, before + 0.3), (before, last)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert {"train_loss", "val_acc", "val_robust_acc", "train_e_q", "lr"} <= set(rows[-1])
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
    assert sorted(p.name for p in (tmp_path / "samples").iterdir())[-1] == "epoch_0003.png"
    from PIL import Image

    assert Image.open(tmp_path / "samples" / "epoch_0003.png").size[0] >= 400  # readable


def test_divergence_rolls_back_then_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A NaN injected into one iteration's loss: rollback to the last good checkpoint, lower
    learning rate, fresh seed, training completes. A NaN every time: stop after max_retries,
    with the last good checkpoint intact."""
    real = losses.eb_jdat_loss
    poisoned = {"once_at": 45, "always": False}  # epoch 2 (39 iterations per epoch)
    logs: list[str] = []

    def poison(cfg, fwd, y, adv):  # noqa: ANN001, ANN202
        terms = real(cfg, fwd, y, adv)
        if trainer.state.iteration == poisoned["once_at"] or poisoned["always"]:
            poisoned["once_at"] = -1
            terms.total = terms.total * float("nan")
        return terms

    monkeypatch.setattr("ebjdat.train.trainer.eb_jdat_loss", poison)
    trainer = Trainer(
        config=tiny_config("train.epochs=2"), out_dir=tmp_path, progress_bar=False, log=logs.append
    )
    trainer.fit()
    assert trainer.state.epoch == 2 and trainer.state.retries == 1
    assert trainer.state.lr_scale == pytest.approx(0.5)
    assert any("divergence" in m and "rolled back to epoch 1" in m for m in logs), logs
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())

    good = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    poisoned["always"] = True
    trainer.cfg.train.epochs = 3
    with pytest.raises(TrainingStopped, match="rollbacks did not help"):
        trainer.fit()
    after = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    assert after["progress"]["epoch"] == good["progress"]["epoch"] == 2
    assert all(torch.equal(after["model"][k], v) for k, v in good["model"].items())


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:  # noqa: ANN003
    return subprocess.run(
        [sys.executable, "-m", "ebjdat.cli.train", "--no-progress", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        **kw,
    )


def _sets(*extra: str) -> list[str]:
    return [arg for a in (*TINY, *extra) for arg in ("--set", a)]


def test_ddp_two_gloo_processes(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "ebjdat.cli.train",
            "--no-progress",
            "--out",
            str(tmp_path / "ddp"),
            *_sets("train.epochs=1", "train.eval_limit=32"),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    from ebjdat.data import load_split_tensors

    assert result.returncode == 0, result.stderr[-3000:]
    rows = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1  # rank 0 alone logs
    state = checkpoint.load(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    buffers = [r["buffer"]["buffer"] for r in state["ranks"]]
    assert not torch.equal(buffers[0], buffers[1])  # one replay buffer per rank
    # Sharded: each rank's epoch is half the split (tests/test_sharding.py checks coverage).
    n = len(load_split_tensors("digits", "train")[1])
    assert [r["labelled"]["num_samples"] for r in state["ranks"]] == [n // 2, n // 2]
    assert "data parallel over 2 processes" in result.stdout


@pytest.mark.parametrize("positives", ["unpaired", "paired"])
def test_official_bn_updates_move_only_the_running_statistics(
    monkeypatch: pytest.MonkeyPatch, positives: str
) -> None:
    """train.official_bn_updates: after the adversarial sampler the step forwards, as the
    official loop does, the alignment term's positives and the adversarial batch twice in train
    mode. In float64, the BN running statistics after one step equal those of a copy of the model
    taken after the sampler and given those forwards by hand; the loss, the gradients and the
    updated weights equal those of the step without the switch (one forward per input)."""
    import copy

    from ebjdat.models import JEM

    g = torch.Generator().manual_seed(0)
    x_pos, x_lab = (torch.rand(8, 1, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    z0 = torch.rand(8, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1

    def step(on: bool) -> tuple[Trainer, losses.LossTerms, dict[str, torch.Tensor]]:
        cfg = tiny_config(
            "model.norm=batch",
            "data.batch_size=8",
            "data.labelled_batch_size=8",
            "sgld.buffer_size=16",
            "sgld.bn_train=true",  # the sampler moves the statistics too, as JEM++'s does
            "train.channels_last=false",
            f"loss.align_positives={positives}",
            f"train.official_bn_updates={str(on).lower()}",
        )
        trainer = Trainer(config=cfg, progress_bar=False, log=lambda m: None)
        trainer.model.double()
        monkeypatch.setattr(trainer.buffer, "sample", lambda n: (z0.clone(), torch.arange(8)))
        monkeypatch.setattr(trainer.buffer, "update", lambda i, z: None)
        sampler, seen = trainer._adversarial, {}

        def adversarial(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            seen["z_adv"] = sampler(z, labels)
            seen["model"] = copy.deepcopy(trainer.model)  # the statistics after the sampler
            return seen["z_adv"]

        monkeypatch.setattr(trainer, "_adversarial", adversarial)
        return trainer, trainer.train_step(x_pos, x_lab, y), seen

    def bn_stats(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v for k, v in model.named_buffers() if "running" in k or "num_batches" in k}

    off, off_terms, off_seen = step(False)
    on, on_terms, on_seen = step(True)
    assert torch.equal(on_terms.total, off_terms.total)
    for (name, p), q in zip(on.model.named_parameters(), off.model.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name
        assert torch.equal(p, q), name
    torch.testing.assert_close(on_seen["z_adv"], off_seen["z_adv"], rtol=0, atol=0)
    z_align = JEM.to_internal(x_pos if positives == "unpaired" else x_lab)
    for trainer, seen, inputs in [
        (off, off_seen, [off_seen["z_adv"]]),  # the loss's own forward only
        (on, on_seen, [z_align, on_seen["z_adv"], on_seen["z_adv"]]),
    ]:
        by_hand = seen["model"].train()
        with torch.no_grad():
            for z in inputs:
                by_hand.logits_internal(z)
        want = bn_stats(by_hand)
        assert want and any("running_var" in k for k in want)
        for key, value in bn_stats(trainer.model).items():
            torch.testing.assert_close(value, want[key], rtol=1e-12, atol=1e-12, msg=key)
    moved = [k for k, v in bn_stats(on.model).items() if not torch.equal(v, bn_stats(off.model)[k])]
    assert moved


def test_sam_steps_match_hand_computation() -> None:
    """ASAM on f(w) = sum(w^2): e = rho * w^2 g / || |w| g ||, then SGD with the gradient at
    w + e, applied from w."""
    from ebjdat.train.sam import SAM

    w0 = torch.tensor([1.0, -2.0, 0.5])
    w = torch.nn.Parameter(w0.clone())
    opt = SAM([w], torch.optim.SGD, rho=0.5, adaptive=True, lr=0.1)
    (w * w).sum().backward()
    opt.first_step()
    g = 2 * w0
    e = 0.5 * w0**2 * g / (w0.abs() * g).norm()
    torch.testing.assert_close(w.detach(), w0 + e)
    opt.zero_grad()
    (w * w).sum().backward()
    opt.second_step()
    torch.testing.assert_close(w.detach(), w0 - 0.1 * 2 * (w0 + e))


def test_load_classifier_from_a_checkpoint(tmp_path: Path) -> None:
    import ebjdat

    trainer = Trainer(
        config=tiny_config("train.epochs=0"), out_dir=tmp_path, progress_bar=False, log=print
    )
    trainer.fit()
    model = ebjdat.load_classifier(str(tmp_path / "checkpoints" / "last.pt"))
    assert not model.training
    x = trainer.val_x[:5]
    torch.testing.assert_close(model(x), trainer.model.eval()(x))


@pytest.mark.parametrize(
    ("switch", "rtol"),
    [
        ("train.channels_last=true", 1e-5),  # the same function; float rounding only
        ("train.autocast=bf16", 5e-2),  # bfloat16 forwards: ~8 bits of mantissa
        ("train.compile=true", 1e-4),  # inductor reorders float arithmetic
    ],
)
def test_speed_switches_keep_the_loss(tmp_path: Path, switch: str, rtol: float) -> None:
    """The first iteration's loss, same seeds and batches, with and without each switch."""

    def first_loss(*extra: str) -> float:
        torch.manual_seed(0)
        cfg = tiny_config(
            "train.channels_last=false", "train.eval_limit=0", "train.select_metric=val_acc", *extra
        )
        trainer = Trainer(
            config=cfg, out_dir=tmp_path / str(len(extra)), progress_bar=False, log=lambda m: None
        )
        x_pos, _ = next(iter(trainer.positives))
        x_lab, y = next(iter(trainer.labelled))
        return trainer.train_step(x_pos, x_lab, y).total.item()

    base = first_loss()
    assert first_loss(switch) == pytest.approx(base, rel=rtol)


def _terms(total: float, e_q: float = 0.0, acc: float = 1.0) -> losses.LossTerms:
    t = torch.tensor
    return losses.LossTerms(
        t(total), t(total), None, None, None, t(0.5), t(e_q), None, acc=t(acc), acc_adv=None
    )


def test_step_watch_defers_checks_to_sync_points() -> None:
    """Bad steps are folded in on the device and reported at the next check with the first bad
    iteration and its values; means are exact; reset forgets a bad step."""
    from ebjdat.train.watch import Diverged, StepWatch

    watch = StepWatch(max_loss=100.0, max_energy=10.0, device=torch.device("cpu"))
    watch.add(_terms(1.0, acc=0.0), 5)
    watch.add(_terms(3.0, acc=1.0), 6)
    watch.check()  # nothing bad yet
    assert watch.means() == pytest.approx(
        {"total": 2.0, "px": 2.0, "e_pos": 0.5, "e_q": 0.0, "acc": 0.5}
    )
    watch.add(_terms(2.0, e_q=11.0), 7)  # an exploding energy
    watch.add(_terms(float("nan")), 8)  # and a NaN later: the first one is reported
    with pytest.raises(Diverged, match=r"energies \[11.0, 0.5\] at iteration 7"):
        watch.check()
    watch.reset()
    watch.check()
    assert watch.means() == {}
    watch.add(_terms(200.0), 9)  # |loss| above max_loss
    with pytest.raises(Diverged, match="loss 200, .* at iteration 9"):
        watch.check()


def test_no_checkpoint_after_an_unchecked_bad_step(tmp_path: Path) -> None:
    from ebjdat.train.watch import Diverged

    trainer = Trainer(
        config=tiny_config("train.epochs=1"), out_dir=tmp_path, progress_bar=False, log=print
    )
    trainer.save("last.pt")
    before = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    trainer.watch.add(_terms(float("inf")), 0)
    with pytest.raises(Diverged):
        trainer.save("last.pt")
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == before
