"""The library API with a classifier that is not ebjdat's: `ebjdat.fit` on the user's model and
data, checkpoints that rebuild it without unpickling, exact resume, rollback, and a loaded model
that unmodified torchattacks PGD attacks to the same accuracy as ebjdat's PGD."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TINY_RUN, PairDataset
from torch import nn

import ebjdat
from ebjdat.data import load_split_tensors, to_float01

TINY = {**TINY_RUN, "train.sample_grid": 4}


class TinyCNN(nn.Module):
    """Three convolutions on [0, 1] images; nothing from ebjdat."""

    def __init__(self, channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class DigitsCNN(TinyCNN):
    """Takes no arguments, so its class is its builder."""

    def __init__(self) -> None:
        super().__init__(1, 10)


@pytest.fixture(scope="module")
def digits() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The digits splits as plain [0, 1] tensors: the user's own data, as far as ebjdat knows."""
    x, y = load_split_tensors("digits", "train")
    xv, yv = load_split_tensors("digits", "val")
    return (to_float01(x), y), (to_float01(xv), yv)


def _fit(data, tmp: Path | None, model: nn.Module | None = None, **overrides):  # noqa: ANN001, ANN202
    torch.manual_seed(0)
    (x, y), val = data
    return ebjdat.fit(
        model if model is not None else TinyCNN(),
        PairDataset(x, y),
        val_data=val,
        config={**TINY, **overrides},
        out_dir=tmp,
        device="cpu",
        progress_bar=False,
        log=lambda m: None,
    )


def test_fit_a_user_model_without_a_run_directory(digits, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    trainer = _fit(digits, None)
    assert isinstance(trainer.model.net, TinyCNN)
    assert [row["epoch"] for row in trainer.state.history] == [1]
    assert {"train_loss", "val_acc", "val_robust_acc", "train_e_q"} <= set(trainer.state.history[0])
    assert list(tmp_path.iterdir()) == []  # out_dir=None writes nothing


def test_user_model_checkpoint_rebuilds_and_attacks_like_torchattacks(digits, tmp_path) -> None:  # noqa: ANN001
    torchattacks = pytest.importorskip("torchattacks")
    trainer = _fit(digits, tmp_path / "run", DigitsCNN(), **{"train.epochs": 2})
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    state = ebjdat.checkpoint.load(ckpt)
    assert state["model_config"]["builder"] == f"{DigitsCNN.__module__}:DigitsCNN"
    model = ebjdat.load_classifier(str(ckpt))
    assert type(model) is DigitsCNN and not model.training
    for key, value in trainer.evaluated_model.net.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    (xv, yv) = digits[1]
    x, y = xv[:64], yv[:64]
    eps, alpha, steps = 0.1, 0.025, 5
    ours = ebjdat.pgd_attack(model, x, y, eps=eps, step_size=alpha, steps=steps, random_start=False)
    theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    with torch.no_grad():
        acc_ours = (model(ours).argmax(1) == y).float().mean().item()
        acc_theirs = (model(theirs).argmax(1) == y).float().mean().item()
    assert acc_ours == acc_theirs
    assert (ours - theirs).abs().max().item() < 1e-5
    # A model saved without a builder still loads into the module the caller passes.
    explicit = ebjdat.load_classifier(str(ckpt), model=TinyCNN())
    assert torch.equal(explicit(x), model(x))


def test_user_model_resume_is_bit_exact(digits, tmp_path: Path) -> None:  # noqa: ANN001
    full = _fit(digits, tmp_path / "full", **{"train.epochs": 2})
    _fit(digits, tmp_path / "half", **{"train.epochs": 1})
    (x, y), val = digits
    resumed = ebjdat.Trainer(
        TinyCNN(),
        PairDataset(x, y),
        val_data=val,
        config={**TINY, "train.epochs": 2},
        out_dir=tmp_path / "half",
        device="cpu",
        progress_bar=False,
        log=lambda m: None,
    )
    resumed.resume()
    resumed.fit()
    for key, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key

    def rows(trainer: ebjdat.Trainer) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "time_s"} for r in trainer.state.history]

    assert rows(full) == rows(resumed)


