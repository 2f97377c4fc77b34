"""What an invocation of the GPU check will do (plan, one Step each, with why a skipped one is
skipped) and the name of its results file."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .config import GPU_PARTS, PART_OF, Gpu


@dataclass(frozen=True)
class Step:
    name: str
    run: bool
    why: str


def plan(
    gpu: Gpu | None,
    *,
    skip_build: bool = False,
    cpu_only: bool = False,
    write_cpu: bool = False,
    skip: Sequence[str] = (),
    rehearse: bool = False,
    write: bool | None = None,
) -> list[Step]:
    """What this invocation will do, and why each skipped step is skipped (printed first).
    `skip` names GPU parts to leave out ("tests": CUDA tests and sanitizer, "ops": op
    benchmarks, "step", "scaling"), so that the check can be split over shorter runs.
    `write`: whether results are written (default: on a GPU, or with write_cpu)."""
    on_gpu = gpu is not None and (rehearse or not cpu_only)
    no_gpu = "--cpu-only" if gpu is not None else "no CUDA GPU visible to torch"

    def gpu_part(name: str, what: str) -> Step:
        part = PART_OF[name]
        run = on_gpu and part not in skip
        return Step(name, run, what if run else (f"--skip {part}" if on_gpu else no_gpu))

    if write is None:
        write = on_gpu or write_cpu
    return [
        Step(
            "build",
            on_gpu and not skip_build,
            "ebjdat._C for this GPU (reused when already built for it)"
            if on_gpu and not skip_build
            else "--skip-build"
            if on_gpu
            else no_gpu,
        ),
        gpu_part("cuda-tests", "pytest tests -m cuda, one row per test"),
        gpu_part("cuda-sanitizer", "compute-sanitizer memcheck over one call of each op"),
        gpu_part("cuda-ops", "op benchmarks: GB/s against the copy bandwidth"),
        gpu_part("cuda-step", "training-iteration benchmark (reduced), official vs ebjdat"),
        gpu_part("cuda-scaling", f"data-parallel scaling over {gpu.count} GPUs (NCCL)")
        if gpu is not None and gpu.count > 1
        else Step("cuda-scaling", False, "fewer than 2 GPUs" if gpu is not None else no_gpu),
        gpu_part("cuda-ops-compile", "op benchmarks against torch.compile, on time left over"),
        Step(
            "cpu-bench",
            not on_gpu,
            "quick CPU op benchmark (smoke test)" if not on_gpu else "a GPU is present",
        ),
        Step(
            "write-results",
            write,
            "results JSON under --out-dir, rewritten after every step"
            if write
            else "a rehearsal writes results only with --out-dir"
            if rehearse
            else "CPU results are written only with --write-cpu",
        ),
    ]


def slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (stable file names)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def results_name(gpu: Gpu | None, kind: str, today: str, skip: Sequence[str]) -> str:
    """<gpu-slug>-<date>.json; a partial run (--skip) says which parts it holds, so that split
    runs write separate files."""
    possible = [p for p in GPU_PARTS if p != "scaling" or (gpu is not None and gpu.count > 1)]
    parts = [p for p in possible if p not in skip]
    on_gpu = kind in ("gpu", "rehearsal") and gpu is not None
    suffix = "" if not on_gpu or len(parts) == len(possible) else "-" + "-".join(parts)
    return (slug(gpu.name) if on_gpu else "cpu") + f"-{today}{suffix}.json"
