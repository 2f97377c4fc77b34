"""Data-parallel scaling of the training iteration: the same per-process batch timed in one
process and in N (`torchrun`, NCCL on GPUs, gloo on CPUs), so that the efficiency t(1) / t(N)
says what the gradient all-reduce and the slowest process cost. Weak scaling: N processes do N
times the work of one per iteration.

The parent (`run_scaling`) starts each world as a subprocess of this module; every process
times its own iterations between barriers and rank 0 writes them all as JSON."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

THREADS_ENV = "OMP_NUM_THREADS"


def _time_iterations(
    model: str, batch: int, device: str, repeats: int, warmup: int, sets: list[str]
) -> dict:
    """This process's iteration times (and every process's, on rank 0)."""
    import torch.distributed as dist

    from ebjdat.train.parallel import Distributed
    from ebjdat.train.trainer import Trainer

    from .step import _config

    distributed = Distributed.from_environment()
    where = torch.device(device)
    if where.type == "cuda":
        where = torch.device("cuda", distributed.local_rank)
    trainer = Trainer(
        config=_config(model, batch, sets), device=where, distributed=distributed,
        progress_bar=False, handle_signals=False, log=lambda message: None,
    )  # fmt: skip
    x_pos, _ = next(iter(trainer.positives))
    x_lab, y = next(iter(trainer.labelled))

    def sync() -> None:
        if where.type == "cuda":
            torch.cuda.synchronize(where)
        if distributed.world_size > 1:
            dist.barrier()

    for _ in range(warmup):
        trainer.train_step(x_pos, x_lab, y)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        trainer.train_step(x_pos, x_lab, y)
        sync()  # the iteration ends when the slowest process's does
        times.append(time.perf_counter() - start)
    every = [times]
    if distributed.world_size > 1:
        every = [None] * distributed.world_size
        dist.all_gather_object(every, times)
    distributed.teardown()
    return {"rank": distributed.rank, "times_s": every}


def _launch(
    nproc: int, model: str, batch: int, device: str, repeats: int, warmup: int,
    sets: list[str], threads: int,
) -> list[list[float]]:  # fmt: skip
    """Each process's iteration times in a world of `nproc` processes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "times.json"
        args = ["-m", __name__, "--model", model, "--batch", str(batch), "--device", device,
                "--repeats", str(repeats), "--warmup", str(warmup), "--out", str(out)]  # fmt: skip
        for assignment in sets:
            args += ["--set", assignment]
        launcher = [sys.executable]
        if nproc > 1:
            launcher += ["-m", "torch.distributed.run", "--standalone",
                         f"--nproc-per-node={nproc}"]  # fmt: skip
        env = {**os.environ, THREADS_ENV: str(threads)}
        env.pop("WORLD_SIZE", None)
        done = subprocess.run([*launcher, *args], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise RuntimeError(f"{nproc}-process timing failed: " + " | ".join(tail))
        return json.loads(out.read_text())["times_s"]


def run_scaling(
    model: str,
    batch: int,
    device: torch.device,
    nproc: int,
    *,
    repeats: int = 5,
    warmup: int = 1,
    sets: list[str] | None = None,
) -> dict:
    """One row: the median iteration time of 1 and of `nproc` processes (the slowest process's
    median), the speed-up in images per second and the efficiency. On CPU the processes split
    the cores between them (OMP_NUM_THREADS), so the row is a sanity check, not a measurement of
    scaling."""
    cores = os.cpu_count() or 1
    threads = 1 if device.type == "cuda" else max(1, cores // nproc)
    kind = device.type
    one = _launch(1, model, batch, kind, repeats, warmup, list(sets or []), threads)
    many = _launch(nproc, model, batch, kind, repeats, warmup, list(sets or []), threads)
    t1 = statistics.median(one[0])
    tn = max(statistics.median(times) for times in many)
    return {
        "model": model,
        "batch_per_process": batch,
        "processes": nproc,
        "backend": "nccl" if kind == "cuda" else "gloo",
        "threads_per_process": threads,
        "one_process_s": t1,
        "n_process_s": tn,
        "per_rank_median_s": [statistics.median(times) for times in many],
        "speedup": nproc * t1 / tn,
        "efficiency": t1 / tn,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="one world of the scaling benchmark (internal)")
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--repeats", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    result = _time_iterations(a.model, a.batch, a.device, a.repeats, a.warmup, a.set)
    if result["rank"] == 0:
        Path(a.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