def test_explicit_builder_and_a_model_without_one(digits, tmp_path: Path) -> None:  # noqa: ANN001
    """A class with parameters is never guessed as its own builder: an explicit one is recorded,
    else the weights load only into a model the caller passes."""
    explicit = ebjdat.Classifier(
        TinyCNN(1, 10), 10, builder=f"{TinyCNN.__module__}:TinyCNN", kwargs={"classes": 10}
    )
    _fit(digits, tmp_path / "a", explicit, **{"train.epochs": 0})
    assert type(ebjdat.load_classifier(str(tmp_path / "a/checkpoints/last.pt"))) is TinyCNN
    _fit(digits, tmp_path / "b", TinyCNN(), **{"train.epochs": 0})
    ckpt = str(tmp_path / "b/checkpoints/last.pt")
    with pytest.raises(ebjdat.CheckpointError, match="saved without a builder; pass the untrained"):
        ebjdat.load_classifier(ckpt)
    assert type(ebjdat.load_classifier(ckpt, model=TinyCNN())) is TinyCNN


def test_user_model_rolls_back_on_divergence(digits, monkeypatch) -> None:  # noqa: ANN001
    from ebjdat.train import losses

    real = losses.eb_jdat_loss
    calls = {"n": 0}

    def poison(cfg, fwd, y, adv):  # noqa: ANN001, ANN202
        terms = real(cfg, fwd, y, adv)
        calls["n"] += 1
        if calls["n"] == 5:
            terms.total = terms.total * float("nan")
        return terms

    monkeypatch.setattr("ebjdat.train.trainer.eb_jdat_loss", poison)
    trainer = _fit(digits, None)
    assert trainer.state.retries == 1 and trainer.state.epoch == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


class Wrong(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :3].sum(1)  # [B], not [B, K]


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda d: dict(model=Wrong(), train_data=d[0]), ValueError, "to logits [B, K]"),
        (
            lambda d: dict(model=TinyCNN(classes=4), train_data=d[0]),
            ValueError,
            "labels up to 9 but the model outputs 4",
        ),
        (
            lambda d: dict(model=TinyCNN(), train_data=(d[0][0] * 3, d[0][1])),
            ValueError,
            "float images must lie in [0, 1]",
        ),
        (
            lambda d: dict(model=TinyCNN(), train_data=d[0], config={"sgld.stepz": 1}),
            ebjdat.ConfigError,
            "unknown key sgld.stepz",
        ),
        (
            lambda d: dict(model=TinyCNN(), train_data=d[0], config={"optim.lr": float("nan")}),
            ebjdat.ConfigError,
            "optim.lr must be a finite number",
        ),
        (
            lambda d: dict(model=ebjdat.load_preset("digits"), train_data=d[0]),
            TypeError,
            "first argument is the model",
        ),
        (lambda d: dict(model=TinyCNN(), train_data=[1, 2, 3]), ValueError, "items must be"),
    ],
)
def test_bad_arguments_are_named_before_anything_runs(
    digits, make, error, message, tmp_path
) -> None:  # noqa: ANN001
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        ebjdat.Trainer(**make(digits), out_dir=tmp_path / "run", progress_bar=False)
    assert not (tmp_path / "run").exists()


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's "Your own model" example, as written (in a temporary directory)."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Your own model", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["x_adv"].shape == (1, 1, 8, 8)
    assert 0 <= namespace["trainer"].state.history[-1]["val_acc"] <= 1
    assert (tmp_path / "runs/my-cnn/checkpoints/best.pt").is_file()


def test_command_line_refuses_a_run_on_user_data(digits, tmp_path, capsys) -> None:  # noqa: ANN001
    """Its config names the preset's dataset, not the user's data: evaluating that would be a
    silent wrong answer."""
    from ebjdat.cli import eval as eval_cli

    _fit(digits, tmp_path / "run", DigitsCNN(), **{"train.epochs": 0})
    capsys.readouterr()
    assert eval_cli.run([str(tmp_path / "run/checkpoints/last.pt"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained on data passed to ebjdat.fit" in err[0], err


def test_ebjdat_eval_runs_on_a_user_model_trained_on_a_named_dataset(tmp_path, capsys) -> None:  # noqa: ANN001
    """A user classifier with a builder, trained on the config's dataset: ebjdat-eval rebuilds it
    from the checkpoint and reports on the test split."""
    import json

    from ebjdat.cli import eval as eval_cli

    torch.manual_seed(0)
    ebjdat.fit(
        DigitsCNN(), None, config={**TINY, "train.epochs": 1}, out_dir=tmp_path / "run",
        device="cpu", progress_bar=False, log=lambda m: None,
    )  # fmt: skip
    out = tmp_path / "eval"
    code = eval_cli.run(
        [str(tmp_path / "run/checkpoints/best.pt"), "--out", str(out), "--limit", "32",
         "--attacks", "pgd5", "--no-sanity", "--no-ood", "--gen-n", "8", "--gen-steps", "2",
         "--no-progress", "--device", "cpu"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert 0 <= report["pgd5_acc"] <= report["clean_acc"] <= 1 and report["n_examples"] == 32
