"""The weight average (train.ema_decay): its arithmetic against a float64 recurrence, what the
trainer validates and checkpoints, exact resume, and loading a checkpoint that lacks it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import assert_same, comparable
from test_train import tiny_config
from torch import nn

import ebjdat
from ebjdat import checkpoint
from ebjdat.checkpoint import CheckpointError
from ebjdat.train import config
from ebjdat.train.averaging import WeightAverage
from ebjdat.train.config import ConfigError
from ebjdat.train.trainer import Trainer


def test_average_is_the_ema_recurrence_in_float64() -> None:
    """w_avg = w_0, then w_avg <- decay * w_avg + (1 - decay) * w_t; float BatchNorm statistics
    are averaged the same way and the integer batch count follows the live model."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    decay = 0.9
    avg = WeightAverage(net, decay)
    expect: dict[str, torch.Tensor] = {}
    for step in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net.train()(torch.randn(8, 3))  # moves the running statistics and the batch count
        avg.update(net)
        for name, t in net.state_dict().items():
            if not t.is_floating_point():
                continue
            live = t.double()
            expect[name] = live.clone() if step == 0 else decay * expect[name] + (1 - decay) * live
    got = avg.module.state_dict()
    for name, value in expect.items():
        torch.testing.assert_close(got[name].double(), value, rtol=1e-6, atol=1e-6)
    assert int(got["1.num_batches_tracked"]) == 5 == int(net.state_dict()["1.num_batches_tracked"])
    assert avg.state_dict() == {"decay": decay, "steps": 5}


def test_decay_out_of_range_is_a_config_error() -> None:
    cfg = config.load_preset("digits")
    for bad in ("1.0", "-0.1"):
        config.override(cfg, f"train.ema_decay={bad}")
        with pytest.raises(ConfigError, match="train.ema_decay"):
            cfg.validate()


def test_trainer_validates_and_checkpoints_the_average(tmp_path: Path) -> None:
    """The checkpoint's "model" is the average (what ebjdat-eval and load_classifier read), its
    "live_model" the training weights, and the history's val_acc is the average's."""
    trainer = Trainer(
        config=tiny_config("train.epochs=1", "train.ema_decay=0.5"),
        out_dir=tmp_path,
        progress_bar=False,
        log=lambda m: None,
    )
    live_steps: list[dict[str, torch.Tensor]] = []
    step = trainer.train_step

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        out = step(*args, **kwargs)
        live_steps.append(
            {k: v.detach().double().clone() for k, v in trainer.model.state_dict().items()}
        )
        return out

    trainer.train_step = recording  # type: ignore[method-assign]
    trainer.fit()
    expect = dict(live_steps[0])
    for live in live_steps[1:]:
        expect = {k: 0.5 * expect[k] + 0.5 * v for k, v in live.items()}
    state = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    for name, value in expect.items():
        torch.testing.assert_close(state["model"][name].double(), value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state["live_model"][name].double(), live_steps[-1][name])
    assert state["ema"] == {"decay": 0.5, "steps": len(live_steps)}
    assert any(
        not torch.equal(state["model"][k], state["live_model"][k]) for k in state["model"]
    ), "the average must differ from the live weights after several steps"

    classifier = ebjdat.load_classifier(str(tmp_path / "checkpoints" / "last.pt"))
    averaged = trainer.evaluated_model.eval()
    x = trainer.val_x[:8]
    torch.testing.assert_close(classifier(x), averaged(x))
    from ebjdat.eval.robustness import clean_accuracy

    assert trainer.state.history[-1]["val_acc"] == clean_accuracy(
        averaged, trainer.val_x, trainer.val_y
    )


def test_resume_restores_the_average_exactly(tmp_path: Path) -> None:
    """Two epochs straight, against one epoch, a resume and a second: the same checkpoint."""
    sets = ("train.ema_decay=0.7",)

    def trainer(out: Path, epochs: int) -> Trainer:
        torch.manual_seed(0)
        return Trainer(
            config=tiny_config(f"train.epochs={epochs}", *sets),
            out_dir=out,
            progress_bar=False,
            log=lambda m: None,
        )

    trainer(tmp_path / "a", 2).fit()
    trainer(tmp_path / "b", 1).fit()
    resumed = trainer(tmp_path / "b", 2)
    resumed.resume()
    resumed.fit()
    a = checkpoint.load(tmp_path / "a" / "checkpoints" / "last.pt")
    b = checkpoint.load(tmp_path / "b" / "checkpoints" / "last.pt")
    assert_same(comparable(a), comparable(b))


def test_a_checkpoint_without_the_average_is_refused_by_name(tmp_path: Path) -> None:
    Trainer(
        config=tiny_config("train.epochs=0", "train.ema_decay=0"),
        out_dir=tmp_path,
        progress_bar=False,
        log=lambda m: None,
    ).fit()
    state = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    assert "live_model" not in state and "ema" not in state
    averaged = Trainer(
        config=tiny_config("train.epochs=0", "train.ema_decay=0.9"), progress_bar=False
    )
    with pytest.raises(CheckpointError, match="holds no weight average") as err:
        averaged.load_state_dict(state, "old.pt")
    assert "\n" not in str(err.value)
