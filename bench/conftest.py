"""pytest-benchmark setup for the suites in bench/ (run with `pytest bench/ --benchmark-enable`).

Environment:
  EBJDAT_BENCH_DEVICE  cpu | cuda | cuda:N   (default: cuda when available, else cpu)
  EBJDAT_BENCH_SIZES   comma-separated shape sets from ebjdat.benchmarks.ops.SIZE_SETS
                       (default: training; add buffer and large for the replay-buffer and
                       2**24-element cases, which take much longer on a CPU)
"""

from __future__ import annotations

import os

import pytest
import torch

from ebjdat import benchmarks
from ebjdat.benchmarks import ops as bench_ops


def _device() -> torch.device:
    return torch.device(os.environ.get("EBJDAT_BENCH_DEVICE") or benchmarks.default_device())


def _sizes() -> tuple[str, ...]:
    value = os.environ.get("EBJDAT_BENCH_SIZES", "training")
    sizes = tuple(s.strip() for s in value.split(",") if s.strip())
    unknown = set(sizes) - set(bench_ops.SIZE_SETS)
    if unknown:
        raise pytest.UsageError(
            f"EBJDAT_BENCH_SIZES: unknown {sorted(unknown)}; choose from {bench_ops.SIZE_SETS}"
        )
    return sizes


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`case` parametrizes over the same grid as `ebjdat-bench ops` (float32)."""
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", bench_ops.cases(_sizes()), ids=str)


@pytest.fixture(scope="session")
def device() -> torch.device:
    dev = _device()
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("EBJDAT_BENCH_DEVICE asks for CUDA but no GPU is available")
    return dev


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Saved runs (--benchmark-autosave) then say which ebjdat backends produced the numbers."""
    dev = _device()
    if dev.type != "cuda" or torch.cuda.is_available():
        machine_info["ebjdat"] = benchmarks.machine_info(dev)
