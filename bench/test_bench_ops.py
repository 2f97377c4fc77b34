"""pytest-benchmark suite of the fused ops against eager and torch.compile PyTorch.

The cases, inputs and math all come from ebjdat.benchmarks.ops (the same code `ebjdat-bench ops`
times); this file only hands them to pytest-benchmark, grouped so that each table compares the
three implementations of one (op, shape, dtype):

    pytest bench/ --benchmark-enable                      # training sizes, a few minutes on CPU
    EBJDAT_BENCH_SIZES=training,buffer pytest bench/ --benchmark-enable
    pytest bench/ --benchmark-enable -k "not compile"     # skip torch.compile (compilation time)

Without --benchmark-enable (pyproject's default) each case runs once: a smoke test. On CUDA every
call is followed by a synchronize, which inflates the smallest cases; `ebjdat-bench ops`, which
syncs once per block, is the precise tool there.
"""

from __future__ import annotations

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from ebjdat import ops as eops
from ebjdat.benchmarks import ops as bench_ops


@pytest.mark.parametrize("impl", bench_ops.IMPLS)
def test_op(
    benchmark: BenchmarkFixture, case: bench_ops.Case, impl: str, device: torch.device
) -> None:
    fn = bench_ops.prepare(case, impl, device)
    benchmark.group = f"{case.op} {case.shape_str} {case.dtype_str}"
    benchmark.extra_info.update(
        op=case.op, shape=list(case.shape), dtype=case.dtype_str, impl=impl,
        bytes=case.bytes_moved,
        backend=eops.backend(case.spec.kernel, device) if impl == "fused" else impl,
    )
    benchmark(bench_ops.synchronized(fn, device))
    if benchmark.stats is not None:  # None when benchmarks are disabled
        benchmark.extra_info["gbps"] = case.bytes_moved / benchmark.stats.stats.median / 1e9
