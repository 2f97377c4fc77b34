"""Data parallelism under torchrun (two gloo processes on CPU) against one process:

- 2 processes x batch b compute the loss, gradients and update of 1 process x batch 2b on the
  same examples, for SGD and for SAM (tests/ddp_worker.py runs the two-process side);
- the samplers' passes all-reduce nothing: a real step all-reduces once, a SAM step twice;
  train.official_bn_updates adds no forward through DDP and no all-reduce;
- a two-process run killed with SIGKILL mid-epoch resumes bit-identical to an uninterrupted one;
- resuming it with another number of processes is a one-line error.

Each torchrun start costs seconds here, so the file starts three."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ddp_worker as worker
import pytest
import torch
from helpers import assert_same, checkpoint_iteration, comparable

from ebjdat import checkpoint
from ebjdat.train.parallel import Distributed

TESTS = Path(__file__).resolve().parent
# A digits run of two epochs, checkpointing every 4 of its 19 iterations per process.
RUN = [
    "model.arch=wrn-10-1",
    "sgld.buffer_size=64",
    "sgld.steps=2",
    "adv.steps=1",
    "train.eval_limit=32",
    "train.eval_steps=1",
    "optim.warmup_iters=0",
    "data.batch_size=32",
    "data.labelled_batch_size=32",
    "train.sample_grid=0",
    "train.epochs=2",
    "train.checkpoint_every_iters=4",
]
ITERS_PER_EPOCH = 19  # 1259 digits, 629 per process, batches of 32
KILL_AT = ITERS_PER_EPOCH + 8  # mid second epoch


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            *args]  # fmt: skip


def _train(out: Path, *extra: str, processes: int = 2) -> subprocess.Popen:
    cli = ["-m", "ebjdat.cli.train", "--no-progress", "--device", "cpu", "--out", str(out)]
    sets = [] if "--resume" in extra else [arg for a in RUN for arg in ("--set", a)]
    cli += [*sets, *extra]
    command = _torchrun(*cli) if processes == 2 else [sys.executable, *cli]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        start_new_session=True,  # its own process group: SIGKILL reaches torchrun and workers
    )  # fmt: skip


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("ddp") / "result.pt"
    done = subprocess.run(
        _torchrun(str(TESTS / "ddp_worker.py"), str(out)),
        capture_output=True, text=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("optimizer", ["sgd", "sam"])
def test_two_processes_compute_one_process_with_twice_the_batch(
    two_processes: dict, optimizer: str
) -> None:
    ours = two_processes[optimizer]
    assert ours["loss_forward"] == "DistributedDataParallel"
    one = worker.fixed_step(optimizer, Distributed(), [])
    torch.testing.assert_close(ours["loss"], one["loss"], rtol=1e-6, atol=1e-6)
    for name, grad in one["grads"].items():
        if grad is None:  # the parameter the logits never use
            assert ours["grads"][name] is None, name
            continue
        torch.testing.assert_close(ours["grads"][name], grad, rtol=1e-5, atol=1e-7)
    for rank_params in ours["params"]:  # both processes hold the 1-process update
        for name, value in one["params"].items():
            torch.testing.assert_close(rank_params[name], value, rtol=1e-5, atol=1e-7)


def test_sampling_passes_do_not_all_reduce(two_processes: dict) -> None:
    plain = two_processes["sgd"]["allreduced_buckets"]
    assert plain and sorted(plain) == sorted(set(plain))  # each bucket once per step
    assert sorted(two_processes["sam"]["allreduced_buckets"]) == sorted(plain * 2)
    assert any("do not reach the logits (net.unused.weight" in m for m in two_processes["log"])
    off, on = (two_processes[f"official_bn_updates={flag}"] for flag in (False, True))
    assert on == off and off["forwards"][0] > 0  # the extra BN forwards never go through DDP


def _files(run: Path) -> list[tuple[Path, int, int]]:
    return sorted(
        (p, p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()
    )


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path: Path) -> None:
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    uninterrupted, proc = _train(reference), _train(killed)
    last = killed / "checkpoints" / "last.pt"
    try:
        deadline = time.time() + 240
        while (
            checkpoint_iteration(last) < KILL_AT and proc.poll() is None and time.time() < deadline
        ):
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers, as a node going down
        proc.wait()
        started = checkpoint_iteration(last)
        assert ITERS_PER_EPOCH < started < 2 * ITERS_PER_EPOCH, started
        resumed = _train(killed, "--resume")
        _, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err[-3000:]
        _, err = uninterrupted.communicate(timeout=300)
        assert uninterrupted.returncode == 0, err[-3000:]
    finally:
        for p in (proc, uninterrupted):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    a = checkpoint.load(reference / "checkpoints" / "last.pt")
    b = checkpoint.load(last)
    assert b["progress"]["iteration"] == 2 * ITERS_PER_EPOCH and b["world_size"] == 2
    # Each process's loader position, replay buffer (half the chains) and generators.
    assert [len(r["buffer"]["buffer"]) for r in b["ranks"]] == [32, 32]
    assert_same(comparable(a), comparable(b))

    # The same run resumed by one process: refused in one line, nothing written.
    before = _files(killed)
    one = _train(killed, "--resume", "--epochs", "3", processes=1)
    _, err = one.communicate(timeout=120)
    assert one.returncode == 2, err
    assert err.strip().count("\n") == 0, err
    assert "written by 2 processes and this run has 1" in err
    assert _files(killed) == before


def test_buffer_shares_add_up_and_linear_scaling_multiplies_by_the_world() -> None:
    from ebjdat.train.build import buffer_share, lr_factor
    from ebjdat.train.config import load_preset

    for size, world in ((64, 2), (10, 3), (5, 4)):
        shares = [buffer_share(size, Distributed(r, world)) for r in range(world)]
        assert sum(shares) == size and max(shares) - min(shares) <= 1, shares
    cfg = load_preset("digits")
    assert lr_factor(cfg, Distributed(1, 4)) == 1.0  # the default keeps optim.lr
    cfg.optim.lr_scaling = "linear"
    assert lr_factor(cfg, Distributed(1, 4)) == 4.0 and lr_factor(cfg, Distributed()) == 1.0


def test_a_world_without_its_process_group_and_sync_bn_on_cpu_are_refused() -> None:
    from ebjdat.train.config import ConfigError
    from ebjdat.train.parallel import data_parallel

    with pytest.raises(ValueError, match="world_size 2 but torch.distributed is not initialised"):
        Distributed(0, 2).check()
    with pytest.raises(ValueError, match="rank 3 outside world_size 2"):
        Distributed(3, 2).check()
    net = worker.SmallNet()
    with pytest.raises(ConfigError, match="train.sync_bn needs CUDA devices"):
        data_parallel(net, torch.zeros(1), torch.device("cpu"), sync_bn=True, log=print)
