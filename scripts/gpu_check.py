#!/usr/bin/env python
"""The GPU check: one command, run on a machine with a CUDA GPU, that works the first time it
meets one and prints everything needed to fix what failed without a second run.

    pip install --no-build-isolation --no-deps -e . && python scripts/gpu_check.py --out-dir D

Steps, in this order, each in a subprocess (so that it loads the extension just built) with a
timeout taken from a time budget (--budget-s, default 540 s: one 10-minute command with room to
spare, counted from the start of the enclosing one-shot command, so that a `pip install` before
the check in the same command is counted too; --budget-from now counts from here):

  build          ebjdat._C for this GPU: when the installed extension is a CUDA build for this
                 GPU's architecture, newer than csrc/ and setup.py (as the `pip install -e .`
                 just before leaves it), it is used as is; otherwise (or with --rebuild)
                 `pip install --no-build-isolation --no-deps -e .` with EBJDAT_BUILD_CUDA=1,
                 TORCH_CUDA_ARCH_LIST=<this GPU's capability only> and MAX_JOBS=<cores>;
  cuda-tests     pytest tests -m cuda (TRITON_INTERPRET=0, so Triton kernels run compiled), and
                 a per-test table from its junit XML: outcome, seconds, the first lines of each
                 failure and the reason of each skip;
  cuda-sanitizer compute-sanitizer --tool memcheck (from CUDA_HOME/bin or PATH) over one small
                 call of each op (scripts/sanitizer_calls.py) on the cuda backend (ebjdat._C's
                 kernels; --sanitizer-backends cuda triton adds a run on the Triton ones); the
                 ERROR SUMMARY of each run; skipped, with the reason, without compute-sanitizer;
  cuda-ops       ebjdat-bench ops on cuda (training, buffer and 2**24-element sizes, no
                 torch.compile): each fused op's GB/s against the float32 copy bandwidth, judged
                 at >= 2**24 elements against the goal of 85%;
  cuda-step      ebjdat-bench step on cuda, reduced to fit: WRN-28-10 at batch 64, official
                 reference vs ebjdat (default and bf16), 3 repeats; its rows as a table;
  cuda-scaling   with 2+ GPUs, ebjdat-bench step --nproc N (NCCL); skipped with one GPU;
  cuda-ops-compile  the op benchmarks against torch.compile, only on time left over.

A step gets the time left minus what the later steps need at least; when that is less than it
needs itself it is skipped, with the reason. One that runs out of time gets SIGINT (pytest still
writes its junit XML; Python prints where it was), then SIGKILL, and is recorded with
"timed_out": true and the tail of its log. Versions (python, torch and its CUDA, triton, nvcc,
the driver from nvidia-smi, the GPU's name, capability and memory, the ebjdat build) come first
and in the results, <out-dir>/<gpu-name-slug>-<YYYY-MM-DD>.json, rewritten after every step
("complete": false until the end), so a run cut off keeps what it finished. With --out-dir
given, the full log of every step goes to <out-dir>/<same name>.logs/ as well. A summary of all
steps comes last (a device tool that returns only the end of the output still shows it).

`--skip tests ops step scaling` leaves parts out, to split the check over shorter runs (the later
ones with --skip-build); a partial run names its file after the parts it holds. Without a GPU (or
with --cpu-only) it runs a quick CPU op and step benchmark, says which GPU steps were skipped,
and writes <out-dir>/cpu-<date>.json only with --write-cpu.

--rehearse, on a machine without a GPU, finds what would break on the GPU before it gets there:
it plans as if an H200 were present (sm 9.0, one GPU), then runs each step's real code path and
command with the GPU machine's package set simulated (imports of torchattacks, torch_fidelity,
pyautoattack and tomli_w blocked in every subprocess) and judges it: `pytest -m cuda` must
collect every test and skip each with a reason; each benchmark and sanitizer command (the
scaling one too, with --nproc 2) must get as far as its first CUDA call and fail there with a
CUDA-availability error only (not a NameError, ImportError, TypeError or usage error); the
sanitizer's op calls must also run on CPU. The build step checks the installed extension and
the toolkit and says whether the GPU run would rebuild; --rehearse-build also does the real
build for sm 9.0 (EBJDAT_BUILD_CUDA=1, MAX_JOBS=<cores>) in a copy of the tree (tracked and
untracked, unignored files, as a device machine receives it), timed; it takes minutes, and the
budget grows by 1800 s for it. A rehearsal prints one line per step, writes results only with
an explicit --out-dir, and exits 1 if any step failed.

    python scripts/gpu_check.py [--skip-build | --rebuild] [--skip PART ...] [--quick]
                                [--budget-s S] [--budget-from auto|now] [--out-dir D]
                                [--step-models M ...] [--step-batch B] [--step-repeats R]
                                [--step-variants V ...] [--cpu-only] [--write-cpu]
                                [--rehearse] [--rehearse-build]

Exit status: 0 when every step that ran succeeded (missing the bandwidth goal is reported, not
a failure), 1 when a step failed, timed out or was left out for lack of time, 2 on bad arguments.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The modules are in scripts/gpucheck/; scripts/ is not a package, so it goes on sys.path
# (Python puts it there itself when it runs this file, but not when the file is loaded by path).
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from gpucheck.main import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
