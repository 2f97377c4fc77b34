"""Benchmark building blocks shared by `ebjdat-bench`, the pytest-benchmark suites in bench/ and
scripts/gpu_check.py, so that every front end times the same code in the same way.

`ebjdat.benchmarks.ops` holds the op microbenchmark cases; this module holds what any benchmark
needs: one timing primitive, the default device and a description of the machine.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch


def _import_timer() -> ModuleType:
    """torch.utils.benchmark imports cpp_extension, which warns "No CUDA runtime is found" on
    every CPU-only start; that says nothing about benchmarks, so it is silenced for the import."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import torch.utils.benchmark as tbench
    finally:
        logger.setLevel(level)
    return tbench


tbench = _import_timer()


@dataclass(frozen=True)
class Timing:
    """Summary of one `blocked_autorange` measurement (seconds per call)."""

    median_s: float
    iqr_s: float
    runs: int
    calls_per_run: int


def measure(fn: Callable[[], object], *, min_run_time: float) -> Timing:
    """Times `fn()` with torch.utils.benchmark, which synchronises CUDA around each block.

    Timer defaults to one thread; we pass the process's thread count so CPU kernels run as they
    would in training (torch.utils.benchmark would otherwise understate parallel kernels).
    """
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return Timing(
        median_s=float(m.median),
        iqr_s=float(m.iqr),
        runs=len(m.times),
        calls_per_run=int(m.number_per_run),
    )


def default_device() -> str:
    """The GPU when there is one: that is where the fused kernels matter most."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name(device: torch.device) -> str:
    """A human name for the device: the GPU model, or the CPU model from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    """Everything needed to interpret (and compare) numbers taken on this machine."""
    import ebjdat
    from ebjdat import _native, ops
    from ebjdat.cpu_allocator import allocator_tuned

    _, native_reason = _native.load()
    info: dict = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "ebjdat": ebjdat.__version__,
        "build": _native.build_info(),
        "native_loaded": native_reason == "",
        "native_reason": native_reason,
        "device": str(device),
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # Other processes on the same cores inflate eager timings most (one thread barrier per
        # op), so a busy machine is recorded with the numbers.
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "backends": {op: ops.backend(op, device) for op in ops.ops()},
        # Process-wide, so it applies to every implementation timed in the same run.
        "malloc_tuned": allocator_tuned(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["capability"] = f"{props.major}.{props.minor}"
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["sm_count"] = props.multi_processor_count
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info
