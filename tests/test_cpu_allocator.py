"""ebjdat.cpu_allocator: after tuning, a freed activation-sized block is reused without page
faults; EBJDAT_MALLOC_TUNE=0 leaves glibc's defaults. Each case runs in a fresh interpreter so
this process's allocator is untouched."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from ebjdat.cpu_allocator import allocator_tuned, tune_cpu_allocator
applied = tune_cpu_allocator()
assert tune_cpu_allocator() == applied == allocator_tuned()  # idempotent
for _ in range(30):  # warm-up: the heap grows to a steady size (a few blocks)
    torch.empty(16 << 20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):  # 64 MiB: above the 32 MiB cap of glibc's dynamic mmap threshold
    torch.empty(16 << 20).fill_(1.0)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(int(applied), faults)
"""

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only"
)


def probe(tune: str) -> tuple[bool, int]:
    env = {**os.environ, "EBJDAT_MALLOC_TUNE": tune, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return bool(int(out[-2])), int(out[-1])


def test_tuned_allocator_reuses_big_blocks_without_faults() -> None:
    applied, faults = probe("1")
    assert applied
    # 64 MiB is 16384 pages: an untuned run faults them in on every one of the 10 allocations.
    assert faults < 1000, faults


def test_switch_off_leaves_defaults() -> None:
    applied, faults = probe("0")
    assert not applied
    assert faults > 10 * 16384 // 2, faults  # the behaviour the tuning removes
