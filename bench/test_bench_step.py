"""pytest-benchmark suite of one EB-JDAT-JEM++ training iteration: the faithful official
reference against ebjdat's trainer (ebjdat.benchmarks.step, the code `ebjdat-bench step` times),
one group per model so each table compares the implementations of the same iteration:

    pytest bench/test_bench_step.py --benchmark-enable                   # WRN-10-2, batch 64
    EBJDAT_BENCH_STEP_MODELS=wrn-10-2,wrn-16-4 pytest bench/test_bench_step.py --benchmark-enable
    EBJDAT_BENCH_STEP_VARIANTS=default,bf16 pytest bench/test_bench_step.py --benchmark-enable

Environment: EBJDAT_BENCH_STEP_MODELS (default wrn-10-2), EBJDAT_BENCH_STEP_BATCH (default 64),
EBJDAT_BENCH_STEP_VARIANTS (names from ebjdat.benchmarks.step.VARIANTS; default: default).
Without --benchmark-enable each implementation runs once: a smoke test. `ebjdat-bench step`
adds the per-phase breakdown and FLOP counts.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from ebjdat.benchmarks import step as bench_step


def _env_list(name: str, default: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in os.environ.get(name, default).split(",") if s.strip())


MODELS = _env_list("EBJDAT_BENCH_STEP_MODELS", "wrn-10-2")
VARIANTS = _env_list("EBJDAT_BENCH_STEP_VARIANTS", "default")
BATCH = int(os.environ.get("EBJDAT_BENCH_STEP_BATCH", "64"))
IMPLS = ("official", *(bench_step.impl_name(v) for v in VARIANTS))


@functools.cache
def _prepared(model: str, device: str) -> dict:
    return dict(bench_step.prepare_step(model, BATCH, torch.device(device), variants=VARIANTS))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("model", MODELS)
def test_step(benchmark: BenchmarkFixture, model: str, impl: str, device: torch.device) -> None:
    fn = _prepared(model, str(device))[impl]
    fn()  # warm-up (compilation, lazy initialisation, allocator growth)
    benchmark.group = f"step {model} batch {BATCH}"
    benchmark.extra_info.update(model=model, batch=BATCH, impl=impl)

    def iteration() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    benchmark.pedantic(iteration, rounds=3, iterations=1)
