"""A user model that is not ebjdat's, a torchvision ResNet-18 at a quarter width
(tests/user_models.py), through its whole life: trained with `ebjdat.fit` on the digits dataset,
killed with SIGKILL twice mid-run and resumed, bit-identical to the uninterrupted run; continued
with a NaN injected into its weights, rolled back and finished; evaluated by `ebjdat-eval` from
its checkpoint; exported to safetensors and loaded with `ebjdat.load_classifier`; attacked with
unmodified torchattacks PGD to the same accuracy as `ebjdat.pgd_attack`.

Each stage is a module-scoped fixture that the next builds on. The references are independent
of the stage they check: the uninterrupted run, the trainer's own weights, an accuracy computed
here from the test split, `load_classifier(CKPT)`, and torchattacks."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import user_models as um
from helpers import assert_same, checkpoint_iteration, comparable, without_time

import ebjdat
from ebjdat import checkpoint
from ebjdat.cli import export as export_cli
from ebjdat.data import load_split_tensors, to_float01

TESTS = str(Path(__file__).resolve().parent)
EPOCHS = um.TINY["train.epochs"]
EVERY = um.TINY["train.checkpoint_every_iters"]
END = EPOCHS * um.ITERS_PER_EPOCH
KILL_SEED = 20260110  # the kill points: the same every run of the test
POISON_AT = END + 7  # the step of the third epoch whose forward gets NaN weights


def _env() -> dict[str, str]:
    """The subprocesses import user_models (the checkpoints' builder) and run on one thread,
    like this process during the module (see `one_thread`)."""
    path = os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(um.THREADS)}


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True, text=True, timeout=300, env=_env(),
    )  # fmt: skip


def _train(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "import user_models; user_models.main()", str(out), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip


def _wait_for(last: Path, iteration: int, proc: subprocess.Popen, timeout: float = 120) -> int:
    """Waits until last.pt holds `iteration` or later (reading it only when it changed)."""
    deadline, seen, at = time.time() + timeout, None, -1
    while time.time() < deadline and proc.poll() is None:
        stamp = last.stat().st_mtime_ns if last.is_file() else None
        if stamp is not None and stamp != seen:
            seen, at = stamp, checkpoint_iteration(last)
            if at >= iteration:
                return at
        time.sleep(0.02)
    err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
    raise AssertionError(f"no checkpoint at iteration {iteration} (at {at}, exit {proc.poll()}) "
                         f"{err}")  # fmt: skip


def _all_finite(obj: Any, where: str = "checkpoint") -> None:
    if isinstance(obj, torch.Tensor):
        assert not obj.is_floating_point() or torch.isfinite(obj).all(), where
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _all_finite(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _all_finite(value, f"{where}[{i}]")


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module", autouse=True)
def one_thread():  # noqa: ANN201
    old = torch.get_num_threads()
    torch.set_num_threads(um.THREADS)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[int]]:
    """Two runs of one config, each through ebjdat.fit in a subprocess, side by side: the
    uninterrupted reference, and one SIGKILLed twice (once per epoch, a seeded random time after
    a seeded checkpoint: it may land inside a checkpoint write) and resumed each time. Returns
    both runs and the iterations each start of the second began from."""
    rng = random.Random(KILL_SEED)
    n = um.ITERS_PER_EPOCH
    targets = [EVERY * rng.randint(1, (n - 6) // EVERY),
               n + EVERY * rng.randint(1, (n - 6) // EVERY)]  # fmt: skip
    reference = tmp_path_factory.mktemp("reference") / "run"
    out = tmp_path_factory.mktemp("killed") / "run"
    last = out / "checkpoints" / "last.pt"
    uninterrupted = _train(reference)
    proc = _train(out)
    started_from = [0]
    try:
        for target in targets:
            _wait_for(last, max(target, started_from[-1] + 1), proc)
            time.sleep(rng.uniform(0, 0.5))
            proc.kill()
            proc.wait()
            assert proc.returncode == -9
            started_from.append(checkpoint_iteration(last))
            proc = _train(out, "--resume")
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        _, err = uninterrupted.communicate(timeout=300)
        assert uninterrupted.returncode == 0, err
    finally:
        for p in (proc, uninterrupted):
            if p.poll() is None:
                p.kill()
                p.wait()
    return reference, out, started_from


@pytest.fixture(scope="module")
def reference(runs: tuple[Path, Path, list[int]]) -> Path:
    return runs[0]


@pytest.fixture(scope="module")
def killed(runs: tuple[Path, Path, list[int]]) -> tuple[Path, list[int]]:
    return runs[1], runs[2]


@pytest.fixture(scope="module")
def rolled_back(killed: tuple[Path, list[int]]) -> tuple[Path, ebjdat.Trainer, list, list]:
    """The killed run resumed in this process for a third epoch, with the user model's first
    convolution set to NaN inside one training step's forward pass."""
    run, _ = killed
    messages: list[str] = []
    trainer = ebjdat.Trainer(
        um.DigitsResNet(), None, config={**um.TINY, "train.epochs": EPOCHS + 1}, out_dir=run,
        device="cpu", progress_bar=False, log=messages.append,
    )  # fmt: skip
    hit: list[int] = []

    def poison(module: um.DigitsResNet, args: tuple) -> None:
        if module.training and not hit and trainer.state.iteration == POISON_AT:
            with torch.no_grad():
                module.conv1.weight.fill_(float("nan"))
            hit.append(trainer.state.iteration)

    trainer.model.net.register_forward_pre_hook(poison)
    trainer.resume()
    trainer.fit()
    return run, trainer, hit, messages


def test_kill9_twice_then_resume_is_bit_identical_to_the_uninterrupted_run(
    reference: Path, killed: tuple[Path, list[int]]
) -> None:
    run, started_from = killed
    print("each start began at iteration", started_from)  # shown by pytest -rP
    assert started_from == sorted(set(started_from)) and len(started_from) == 3, started_from
    assert started_from[1] < um.ITERS_PER_EPOCH < started_from[2] < END, started_from
    a = checkpoint.load(reference / "checkpoints" / "last.pt")
    b = checkpoint.load(run / "checkpoints" / "last.pt")
    assert b["model_config"]["builder"] == "user_models:DigitsResNet"
    assert b["progress"]["iteration"] == END and b["progress"]["retries"] == 0
    # What the comparison covers, spelled out: weights and BatchNorm statistics, the optimiser's
    # moments, the metrics history, the replay buffer, and the generators behind them.
    assert any("running_mean" in k for k in a["model"]) and a["optimizer"]["state"]
    assert a["ranks"][0]["buffer"]["buffer"].shape[0] == um.TINY["sgld.buffer_size"]
    assert len(a["history"]) == EPOCHS
    assert_same(comparable(a), comparable(b))
    assert_same(
        checkpoint.load(reference / "checkpoints" / "best.pt")["model"],
        checkpoint.load(run / "checkpoints" / "best.pt")["model"],
        "best.pt",
    )
    assert _metrics(run) == b["history"]  # the file agrees with its checkpoint
    assert not list((run / "checkpoints").glob(".*.tmp"))  # cut-off writes cleaned on resume


def test_nan_in_the_weights_rolls_back_and_training_continues(
    reference: Path, rolled_back: tuple[Path, ebjdat.Trainer, list, list]
) -> None:
    run, trainer, hit, messages = rolled_back
    assert hit == [POISON_AT]
    back_to = POISON_AT // EVERY * EVERY  # the last checkpoint before the poisoned step
    rollbacks = [m for m in messages if m.startswith("divergence:")]
    assert len(rollbacks) == 1, messages
    assert f"rolled back to epoch {EPOCHS}, iteration {back_to}," in rollbacks[0]
    factor = trainer.cfg.train.retry_lr_factor
    assert trainer.state.retries == 1 and trainer.state.lr_scale == factor
    state = checkpoint.load(run / "checkpoints" / "last.pt")
    assert state["progress"]["epoch"] == EPOCHS + 1
    assert state["progress"]["iteration"] == END + um.ITERS_PER_EPOCH
    assert state["progress"]["retries"] == 1
    _all_finite(state["model"], "model")  # BatchNorm statistics included
    _all_finite(state["optimizer"], "optimizer")
    _all_finite(state["ranks"][0]["buffer"], "buffer")
    # "model" is what the trainer evaluates (the weight average, on the digits presets), and
    # "live_model" the weights it trains on.
    for key, value in trainer.evaluated_model.state_dict().items():
        assert torch.equal(state["model"][key], value), key
    if trainer.average is not None:
        _all_finite(state["live_model"], "live_model")
        for key, value in trainer.model.state_dict().items():
            assert torch.equal(state["live_model"][key], value), key
    history = state["history"]
    assert without_time(history[:EPOCHS]) == without_time(_metrics(reference))
    assert all(math.isfinite(history[-1][k]) for k in ("train_loss", "val_acc"))
    assert _metrics(run) == history


def test_ebjdat_eval_reports_on_the_checkpoint(
    rolled_back: tuple[Path, ebjdat.Trainer, list, list], tmp_path: Path
) -> None:
    run = rolled_back[0]
    ckpt = run / "checkpoints" / "last.pt"
    out = tmp_path / "eval"
    limit = 32
    result = _cli(
        "ebjdat.cli.eval", str(ckpt), "--out", str(out), "--limit", str(limit),
        "--attacks", "pgd2", "--no-sanity", "--no-ood", "--no-generation", "--no-progress",
        "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["n_examples"] == limit and report["eps"] == 0.1
    x, y = load_split_tensors("digits", "test")
    model = ebjdat.load_classifier(str(ckpt))
    with torch.no_grad():
        mine = (model(to_float01(x[:limit])).argmax(1) == y[:limit]).float().mean().item()
    assert report["clean_acc"] == pytest.approx(mine, abs=1e-9)
    assert 0 <= report["pgd2_acc"] <= report["clean_acc"]
    assert report["pgd2_step_size"] == pytest.approx(2.5 * 0.1 / 2)
    assert (out / "report.html").is_file()


@pytest.fixture(scope="module")
def exported(
    rolled_back: tuple[Path, ebjdat.Trainer, list, list], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    ckpt = rolled_back[0] / "checkpoints" / "last.pt"
    out = tmp_path_factory.mktemp("export") / "resnet"
    assert export_cli.run([str(ckpt), "--out", str(out)]) == 0  # `ebjdat-export CKPT --out DIR`
    return ckpt, out


@pytest.fixture(scope="module")
def val_batch() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_split_tensors("digits", "val")
    return to_float01(x[:64]), y[:64]


def test_export_loads_with_load_classifier(
    rolled_back: tuple[Path, ebjdat.Trainer, list, list],
    exported: tuple[Path, Path],
    val_batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    trainer = rolled_back[1]
    ckpt, out = exported
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    model = ebjdat.load_classifier(str(out))
    from_ckpt = ebjdat.load_classifier(str(ckpt))
    assert type(model) is um.DigitsResNet and not model.training
    for key, value in trainer.evaluated_model.net.state_dict().items():  # what was saved
        assert torch.equal(model.state_dict()[key], value), key
    x, _ = val_batch
    with torch.no_grad():
        assert torch.equal(model(x), from_ckpt(x))


def test_torchattacks_pgd_matches_ebjdat_pgd_on_the_loaded_model(
    exported: tuple[Path, Path], val_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model = ebjdat.load_classifier(str(exported[1]))
    x, y = val_batch
    eps, alpha, steps = 0.1, 0.025, 5
    ours = ebjdat.pgd_attack(model, x, y, eps=eps, step_size=alpha, steps=steps, random_start=False)
    theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
        acc_ours = (model(ours).argmax(1) == y).float().mean().item()
        acc_theirs = (model(theirs).argmax(1) == y).float().mean().item()

    def preds(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(z).argmax(1)

    assert acc_ours == acc_theirs
    assert acc_theirs < clean  # the attack did something to compare
    assert torch.equal(preds(ours), preds(theirs))  # not only as many: the same images
    # Bit for bit the same, except on images whose loss has underflowed to 0 in float32. There
    # the input gradient is ~1e-43, below float32's normal range, and its sign is rounding noise:
    # ebjdat's summed fused CE and torchattacks' batch-mean CE round it differently (opposite
    # signs, or 0), and a sign step turns that into a pixel moved by alpha in one and not the other.
    differ = (ours - theirs).flatten(1).abs().amax(1) > 1e-5
    assert differ.sum() <= len(x) // 8, int(differ.sum())
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(model(theirs), y, reduction="none")
    assert (ce[differ] == 0).all(), ce[differ]
    assert (ours - x).abs().max().item() <= eps + 1e-6
