"""Faults during training: SIGTERM/SIGINT mid-epoch save the state reached and resume exactly;
kill -9 at random points resumes exactly each time; a failed checkpoint write leaves metrics that
agree with the last checkpoint; --overwrite replaces a run only once the new one stands."""

from __future__ import annotations

import errno
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ebjdat import checkpoint
from ebjdat.cli import train as train_cli
from ebjdat.train import rundir

TINY = [
    "model.arch=wrn-10-1",
    "sgld.buffer_size=64",
    "sgld.steps=2",
    "adv.steps=1",
    "train.eval_limit=32",
    "train.eval_steps=2",
    "optim.warmup_iters=0",
    "optim.lr=0.003",
    "data.batch_size=32",
    "data.labelled_batch_size=32",
    "train.sample_grid=4",
]
ARGS = [*(arg for a in TINY for arg in ("--set", a)), "--epochs", "2", "--no-progress"]


def _popen(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ebjdat.cli.train", "--out", str(out), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _resume(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ebjdat.cli.train", "--out", str(out), "--resume", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _iteration(last: Path) -> int:
    try:
        return int(checkpoint.load(last)["progress"]["iteration"])
    except checkpoint.CheckpointError:
        return -1


def _wait_for(last: Path, iteration: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if last.is_file() and _iteration(last) >= iteration:
            return
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint at iteration {iteration} (exit {proc.poll()})")


def assert_same_run(a_dir: Path, b_dir: Path) -> None:
    """Bit-identical weights, optimiser, buffer and RNG states, and the same metrics rows."""
    a = checkpoint.load(a_dir / "checkpoints" / "last.pt")
    b = checkpoint.load(b_dir / "checkpoints" / "last.pt")
    assert a["progress"] == b["progress"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    ra, rb = a["ranks"][0], b["ranks"][0]
    assert torch.equal(ra["buffer"]["buffer"], rb["buffer"]["buffer"])
    assert torch.equal(ra["generator"], rb["generator"])
    assert torch.equal(ra["torch_rng"], rb["torch_rng"])
    rows_a = [json.loads(x) for x in (a_dir / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (b_dir / "metrics.jsonl").read_text().splitlines()]
    drop = ("time_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows_a] == [
        {k: v for k, v in r.items() if k not in drop} for r in rows_b
    ]
    assert rows_b == b["history"]  # the file agrees with its checkpoint


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every fault is compared with."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = subprocess.run(
        [sys.executable, "-m", "ebjdat.cli.train", "--out", str(out), *ARGS],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_epoch_saves_and_resumes_bit_exact(
    sig: signal.Signals, tmp_path: Path, reference: Path
) -> None:
    """With the default checkpoint_every_iters=0 the only checkpoints are at epoch ends, so the
    one the signal writes is the only record of the iterations since."""
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.pt"
    proc = _popen(out, *ARGS)
    _wait_for(last, 0, proc)  # the run exists; training has begun
    time.sleep(1.0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"ebjdat-train: interrupted by {sig.name} at epoch "), err
    assert f"--out {out} --resume" in lines[-1]
    stopped_at = _iteration(last)
    assert f"iteration {stopped_at};" in lines[-1]
    assert 0 < stopped_at < 2 * 39, "the signal did not land mid-run"
    resumed = _resume(out)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(reference, out)


def test_kill9_at_random_points_each_resumes_bit_exact(tmp_path: Path, reference: Path) -> None:
    """Three kill -9 at random moments (one may land inside a checkpoint write), each followed by
    --resume; the run that finally completes equals the uninterrupted one."""
    rng = random.Random(20261201)
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.pt"
    every = 3
    targets = sorted(every * k for k in rng.sample(range(1, (2 * 39 - 6) // every), 3))
    proc = _popen(out, *ARGS, "--set", f"train.checkpoint_every_iters={every}")
    resumed_from = [0]
    for target in targets:
        _wait_for(last, max(target, resumed_from[-1] + 1), proc)
        time.sleep(rng.uniform(0, 0.3))
        proc.kill()
        proc.wait()
        resumed_from.append(_iteration(last))
        proc = subprocess.Popen(
            [sys.executable, "-m", "ebjdat.cli.train", "--out", str(out), "--resume",
             "--no-progress"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert resumed_from == sorted(set(resumed_from)) and len(resumed_from) == 4, resumed_from
    assert resumed_from[-1] < 2 * 39  # every kill landed before the end
    assert not list((out / "checkpoints").glob(".*.tmp"))  # cut-off writes cleaned on resume
    assert_same_run(reference, out)


def _failing_save(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """checkpoint.save fails with a full disk for states at `epoch` (completed epochs)."""
    real = checkpoint.save

    def save(path: Path, state: dict) -> None:
        if state["progress"]["epoch"] == epoch:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, state)

    monkeypatch.setattr(checkpoint, "save", save)


def test_failed_save_then_resume_has_no_duplicate_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _failing_save(m, epoch=2)
        assert train_cli.run(["--out", str(out), *ARGS, "--epochs", "3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ebjdat-train: error: cannot write {out}/checkpoints/last.pt: No space left "
                   "on device"]
    epochs = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1]  # the row of epoch 2 has no checkpoint, so it is not in the file
    assert train_cli.run(["--out", str(out), "--resume", "--epochs", "3", "--no-progress"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows == checkpoint.load(out / "checkpoints" / "last.pt")["history"]


def test_overwrite_replaces_a_run_only_once_the_new_one_stands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from misuse import tree_state

    out = tmp_path / "run"
    assert train_cli.run(["--out", str(out), *ARGS, "--epochs", "0"]) == 0
    old_id = rundir.run_id(out)
    before = tree_state(tmp_path)
    with monkeypatch.context() as m:  # the new run's first checkpoint cannot be written
        _failing_save(m, epoch=0)
        assert train_cli.run(["--out", str(out), *ARGS, "--overwrite", "--epochs", "1"]) == 1
    assert tree_state(tmp_path) == before  # the old run whole, no staging left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert train_cli.run(["--out", str(out), *ARGS, "--overwrite", "--epochs", "1"]) == 0
    assert rundir.run_id(out) not in (None, old_id)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the old one is gone
    capsys.readouterr()
    # A run started with --epochs 0 is resumable, and a resumed run may train longer.
    assert train_cli.run(["--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert checkpoint.load(out / "checkpoints" / "last.pt")["progress"]["epoch"] == 2
    assert 'epochs = 2' in (out / "config.toml").read_text()
    assert "resume: train.epochs 1 -> 2" in capsys.readouterr().out
