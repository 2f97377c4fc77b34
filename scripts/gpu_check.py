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

import argparse
import ast
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SANITIZER_CALLS = ROOT / "scripts" / "sanitizer_calls.py"
GOAL_FRACTION = 0.85
GOAL_NUMEL = 1 << 24
TAIL_LINES = 60
LOG_CAP_BYTES = 2_000_000  # a log kept under --out-dir: its head and tail beyond this
GPU_PARTS = ("tests", "ops", "step", "scaling")
ORDER = (
    "build",
    "cuda-tests",
    "cuda-sanitizer",
    "cuda-ops",
    "cuda-step",
    "cuda-scaling",
    "cuda-ops-compile",
    "cpu-bench",
)
PART_OF = {
    "cuda-tests": "tests",
    "cuda-sanitizer": "tests",
    "cuda-ops": "ops",
    "cuda-ops-compile": "ops",
    "cuda-step": "step",
    "cuda-scaling": "scaling",
}
RESULT_KEY = {
    "build": "build",
    "cuda-tests": "tests",
    "cuda-sanitizer": "sanitizer",
    "cuda-ops": "bench",
    "cuda-step": "step",
    "cuda-scaling": "scaling",
    "cuda-ops-compile": "ops_compile",
    "cpu-bench": "cpu",
}
# What the GPU machine lacks (its packages come from `pip install --no-deps`, without network).
BLOCKED_IMPORTS = ("torchattacks", "torch_fidelity", "pyautoattack", "tomli_w")
DEFAULT_BUDGET_S = 540.0
REHEARSE_BUILD_EXTRA_S = 1800.0  # a 2-core build here is slower than a 16-core one there
GRACE_S = 10.0  # after SIGINT, before SIGKILL
MARGIN_S = 10.0  # kept for the last results write and the summary
STEP_MODELS = ("wrn-28-10",)
STEP_BATCH = 64
STEP_REPEATS = 3
STEP_VARIANTS = ("default", "bf16")
SANITIZER_BACKENDS = ("cuda", "triton")
DEFAULT_SANITIZER_BACKENDS = ("cuda",)  # the hand-written kernels; triton adds ~a minute
SHELLS = {"sh", "bash", "dash", "zsh", "ksh"}


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int]
    count: int = 1  # visible GPUs (the scaling step needs two or more)
    memory_gib: float | None = None

    @property
    def arch(self) -> str:
        """TORCH_CUDA_ARCH_LIST for exactly this GPU: the fastest build, nothing to spare."""
        return f"{self.capability[0]}.{self.capability[1]}"


REHEARSAL_GPU = Gpu("rehearsal H200", (9, 0), 1, 139.8)


@dataclass(frozen=True)
class Step:
    name: str
    run: bool
    why: str


@dataclass(frozen=True)
class Timing:
    min_s: float  # the least worth starting with, and what each earlier step leaves for it
    cap_s: float | None = None  # the most it may take, even with time to spare
    optional: bool = False  # nothing is held back for it: it runs on time left over


TIMING = {
    "build": Timing(60),
    "cuda-tests": Timing(30, 200),
    "cuda-sanitizer": Timing(40, 150),
    "cuda-ops": Timing(40, 150),
    "cuda-step": Timing(90),
    "cuda-scaling": Timing(90),
    "cuda-ops-compile": Timing(60, optional=True),
    "cpu-bench": Timing(30),
}


def detect_gpu() -> Gpu | None:
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return Gpu(
        props.name,
        (props.major, props.minor),
        torch.cuda.device_count(),
        round(props.total_memory / 2**30, 1),
    )


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


# -- time -----------------------------------------------------------------------------------


def _process_age(pid: int | str) -> float | None:
    """Seconds since process `pid` started (Linux /proc), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def _one_shot(argv: Sequence[str]) -> bool:
    """Whether argv is `sh -c "..."` (any shell, any flags with c) or `timeout ...`: a process
    that lives only as long as the one command it runs."""
    if not argv:
        return False
    name = Path(argv[0]).name.lstrip("-")
    if name == "timeout":
        return True
    if name not in SHELLS:
        return False
    for arg in argv[1:]:
        if not arg.startswith("-") or arg == "--":
            return False
        if re.fullmatch(r"-[a-zA-Z]*c[a-zA-Z]*", arg):
            return True
    return False


def command_age() -> tuple[float, str]:
    """(seconds, what) since the enclosing one-shot command began: this process's own start
    (a shell that ran `pip install ... && python gpu_check.py` may have exec'd into it), or its
    parent's when that is a `sh -c` or `timeout`. (0.0, "now") when neither is known."""
    best = (_process_age("self") or 0.0, "this process")
    try:
        argv = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        argv = ""
    parent = [a for a in argv.split("\0") if a]
    age = _process_age(os.getppid()) if _one_shot(parent) else None
    if age is not None and age > best[0]:
        best = (age, f"{Path(parent[0]).name} -c, pid {os.getppid()}")
    return best


class Budget:
    """The check's time: `total_s` from a start `used_s` seconds ago. A step may run for the
    time left minus what the later steps need at least (their TIMING min_s), at most its cap."""

    def __init__(
        self, total_s: float, *, used_s: float = 0.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.total_s = total_s
        self.used_before_s = used_s
        self.clock = clock
        self.start = clock() - used_s

    def left(self) -> float:
        return self.total_s - (self.clock() - self.start)

    def timeout(self, name: str, later: Iterable[str]) -> tuple[float | None, str]:
        """(seconds the step may run, "") or (None, why it is left out)."""
        timing = TIMING[name]
        held = sum(TIMING[n].min_s for n in later if not TIMING[n].optional)
        left = self.left()
        available = left - held - MARGIN_S
        if timing.cap_s is not None:
            available = min(available, timing.cap_s)
        if available < timing.min_s:
            return None, (
                f"out of time: {max(left, 0):.0f} s of the {self.total_s:.0f} s budget left, "
                f"{held:.0f} s of it held for later steps; {name} needs >= {timing.min_s:.0f} s"
            )
        return available, ""


# -- helpers --------------------------------------------------------------------------------


def slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (stable file names)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def _toolkit_ok(root: str | os.PathLike | None) -> bool:
    return (
        bool(root)
        and (Path(root) / "bin" / "nvcc").is_file()
        and (Path(root) / "include" / "cuda_runtime.h").is_file()
    )


def find_cuda_home() -> str | None:
    """A toolkit root with a real nvcc and headers. setup.py only tries CUDA_HOME, CUDA_PATH and
    /usr/local/cuda; GPU machines also keep toolkits in /usr/local/cuda-X.Y or put nvcc on PATH
    (sometimes as a wrapper script, so every candidate is checked, not guessed)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if torch.version.cuda:
        candidates.append(f"/usr/local/cuda-{torch.version.cuda}")
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates += sorted(map(str, Path("/usr/local").glob("cuda-*")), reverse=True)
    return next((c for c in candidates if _toolkit_ok(c)), None)


def find_sanitizer(cuda_home: str | None) -> str | None:
    """compute-sanitizer from the toolkit (bin/, or its own directory in older layouts), else
    from PATH."""
    if cuda_home:
        for rel in ("bin/compute-sanitizer", "compute-sanitizer/compute-sanitizer"):
            path = Path(cuda_home) / rel
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    return shutil.which("compute-sanitizer")


@dataclass
class Run:
    """One subprocess: exit code (None: it could not start), the last lines of its output, its
    duration, whether it was stopped for running out of time, and where its whole log is."""

    rc: int | None
    tail: list[str]
    seconds: float
    timed_out: bool = False
    log: Path | None = None

    def text(self) -> str:
        """The whole output (from the log when there is one)."""
        if self.log is not None and self.log.exists():
            return self.log.read_text(errors="replace")
        return "\n".join(self.tail)

    def record(self, command: Sequence[str] | None = None) -> dict:
        out: dict = {"rc": self.rc, "seconds": round(self.seconds, 1), "timed_out": self.timed_out}
        if command is not None:
            out["command"] = " ".join(map(str, command))
        return out


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_logged(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    echo: bool = True,
    log: Path | None = None,
    timeout: float | None = None,
    grace: float = GRACE_S,
    cwd: Path = ROOT,
) -> Run:
    """Runs `cmd` in its own process group, echoing its output live (when `echo`), keeping the
    whole log in `log` and the last lines for the results. After `timeout` seconds the group
    gets SIGINT, and SIGKILL `grace` seconds later if it is still there."""
    start = time.monotonic()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
        )
    except OSError as err:
        return Run(None, [f"cannot start {cmd[0]}: {err}"], 0.0, log=None)
    sink = open(log, "w") if log is not None else None  # noqa: SIM115 - closed below

    def pump() -> None:
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            if sink is not None:
                sink.write(line)
            if echo:
                print("    " + line, end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        try:
            proc.wait(timeout=None if timeout is None else max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            _signal_group(proc, signal.SIGINT)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            _signal_group(proc, signal.SIGKILL)  # whatever of the group is left
    except BaseException:  # Ctrl-C here: the group has its own session and did not get it
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        reader.join(timeout=5)
        if sink is not None:
            sink.close()
    seconds = time.monotonic() - start
    if timed_out:
        note = (
            f"[gpu_check] timed out after {timeout:.0f} s: SIGINT, then SIGKILL after "
            f"{grace:.0f} s if still running"
        )
        tail.append(note)
        if log is not None:
            with open(log, "a") as f:
                f.write(note + "\n")
    return Run(proc.returncode, list(tail), seconds, timed_out, log)


def _cap_log(path: Path, limit: int = LOG_CAP_BYTES) -> None:
    """Keeps a log that comes back from a lent machine small: its head and tail."""
    if not path.exists() or path.stat().st_size <= limit:
        return
    data = path.read_bytes()
    head, tail = data[: limit // 10], data[-(limit - limit // 10) :]
    path.write_bytes(head + f"\n[... {len(data) - limit} bytes left out ...]\n".encode() + tail)


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _table(titles: Sequence[str], rows: Iterable[Sequence[object]], indent: str = "    ") -> None:
    rows = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(t), *(len(r[i]) for r in rows)]) for i, t in enumerate(titles)]
    for row in [list(titles), *rows]:
        print(indent + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


# -- simulated package set ------------------------------------------------------------------

_BLOCKER = '''"""Written by scripts/gpu_check.py --rehearse: hides {names} from imports (import
raises ModuleNotFoundError, importlib.util.find_spec gives None, importlib.metadata finds no
distribution), as on the GPU machine, where they are not installed."""
import importlib.machinery
import sys

BLOCKED = {blocked!r}


def _dist_name(dist):
    try:
        return (dist.metadata["Name"] or "").lower().replace("-", "_").replace(".", "_")
    except Exception:
        return ""


class _Hide:
    def __init__(self, inner):
        self._inner = inner

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            return None
        find = getattr(self._inner, "find_spec", None)
        return None if find is None else find(name, path, target)

    def find_distributions(self, *args, **kwargs):
        find = getattr(self._inner, "find_distributions", None)
        dists = () if find is None else find(*args, **kwargs)
        return (d for d in dists if _dist_name(d) not in BLOCKED)

    def __getattr__(self, name):
        return getattr(self._inner, name)


sys.meta_path[:] = [_Hide(finder) for finder in sys.meta_path]
for _name in list(sys.modules):
    if _name.partition(".")[0] in BLOCKED:
        del sys.modules[_name]

# A sitecustomize further down sys.path still runs.
_here = {here!r}
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if p and p != _here]
)
if _spec is not None and _spec.loader is not None:
    _spec.loader.exec_module(type(sys)("_next_sitecustomize"))
'''


def write_import_blocker(directory: Path, names: Sequence[str] = BLOCKED_IMPORTS) -> Path:
    """A sitecustomize.py in `directory` that hides `names`; put `directory` first on
    PYTHONPATH (see `blocked_env`) and every Python subprocess lacks them."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(
        _BLOCKER.format(names=", ".join(names), blocked=set(names), here=str(directory))
    )
    return directory


def blocked_env(env: dict[str, str], directory: Path) -> dict[str, str]:
    paths = [str(directory), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return dict(env, PYTHONPATH=os.pathsep.join(paths))


# -- judging output -------------------------------------------------------------------------

CUDA_UNAVAILABLE = re.compile(
    "|".join(
        [
            r"Torch not compiled with CUDA enabled",
            r"No CUDA GPUs are available",
            r"Found no NVIDIA driver",
            r"no CUDA-capable device is detected",
            r"CUDA driver initialization failed",
            r"CUDA driver version is insufficient",
            r"cudaErrorNoDevice|cudaErrorInsufficientDriver",
            r"CUDA is not available",
            r"no CUDA GPU is visible",  # ebjdat-bench --device cuda
        ]
    ),
    re.IGNORECASE,
)
# Errors that mean the code itself is wrong, whatever their message says.
CODE_ERRORS = {
    "NameError",
    "ImportError",
    "ModuleNotFoundError",
    "TypeError",
    "AttributeError",
    "SyntaxError",
    "IndentationError",
    "UnboundLocalError",
}
_EXC_LINE = re.compile(
    r"^(?P<type>(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt|Failure))"
    r"(?::\s*(?P<msg>.*))?$"
)
_CLI_ERROR = re.compile(r"^(?P<prog>[\w.\-]+(?: [\w.\-]+)*): error: (?P<msg>.*)$")


def final_error(lines: Sequence[str]) -> tuple[str | None, str]:
    """(exception type or "usage", line) of the last error a Python program printed: the last
    line of a traceback, or a command-line tool's `prog: error: ...`; (None, "") if none."""
    for line in reversed(lines):
        text = line.strip()
        match = _EXC_LINE.match(text)
        if match:
            return match["type"].rsplit(".", 1)[-1], text
        match = _CLI_ERROR.match(text)
        if match:
            return "usage", text
    return None, ""


def classify_failure(lines: Sequence[str]) -> tuple[str, str]:
    """("cuda-unavailable", line) when the output ends with a CUDA-availability error (torch's,
    or ebjdat-bench's own), ("error", line) for any other error, ("none", last line) without
    one."""
    kind, line = final_error(lines)
    if kind is not None:
        if kind not in CODE_ERRORS and CUDA_UNAVAILABLE.search(line):
            return "cuda-unavailable", line
        return "error", line
    hits = [x.strip() for x in lines if CUDA_UNAVAILABLE.search(x)]
    if hits:
        return "cuda-unavailable", hits[-1]
    rest = [x.strip() for x in lines if x.strip()]
    return "none", rest[-1] if rest else ""


def judge_cuda_stop(run: Run) -> tuple[bool, str]:
    """Rehearsal verdict on a CUDA command run without a GPU: it must get to its first CUDA call
    and stop there with a CUDA-availability error, and with nothing else."""
    if run.rc is None:
        return False, run.tail[-1] if run.tail else "could not start"
    if run.timed_out:
        return False, "timed out before reaching a CUDA call"
    if run.rc == 0:
        return False, "ran to the end without a GPU; it should stop at its first CUDA call"
    kind, line = classify_failure(run.tail)
    if kind == "cuda-unavailable":
        return True, f"reached the first CUDA call: {line[:150]}"
    return False, f"exit {run.rc} before any CUDA call: {line[:300] or '(no message)'}"


# -- pytest junit ---------------------------------------------------------------------------


def _test_name(classname: str, name: str, root: Path = ROOT) -> str:
    """pytest's junit classname ("tests.test_cuda" or "tests.test_x.TestY") and name, as a node
    id to paste into `pytest` ("tests/test_cuda.py::name")."""
    if not classname:  # a module skipped as a whole: "tests.test_x"
        classname, name = name, ""
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        path = "/".join(parts[:cut]) + ".py"
        if (root / path).is_file():
            return "::".join([path, *parts[cut:], *([name] if name else [])])
    return f"{classname}::{name}" if name else classname


def _first_lines(text: str | None, n: int = 5) -> list[str]:
    lines = [x.rstrip() for x in (text or "").splitlines() if x.strip()]
    return lines[:n]


def _collection_skip_reason(text: str) -> str:
    """A module skipped at collection: pytest writes "('path', line, 'Skipped: reason')"."""
    try:
        value = ast.literal_eval(" ".join(text.splitlines()))
    except (ValueError, SyntaxError):
        value = text
    if isinstance(value, tuple) and value:
        value = str(value[-1])
    return re.sub(r"^\S+:\d+: ", "", str(value)).removeprefix("Skipped: ")


def parse_junit(path: Path, root: Path = ROOT) -> dict:
    """Counts and one row per testcase of a pytest junit XML: name, outcome (passed, failed,
    error, skipped), seconds; `message` (first 5 lines) and `where` (the failing line) for
    failures and errors, `reason` for skips."""
    tree = ET.parse(path).getroot()
    suites = [tree] if tree.tag == "testsuite" else tree.findall("testsuite")
    cases = []
    for suite in suites:
        for case in suite.iter("testcase"):
            row: dict = {
                "name": _test_name(case.get("classname", ""), case.get("name", ""), root),
                "outcome": "passed",
                "seconds": float(case.get("time") or 0.0),
            }
            for tag, outcome in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
                child = case.find(tag)
                if child is None:
                    continue
                row["outcome"] = outcome
                message, text = child.get("message"), child.text or ""
                if outcome == "skipped":
                    reason = message or text.strip()
                    if message == "collection skipped" and text.strip():
                        reason = _collection_skip_reason(text.strip())
                    if child.get("type") == "pytest.xfail":
                        reason = "xfail: " + reason
                    row["reason"] = reason
                else:
                    e_lines = [x[1:].strip() for x in text.splitlines() if x.startswith("E ")]
                    lines = _first_lines(message, 5) + e_lines
                    row["message"] = list(dict.fromkeys(lines))[:5] or _first_lines(text)
                    where = [x for x in text.splitlines() if re.match(r"^\S+:\d+: ", x)]
                    if where:
                        row["where"] = where[-1].strip()
                break
            cases.append(row)
    counts = {
        k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")
    }
    return {"tests": len(cases), **counts, "cases": cases}


_VERBOSE_LINE = re.compile(
    r"^(?P<name>\S+::\S+) (?P<outcome>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b"
)


def parse_verbose(text: str) -> dict:
    """The per-test rows that `pytest -v` printed, for a run cut off before its junit XML."""
    outcomes = {
        "PASSED": "passed",
        "XPASS": "passed",
        "FAILED": "failed",
        "ERROR": "error",
        "SKIPPED": "skipped",
        "XFAIL": "skipped",
    }
    cases = [
        {"name": m["name"], "outcome": outcomes[m["outcome"]], "seconds": None}
        for m in map(_VERBOSE_LINE.match, text.splitlines())
        if m
    ]
    counts = {
        k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")
    }
    return {"tests": len(cases), **counts, "cases": cases, "from": "pytest -v output"}


def print_tests(parsed: dict) -> None:
    rows = []
    for case in parsed["cases"]:
        outcome = case["outcome"]
        seconds = "" if case.get("seconds") is None else f"{case['seconds']:.2f}"
        note = case.get("reason", "")
        rows.append(
            [
                outcome.upper() if outcome in ("failed", "error") else outcome,
                seconds,
                case["name"] + (f"  ({note})" if note else ""),
            ]
        )
    _table(["outcome", "seconds", "test"], rows)
    for case in parsed["cases"]:
        if case["outcome"] in ("failed", "error"):
            print(f"    -- {case['outcome']}: {case['name']}")
            for line in case.get("message", []):
                print(f"         {line}")
            if case.get("where"):
                print(f"         at {case['where']}")
    print(
        f"    {parsed['passed']} passed, {parsed['failed']} failed, {parsed['error']} errors, "
        f"{parsed['skipped']} skipped"
    )


# -- sanitizer output -----------------------------------------------------------------------

_SUMMARY = re.compile(r"ERROR SUMMARY:\s*(\d+)\s+errors?")
_CALL = re.compile(r"^call (?P<name>.+): (?P<status>ok|NOT FINITE)$")


def parse_sanitizer(text: str) -> dict:
    """compute-sanitizer's `ERROR SUMMARY: N errors` (None when it never got there), how many of
    them are failed CUDA API calls ("Program hit cudaError... on CUDA API call", which torch
    itself may cause) rather than memory errors in a kernel, the first lines of its reports,
    and which of sanitizer_calls.py's calls finished."""
    summaries = _SUMMARY.findall(text)
    reports = [
        x.strip()
        for x in text.splitlines()
        if x.startswith("=========")
        and x.strip("= \n")
        and not _SUMMARY.search(x)
        and "COMPUTE-SANITIZER" not in x
    ]
    calls = [m.groupdict() for m in map(_CALL.match, text.splitlines()) if m]
    errors = int(summaries[-1]) if summaries else None
    api = sum(bool(re.match(r"=+ Program hit \w+", x)) for x in reports)
    return {
        "errors": errors,
        "api_errors": api,
        "memory_errors": None if errors is None else max(errors - api, 0),
        "first_reports": reports[:12],
        "calls": [c["name"] for c in calls if c["status"] == "ok"],
        "not_finite": [c["name"] for c in calls if c["status"] != "ok"],
        "all_calls_ok": bool(re.search(r"^all \d+ calls ok", text, re.MULTILINE)),
    }


# -- build ----------------------------------------------------------------------------------

PROBE = (
    "import json, os, ebjdat\n"
    "from ebjdat import _native\n"
    "from ebjdat.ops import _library as L\n"
    "mod, reason = _native.load()\n"
    "so = getattr(mod, '__file__', None)\n"
    "print(json.dumps({'build_info': _native.build_info(), 'loaded': mod is not None,\n"
    "    'reason': reason, 'so': so, 'so_mtime': os.path.getmtime(so) if so else None,\n"
    "    'ebjdat': getattr(ebjdat, '__version__', None),\n"
    "    'cuda_kernels': {op: L.has_native_kernel(op, 'CUDA') for op in L.ops()}}))\n"
)


def probe_installed(env: dict[str, str] | None, timeout: float = 120) -> dict:
    """What a fresh process sees of ebjdat: build info, whether _C loads, its CUDA kernels."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", PROBE],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"the probe of the installed package took over {timeout:.0f} s"}
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": "ebjdat does not import: " + (out.stderr.strip()[-2000:] or "?")}


def _arch_entries(arch_list: str) -> set[str]:
    return {a.strip().removesuffix("+PTX") for a in re.split(r"[;\s,]+", arch_list) if a.strip()}


def _newest_source(root: Path = ROOT) -> tuple[float, Path | None]:
    paths = [p for p in (root / "csrc").rglob("*") if p.is_file()] + [root / "setup.py"]
    best: tuple[float, Path | None] = (0.0, None)
    for p in paths:
        if p.exists() and p.stat().st_mtime > best[0]:
            best = (p.stat().st_mtime, p)
    return best


def rebuild_reason(probe: dict, gpu: Gpu, root: Path = ROOT) -> str | None:
    """Why the installed extension will not do for `gpu` (None: it will): it must load, be a
    CUDA build with every op's CUDA kernel, include the GPU's architecture (or say it was built
    for the visible GPU) and be newer than every file under csrc/ and setup.py."""
    if "error" in probe:
        return probe["error"]
    info = probe.get("build_info") or {}
    if not probe.get("loaded"):
        return f"ebjdat._C does not load ({probe.get('reason') or 'unknown'})"
    if info.get("kind") != "cuda":
        return f"the installed ebjdat._C is a {info.get('kind') or 'unknown'} build, not cuda"
    missing = [op for op, ok in (probe.get("cuda_kernels") or {}).items() if not ok]
    if missing or not probe.get("cuda_kernels"):
        return "no CUDA kernel for " + (", ".join(missing) or "any op")
    archs = info.get("cuda_arch_list", "")
    if archs != "(visible GPU)" and gpu.arch not in _arch_entries(archs):
        return f"built for {archs or 'no architecture'}, not {gpu.arch}"
    newest, path = _newest_source(root)
    if probe.get("so_mtime") is None or newest > probe["so_mtime"]:
        return f"{path.relative_to(root) if path else 'a source'} is newer than {probe.get('so')}"
    return None


def build_env(gpu: Gpu, arch: str | None, cuda_home: str) -> dict[str, str]:
    """The build's environment: CUDA forced, this GPU's architecture only, a job per core."""
    return dict(
        os.environ,
        EBJDAT_BUILD_CUDA="1",
        CUDA_HOME=cuda_home,
        TORCH_CUDA_ARCH_LIST=arch or gpu.arch,
        MAX_JOBS=str(os.cpu_count() or 1),
    )


BUILD_ENV_KEYS = ("EBJDAT_BUILD_CUDA", "CUDA_HOME", "TORCH_CUDA_ARCH_LIST", "MAX_JOBS")


def nvcc_version(cuda_home: str | None) -> str | None:
    if not cuda_home:
        return None
    try:
        out = subprocess.run(
            [str(Path(cuda_home) / "bin" / "nvcc"), "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [x for x in out.splitlines() if "release" in x] or out.strip().splitlines()[-1:]
    return lines[0].strip() if lines else None


def tree_files(root: Path = ROOT) -> list[str]:
    """The files a device machine receives: tracked ones that exist, and untracked ones git
    does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    names = sorted({n for n in out.decode().split("\0") if n})
    return [n for n in names if (root / n).is_file()]


def copy_tree(dest: Path, root: Path = ROOT) -> int:
    """Copies `tree_files` to `dest`; returns how many."""
    names = tree_files(root)
    for name in names:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    return len(names)


def wheel_build(wheel_dir: Path) -> dict:
    """What a built wheel holds: its ebjdat._C and the build info setup.py wrote."""
    wheels = sorted(wheel_dir.glob("*.whl"))
    if not wheels:
        return {"ok": False, "error": f"no wheel in {wheel_dir}"}
    with zipfile.ZipFile(wheels[-1]) as zf:
        names = zf.namelist()
        libs = [n for n in names if re.fullmatch(r"ebjdat/_C\.[^/]*\.so", n)]
        info: dict = {}
        if "ebjdat/_build_info.py" in names:
            text = zf.read("ebjdat/_build_info.py").decode()
            match = re.search(r"^BUILD = (.*)$", text, re.MULTILINE)
            info = ast.literal_eval(match[1]) if match else {}
    return {
        "ok": bool(libs),
        "wheel": wheels[-1].name,
        "extension": libs[0] if libs else None,
        "build_info": info,
    }


# -- the steps ------------------------------------------------------------------------------


@dataclass
class Context:
    args: argparse.Namespace
    gpu: Gpu | None
    workdir: Path
    rehearse: bool
    env: dict[str, str]  # every step's subprocesses
    cuda_home: str | None
    probe: dict = field(default_factory=dict)
    logs: Path | None = None  # where full logs are kept (else the workdir)

    def run(
        self,
        name: str,
        cmd: Sequence[str],
        timeout: float | None,
        *,
        env: dict[str, str] | None = None,
        echo: bool = True,
    ) -> Run:
        log = (self.logs or self.workdir) / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        if echo:
            print(f"    $ {' '.join(map(str, cmd))}", flush=True)
        run = run_logged(
            cmd,
            env=env or self.env,
            echo=echo,
            log=log,
            timeout=None if timeout is None else max(timeout - GRACE_S, 1.0),
        )
        if self.logs is not None:
            _cap_log(log)
        return run


def _bench(module_args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "ebjdat.cli.bench", *module_args]


def _failure(info: dict, run: Run) -> dict:
    if not info.get("ok"):
        info["log_tail"] = run.tail
    return info


def _rehearsed(info: dict, run: Run) -> dict:
    ok, why = judge_cuda_stop(run)
    info.update(ok=ok, rehearsal=why)
    if not ok:
        info["log_tail"] = run.tail[-25:]
    return info


def step_build(ctx: Context, timeout: float) -> dict:
    """The installed extension if it fits this GPU, else `pip install -e .` for it."""
    gpu, probe = ctx.gpu, ctx.probe
    reason = "--rebuild" if ctx.args.rebuild else rebuild_reason(probe, gpu)
    info: dict = {"installed": probe, "rebuild_reason": reason}
    if ctx.rehearse:
        return _rehearse_build(ctx, info, timeout)
    if reason is None:
        print(
            f"    using the installed build ({probe['build_info']}): a CUDA build for "
            f"{gpu.arch}, newer than csrc/ and setup.py (--rebuild builds anyway)"
        )
        info.update(
            ok=True, reused=True, build_info=probe["build_info"], cuda_kernels=probe["cuda_kernels"]
        )
        return info
    if ctx.cuda_home is None:
        info.update(
            ok=False,
            error="no CUDA toolkit found (set CUDA_HOME to a root with "
            "bin/nvcc and include/cuda_runtime.h)",
        )
        return info
    env = build_env(gpu, ctx.args.arch, ctx.cuda_home)
    info["env"] = {k: env[k] for k in BUILD_ENV_KEYS}
    info["nvcc"] = nvcc_version(ctx.cuda_home)
    print("    rebuilding: " + reason)
    print("    " + " ".join(f"{k}={env[k]}" for k in BUILD_ENV_KEYS), flush=True)
    cmd = install_command()
    run = ctx.run("build", cmd, timeout, env=env, echo=False)
    info.update(run.record(cmd), ok=run.rc == 0 and not run.timed_out)
    if not info["ok"]:
        info["log_tail"] = run.tail
        print("\n".join("    " + line for line in run.tail[-25:]))
        return info
    after = probe_installed(ctx.env)
    info.update(
        after=after, build_info=after.get("build_info"), cuda_kernels=after.get("cuda_kernels")
    )
    if "error" in after:
        info.update(ok=False, error="the rebuilt package does not import: " + after["error"])
    elif (after.get("build_info") or {}).get("kind") != "cuda" or not after.get("loaded"):
        info.update(
            ok=False,
            error="the build did not produce a loadable CUDA extension: "
            f"{after.get('build_info')} {after.get('reason') or ''}".strip(),
        )
    else:
        ctx.probe = after
    return info


def install_command() -> list[str]:
    """--no-deps, so pip never touches the installed torch (nor reaches for the network)."""
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-build-isolation",
        "--no-deps",
        "-v",
        "-e",
        str(ROOT),
    ]


def _rehearse_build(ctx: Context, info: dict, timeout: float) -> dict:
    """The build step without a GPU: the installed package probed, the toolkit found, what the
    GPU run would decide; with --rehearse-build, the real build for sm 9.0 in a copy of the
    tree, as a wheel (so that nothing here is installed)."""
    probe, reason = ctx.probe, info["rebuild_reason"]
    print(
        "    the GPU run would "
        + (f"rebuild: {reason}" if reason else "use the installed build as is")
    )
    if ctx.cuda_home is None:
        info.update(
            ok=False,
            rehearsal="no CUDA toolkit found (set CUDA_HOME to a root with "
            "bin/nvcc and include/cuda_runtime.h)",
        )
        return info
    env = build_env(ctx.gpu, ctx.args.arch, ctx.cuda_home)
    info.update(
        env={k: env[k] for k in BUILD_ENV_KEYS},
        nvcc=nvcc_version(ctx.cuda_home),
        command_on_gpu=" ".join(install_command()),
    )
    if "error" in probe:
        info.update(ok=False, rehearsal=f"the installed package: {probe['error'][-300:]}")
        return info
    if not ctx.args.rehearse_build:
        info.update(
            ok=True,
            rehearsal=f"installed package probed, toolkit found ({info['nvcc']}"
            f"); the GPU run would {'rebuild' if reason else 'reuse it'}; the build "
            "itself needs --rehearse-build",
        )
        return info
    src, wheels = ctx.workdir / "tree", ctx.workdir / "wheel"
    n = copy_tree(src)
    print(
        f"    copied {n} files to {src}; building with "
        + " ".join(f"{k}={env[k]}" for k in BUILD_ENV_KEYS),
        flush=True,
    )
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-build-isolation",
        "--no-deps",
        "--no-index",
        "-v",
        "-w",
        str(wheels),
        str(src),
    ]
    run = ctx.run("build", cmd, timeout, env=env, echo=False)
    info.update(run.record(cmd))
    wheel = wheel_build(wheels) if run.rc == 0 else {"ok": False}
    info["wheel"] = wheel
    built = wheel.get("build_info") or {}
    ok = (
        run.rc == 0
        and wheel["ok"]
        and built.get("kind") == "cuda"
        and (built.get("cuda_arch_list") == env["TORCH_CUDA_ARCH_LIST"])
    )
    info.update(
        ok=ok,
        rehearsal=(
            f"built {wheel.get('extension')} for {built.get('cuda_arch_list')} in "
            f"{run.seconds:.0f} s with MAX_JOBS={env['MAX_JOBS']}"
            if ok
            else f"the build failed after {run.seconds:.0f} s"
            + (" (timed out)" if run.timed_out else "")
            + ": "
            + (final_error(run.tail)[1] or (run.tail[-1] if run.tail else ""))
        ),
    )
    print(f"    rehearsal build: {info['rehearsal']}")
    if not ok:
        info["log_tail"] = run.tail
        print("\n".join("    " + line for line in run.tail[-25:]))
    return info


def pytest_command(xml: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        "tests",
        "-m",
        "cuda",
        "-v",
        "--tb=short",
        "-rfEs",
        "-p",
        "no:cacheprovider",
        "-o",
        "faulthandler_timeout=120",
        f"--junitxml={xml}",
    ]


def step_tests(ctx: Context, timeout: float) -> dict:
    xml = ctx.workdir / "cuda-tests.xml"
    cmd = pytest_command(xml)
    run = ctx.run("cuda-tests", cmd, timeout)
    info = run.record(cmd[2:])
    try:
        parsed = parse_junit(xml)
    except (OSError, ET.ParseError):  # killed before (or while) writing it
        parsed = parse_verbose(run.text())
    info.update({k: v for k, v in parsed.items()})
    if parsed["cases"]:
        _banner(
            "CUDA tests, one row per test"
            + (" (from the -v output: no junit XML)" if "from" in parsed else "")
        )
        print_tests(parsed)
    if ctx.rehearse:
        bad = [c for c in parsed["cases"] if c["outcome"] != "skipped" or not c.get("reason")]
        ok = run.rc == 0 and not run.timed_out and bool(parsed["cases"]) and not bad
        info["ok"] = ok
        info["rehearsal"] = (
            f"{parsed['tests']} collected, every one skipped with a reason"
            if ok
            else f"exit {run.rc}: "
            + (
                "; ".join(
                    f"{c['name']} {c['outcome']} {(c.get('message') or [''])[0]}" for c in bad[:3]
                )
                or (final_error(run.tail)[1] or "no test collected")
            )
        )
        return _failure(info, run)
    # 5: nothing selected, i.e. no test carries the cuda marker; worth a warning, not a failure.
    info["ok"] = run.rc in (0, 5) and not run.timed_out
    if run.rc == 5:
        info["warning"] = "no tests are marked cuda"
    return _failure(info, run)


def sanitizer_command(tool: str | None, backend: str) -> list[str]:
    calls = [sys.executable, str(SANITIZER_CALLS), "--device", "cuda", "--backend", backend]
    return [tool, "--tool", "memcheck", *calls] if tool else calls


def step_sanitizer(ctx: Context, timeout: float) -> dict:
    tool = find_sanitizer(ctx.cuda_home)
    where = (
        f"{ctx.cuda_home or '$CUDA_HOME'}/bin, {ctx.cuda_home or '$CUDA_HOME'}/"
        "compute-sanitizer or PATH"
    )
    info: dict = {"tool": tool}
    if tool is None and not ctx.rehearse:
        info.update(ok=True, skip_reason=f"compute-sanitizer not found (looked in {where})")
        print("    skipped: " + info["skip_reason"])
        return info
    until = time.monotonic() + timeout
    env = dict(ctx.env, PYTORCH_NO_CUDA_MEMORY_CACHING="1")  # so memcheck sees every buffer
    runs = []
    if ctx.rehearse:
        if tool is None:
            print(
                f"    compute-sanitizer not found (looked in {where}); the GPU run looks in "
                "the same places and skips this step without it. The op calls run bare."
            )
        cmd = [sys.executable, str(SANITIZER_CALLS), "--device", "cpu"]
        run = ctx.run("sanitizer-cpu", cmd, until - time.monotonic(), env=env)
        parsed = parse_sanitizer(run.text())
        ok = run.rc == 0 and parsed["all_calls_ok"]
        runs.append(
            {
                "backend": "cpu",
                **run.record(cmd),
                "ok": ok,
                "calls": parsed["calls"],
                "rehearsal": f"all {len(parsed['calls'])} calls ran on CPU"
                if ok
                else final_error(run.tail)[1] or f"exit {run.rc}",
            }
        )
    backends = ctx.args.sanitizer_backends
    for i, backend in enumerate(backends):
        cmd = sanitizer_command(tool, backend)
        share = (until - time.monotonic()) / (len(backends) - i)
        run = ctx.run(f"sanitizer-{backend}", cmd, share, env=env)
        parsed = parse_sanitizer(run.text())
        entry = {"backend": backend, **run.record(cmd), **parsed}
        if ctx.rehearse:
            _rehearsed(entry, run)
        else:
            entry["ok"] = (
                run.rc == 0
                and parsed["memory_errors"] == 0
                and parsed["all_calls_ok"]
                and not run.timed_out
            )
            if not entry["ok"]:
                entry["log_tail"] = run.tail[-30:]
            elif parsed["api_errors"]:
                entry["warning"] = f"{parsed['api_errors']} failed CUDA API calls (see reports)"
        runs.append(entry)
    info["runs"] = runs
    info["ok"] = all(r["ok"] for r in runs)
    if ctx.rehearse:
        info["rehearsal"] = "; ".join(f"{r['backend']}: {r['rehearsal']}" for r in runs)
    else:
        _banner("compute-sanitizer memcheck, one run per backend")
        _table(
            ["backend", "errors", "of them API", "calls done", "seconds", "verdict"],
            [
                [
                    r["backend"],
                    "?" if r["errors"] is None else r["errors"],
                    r["api_errors"],
                    f"{len(r['calls'])}",
                    f"{r['seconds']:.0f}",
                    "ok" if r["ok"] else "TIMED OUT" if r["timed_out"] else "FAILED",
                ]
                for r in runs
            ],
        )
        for r in runs:
            for line in r["first_reports"][:8] if not r["ok"] or r["api_errors"] else []:
                print(f"      {r['backend']}: {line}")
    return info


def ops_command(
    device: str,
    out: Path,
    *,
    quick: bool,
    dtypes: Sequence[str],
    sizes: Sequence[str],
    compile: bool = False,
) -> list[str]:
    cmd = _bench(["ops", "--device", device, "--json", str(out), "--dtype", *dtypes])
    cmd += ["--quick"] if quick else ["--sizes", *sizes]
    return cmd + (["--compile"] if compile else ["--no-compile"])


def _run_bench(ctx: Context, name: str, cmd: list[str], out: Path, timeout: float | None) -> dict:
    """An `ebjdat-bench ... --json out` command: its JSON, or the log tail on failure."""
    run = ctx.run(name, cmd, timeout)
    info = run.record(cmd[2:])
    if ctx.rehearse:
        return _rehearsed(info, run)
    info["ok"] = run.rc == 0 and out.exists() and not run.timed_out
    if info["ok"]:
        info.update(json.loads(out.read_text()))
    return _failure(info, run)


def bench_ops(
    ctx: Context,
    device: str,
    timeout: float | None,
    *,
    quick: bool,
    dtypes: Sequence[str],
    sizes: Sequence[str],
) -> dict:
    """ebjdat-bench ops in a fresh process (it must load the extension just built)."""
    out = ctx.workdir / f"ops-{device}.json"
    cmd = ops_command(device, out, quick=quick, dtypes=dtypes, sizes=sizes)
    return _run_bench(ctx, f"ops-{device}", cmd, out, timeout)


def step_ops(ctx: Context, timeout: float) -> dict:
    info = bench_ops(
        ctx,
        "cuda",
        timeout,
        quick=ctx.args.quick,
        dtypes=ctx.args.dtype,
        sizes=("training", "buffer", "large"),
    )
    if info["ok"] and not ctx.rehearse:
        _banner(
            f"bandwidth: fused ops against the copy, goal >= {GOAL_FRACTION:.0%} at >= "
            f"{GOAL_NUMEL} elements"
        )
        info["goal"] = bandwidth_goal(info)
        print_goal(info["goal"])
    return info


def step_ops_compile(ctx: Context, timeout: float) -> dict:
    out = ctx.workdir / "ops-compile-cuda.json"
    cmd = ops_command(
        "cuda",
        out,
        quick=ctx.args.quick,
        dtypes=ctx.args.dtype,
        sizes=("training", "large"),
        compile=True,
    )
    info = _run_bench(ctx, "ops-compile", cmd, out, timeout)
    if info["ok"] and not ctx.rehearse:
        _banner("fused ops against torch.compile")
        rows = [r for r in info.get("rows", []) if r["impl"] == "fused"]
        _table(
            ["op", "shape", "dtype", "fused GB/s", "x compile", "x eager"],
            [
                [
                    r["op"],
                    "x".join(map(str, r["shape"])),
                    r["dtype"],
                    f"{r['gbps']:.1f}",
                    _num(r.get("speedup_vs_compile")),
                    _num(r.get("speedup_vs_eager")),
                ]
                for r in rows
            ],
        )
    return info


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def step_command(
    device: str,
    out: Path,
    *,
    quick: bool,
    models: Sequence[str],
    batch: int,
    repeats: int,
    variants: Sequence[str],
) -> list[str]:
    cmd = _bench(["step", "--device", device, "--json", str(out)])
    cmd += (
        ["--quick"]
        if quick
        else ["--models", *models, "--batch", str(batch), "--repeats", str(repeats)]
    )
    return cmd + ["--variants", *variants]


def expected_step_rows(quick: bool, models: Sequence[str], batch: int) -> list[tuple]:
    """(model, batch, impl) rows a step benchmark must hold: each model's official reference
    and ebjdat's default."""
    models, batch = (["wrn-10-1"], 4) if quick else (models, batch)
    return [(m, batch, impl) for m in models for impl in ("official", "ebjdat")]


def step_step(ctx: Context, timeout: float) -> dict:
    """ebjdat-bench step (official reference vs ebjdat, one training iteration), reduced so that
    it fits the budget: by default WRN-28-10 at batch 64, default and bf16, 3 repeats."""
    a = ctx.args
    out = ctx.workdir / "step-cuda.json"
    cmd = step_command(
        "cuda",
        out,
        quick=a.quick,
        models=a.step_models,
        batch=a.step_batch,
        repeats=a.step_repeats,
        variants=a.step_variants,
    )
    info = _run_bench(ctx, "step-cuda", cmd, out, timeout)
    if ctx.rehearse:
        return _rehearse_models(ctx, info, a.step_models)
    if info["ok"]:
        have = {(r["model"], r["batch"], r["impl"]) for r in info.get("rows", [])}
        missing = [
            r for r in expected_step_rows(a.quick, a.step_models, a.step_batch) if r not in have
        ]
        if missing:
            info.update(
                ok=False,
                error="missing rows: "
                + ", ".join(f"{m} batch {b} {impl}" for m, b, impl in missing),
            )
        _banner("training-iteration benchmark rows")
        print_step_rows(info.get("rows", []))
    return info


def _rehearse_models(ctx: Context, info: dict, models: Sequence[str]) -> dict:
    """ebjdat-bench checks --device before --models, so the model names are checked here."""
    code = (
        "import sys; from ebjdat.models.jem import parse_arch\n"
        "for m in sys.argv[1:]: parse_arch(m)\n"
    )
    run = ctx.run("step-models", [sys.executable, "-c", code, *models], 120, echo=False)
    if run.rc != 0:
        info.update(
            ok=False,
            rehearsal=f"{info['rehearsal']}; but the models do not parse: "
            + (final_error(run.tail)[1] or f"exit {run.rc}"),
        )
    return info


def print_step_rows(rows: Sequence[dict]) -> None:
    official = {(r["model"], r["batch"]): r["median_s"] for r in rows if r["impl"] == "official"}
    phases = ["sgld", "adversarial", "loss_forward", "loss_backward", "optimizer"]
    _table(
        [
            "model",
            "batch",
            "impl",
            "median s",
            "x official",
            *phases,
            "TFLOP/s",
            "x floor",
            "C10 epoch min",
        ],
        [
            [
                r["model"],
                r["batch"],
                r["impl"],
                f"{r['median_s']:.4f}",
                _num(
                    official.get((r["model"], r["batch"])) / r["median_s"]
                    if (r["model"], r["batch"]) in official
                    else None
                ),
                *(_num((r.get("phases") or {}).get(p), "{:.4f}") for p in phases),
                _num(r.get("tflops")),
                _num(r.get("x_floor")),
                _num(r.get("cifar10_epoch_min"), "{:.1f}"),
            ]
            for r in rows
        ],
    )


def step_note(rows: Sequence[dict]) -> str:
    """'wrn-28-10 batch 64: ebjdat 3.00x official, ebjdat+bf16 4.50x official'."""
    official = {(r["model"], r["batch"]): r["median_s"] for r in rows if r["impl"] == "official"}
    notes = []
    for key, ref in official.items():
        others = [r for r in rows if (r["model"], r["batch"]) == key and r["impl"] != "official"]
        notes.append(
            f"{key[0]} batch {key[1]}: "
            + ", ".join(f"{r['impl']} {ref / r['median_s']:.2f}x official" for r in others)
        )
    return "; ".join(notes)


def scaling_command(
    nproc: int, out: Path, *, quick: bool, models: Sequence[str], batch: int, repeats: int
) -> list[str]:
    cmd = _bench(["step", "--device", "cuda", "--nproc", str(nproc), "--json", str(out)])
    cmd += (
        ["--quick"]
        if quick
        else ["--models", *models, "--batch", str(batch), "--repeats", str(repeats)]
    )
    return cmd


def step_scaling(ctx: Context, timeout: float) -> dict:
    """ebjdat-bench step --nproc N: the same per-GPU batch in 1 and in N processes."""
    a = ctx.args
    out = ctx.workdir / "scaling-cuda.json"
    nproc = max(ctx.gpu.count, 2)
    cmd = scaling_command(
        nproc,
        out,
        quick=a.quick,
        models=a.step_models[:1],
        batch=a.step_batch,
        repeats=a.step_repeats,
    )
    info = _run_bench(ctx, "scaling-cuda", cmd, out, timeout)
    if ctx.rehearse:
        info["rehearsal"] += " (command only: with one GPU the plan skips it)"
        return info
    if info["ok"]:
        _table(
            ["model", "processes", "1-proc s", "N-proc s", "speed-up", "efficiency"],
            [
                [
                    r["model"],
                    r["processes"],
                    f"{r['one_process_s']:.4f}",
                    f"{r['n_process_s']:.4f}",
                    _num(r.get("speedup")),
                    _num(r.get("efficiency"), "{:.1%}"),
                ]
                for r in info.get("rows", [])
            ],
        )
    return info


def step_cpu_bench(ctx: Context, timeout: float) -> dict:
    until = time.monotonic() + timeout
    _banner("quick CPU op benchmark")
    ops = bench_ops(ctx, "cpu", until - time.monotonic(), quick=True, dtypes=["float32"], sizes=())
    _banner("quick CPU training-iteration benchmark")
    out = ctx.workdir / "step-cpu.json"
    cmd = step_command("cpu", out, quick=True, models=(), batch=4, repeats=1, variants=["default"])
    step = _run_bench(ctx, "step-cpu", cmd, out, until - time.monotonic())
    return {"ok": ops["ok"] and step["ok"], "bench": ops, "step": step}


STEPS: dict[str, Callable[[Context, float], dict]] = {
    "build": step_build,
    "cuda-tests": step_tests,
    "cuda-sanitizer": step_sanitizer,
    "cuda-ops": step_ops,
    "cuda-step": step_step,
    "cuda-scaling": step_scaling,
    "cuda-ops-compile": step_ops_compile,
    "cpu-bench": step_cpu_bench,
}


def bandwidth_goal(bench: dict) -> dict:
    """Each fused op's GB/s as a fraction of copy bandwidth, judged at >= GOAL_NUMEL elements."""
    copy = bench.get("machine", {}).get("copy")
    rows = [r for r in bench.get("rows", []) if r["impl"] == "fused"]
    cases = []
    for r in rows:
        frac = r["gbps"] / copy["gbps"] if copy else None
        judged = r["numel"] >= GOAL_NUMEL and frac is not None
        cases.append(
            {
                "op": r["op"],
                "shape": r["shape"],
                "dtype": r["dtype"],
                "numel": r["numel"],
                "backend": r.get("backend"),
                "gbps": r["gbps"],
                "frac_of_copy": frac,
                "speedup_vs_eager": r.get("speedup_vs_eager"),
                "judged": judged,
                "meets_goal": (frac >= GOAL_FRACTION) if judged else None,
            }
        )
    judged = [c for c in cases if c["judged"]]
    return {
        "fraction": GOAL_FRACTION,
        "min_numel": GOAL_NUMEL,
        "copy": copy,
        "cases": cases,
        "met": all(c["meets_goal"] for c in judged) if judged else None,
    }


def print_goal(goal: dict) -> None:
    copy = goal["copy"]
    if not copy:
        print("    no copy bandwidth measured")
        return
    print(f"    copy bandwidth: {copy['gbps']:.1f} GB/s (float32 x{copy['numel']})")
    _table(
        ["op", "shape", "dtype", "backend", "GB/s", "% copy", "x eager", "verdict"],
        [
            [
                c["op"],
                "x".join(map(str, c["shape"])),
                c["dtype"],
                c["backend"] or "",
                f"{c['gbps']:.1f}",
                _num(c["frac_of_copy"], "{:.1%}"),
                _num(c["speedup_vs_eager"]),
                ("ok" if c["meets_goal"] else "BELOW GOAL")
                if c["judged"]
                else f"(< {goal['min_numel']} elements)",
            ]
            for c in goal["cases"]
        ],
    )
    if goal["met"] is None:
        print(f"    (no case reaches {goal['min_numel']} elements; nothing judged)")


# -- versions -------------------------------------------------------------------------------


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def nvidia_smi() -> dict | str:
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return "nvidia-smi not found"
    try:
        out = subprocess.run(
            [tool, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"nvidia-smi failed: {err}"
    first = out.stdout.strip().splitlines()[:1]
    if out.returncode != 0 or not first:
        return f"nvidia-smi failed: {(out.stderr or out.stdout).strip()[:300]}"
    name, driver, memory = (x.strip() for x in (first[0].split(",") + ["", ""])[:3])
    return {"name": name, "driver": driver, "memory": memory}


def collect_versions(gpu: Gpu | None, cuda_home: str | None, probe: dict, rehearse: bool) -> dict:
    smi = nvidia_smi()
    return {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _dist_version("triton"),
        "cuda_home": cuda_home,
        "nvcc": nvcc_version(cuda_home),
        "driver": smi.get("driver") if isinstance(smi, dict) else smi,
        "nvidia_smi": smi,
        "gpu": None
        if gpu is None
        else {
            "name": gpu.name,
            "capability": gpu.arch,
            "count": gpu.count,
            "memory_gib": gpu.memory_gib,
            "simulated": rehearse,
        },
        "ebjdat": probe.get("ebjdat"),
        "ebjdat_build": probe.get("build_info"),
        "ebjdat_native_loaded": probe.get("loaded"),
        "ebjdat_cuda_kernels": probe.get("cuda_kernels"),
        "ebjdat_probe_error": probe.get("error"),
        "compute_sanitizer": find_sanitizer(cuda_home),
    }


def versions_line(v: dict) -> str:
    gpu = v["gpu"]
    where = (
        "no CUDA GPU"
        if gpu is None
        else (
            f"{gpu['name']} (sm {gpu['capability']}, {gpu['memory_gib']} GiB, x{gpu['count']}"
            + (", simulated)" if gpu["simulated"] else ")")
        )
    )
    build = v["ebjdat_build"] or {}
    return (
        f"{where}; driver {v['driver']}; python {v['python']}, torch {v['torch']} (CUDA "
        f"{v['torch_cuda']}), triton {v['triton']}, nvcc {v['nvcc']}; ebjdat "
        f"{v['ebjdat']} build {build.get('kind')} {build.get('cuda_arch_list') or ''}"
        f"{'' if v['ebjdat_native_loaded'] else ' (_C not loaded)'}"
    ).replace("  ", " ")


def print_versions(v: dict) -> None:
    _banner("versions")
    for key in (
        "python",
        "python_executable",
        "platform",
        "cpu_count",
        "torch",
        "torch_cuda",
        "triton",
        "cuda_home",
        "nvcc",
        "driver",
        "gpu",
        "ebjdat",
        "ebjdat_build",
        "ebjdat_native_loaded",
        "ebjdat_cuda_kernels",
        "compute_sanitizer",
    ):
        print(f"    {key:<22} {v[key]}")
    if v["ebjdat_probe_error"]:
        print(f"    {'ebjdat probe':<22} {v['ebjdat_probe_error']}")


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Build, test, sanitize and benchmark ebjdat on this machine's GPU within a "
        "time budget, print what failed with enough detail to fix it, and write the results "
        "under bench/results/ (or --out-dir). Without a GPU, runs a quick CPU benchmark; with "
        "--rehearse, checks on a machine without a GPU that every GPU step gets as far as its "
        "first CUDA call. See the module docstring for the steps.",
    )
    build = parser.add_mutually_exclusive_group()
    build.add_argument(
        "--skip-build",
        action="store_true",
        help="use the installed extension as is (no pip install, no check)",
    )
    build.add_argument(
        "--rebuild",
        action="store_true",
        help="rebuild even when the installed extension is a fresh CUDA build for this GPU",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        metavar="S",
        help=f"seconds for the whole check (default: {DEFAULT_BUDGET_S:.0f}, "
        f"+{REHEARSE_BUILD_EXTRA_S:.0f} with --rehearse-build); each step gets "
        "what is left minus what later steps need, and is killed when over",
    )
    parser.add_argument(
        "--budget-from",
        choices=("auto", "now"),
        default="auto",
        help="auto (default): count the budget from the start of the enclosing "
        "one-shot command (`sh -c 'pip install ... && python gpu_check.py'`), "
        "so the time the install took counts; now: from this script's start",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="benchmark tiny shapes only (a smoke test; no bandwidth verdict)",
    )
    parser.add_argument(
        "--cpu-only",
        action="store_true",
        help="run only the CPU-safe part even when a GPU is present",
    )
    parser.add_argument(
        "--write-cpu",
        action="store_true",
        help="without a GPU, still write bench/results/cpu-<date>.json",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where results go (default: bench/results; a rehearsal writes none "
        "without it); given explicitly, full step logs go there too, in "
        "<results name>.logs/ (on a lent machine whose files come back from "
        "one folder, that folder)",
    )
    parser.add_argument(
        "--skip",
        nargs="+",
        default=[],
        choices=GPU_PARTS,
        metavar="PART",
        help="GPU parts to leave out, to split the check over shorter runs: "
        "tests (CUDA tests and sanitizer), ops (op benchmarks), step, scaling "
        "(with --skip-build on the later runs)",
    )
    parser.add_argument(
        "--dtype",
        nargs="+",
        default=["float32"],
        choices=["float32", "bfloat16", "float16"],
        help="dtypes for the GPU op benchmarks (default: float32)",
    )
    parser.add_argument(
        "--arch",
        help="TORCH_CUDA_ARCH_LIST to build for (default: this GPU's capability, e.g. 9.0)",
    )
    parser.add_argument(
        "--step-models",
        nargs="+",
        default=list(STEP_MODELS),
        metavar="ARCH",
        help="models for the step benchmark (default: %(default)s)",
    )
    parser.add_argument(
        "--step-batch",
        type=int,
        default=STEP_BATCH,
        help="batch for the step benchmark (default: %(default)s)",
    )
    parser.add_argument(
        "--step-repeats",
        type=int,
        default=STEP_REPEATS,
        help="timed iterations per row (default: %(default)s)",
    )
    parser.add_argument(
        "--step-variants",
        nargs="+",
        default=list(STEP_VARIANTS),
        metavar="V",
        help="ebjdat variants beside the official reference (default: "
        "%(default)s; see ebjdat-bench step --help)",
    )
    parser.add_argument(
        "--sanitizer-backends",
        nargs="+",
        default=list(DEFAULT_SANITIZER_BACKENDS),
        choices=SANITIZER_BACKENDS,
        metavar="B",
        help="backends to run under compute-sanitizer, one run each: cuda (the ebjdat._C "
        "kernels, the default) and/or triton",
    )
    parser.add_argument(
        "--rehearse",
        action="store_true",
        help="without a GPU: plan as for an H200 and check that every GPU step "
        "runs up to its first CUDA call with the GPU machine's packages "
        "(torchattacks, torch_fidelity, pyautoattack, tomli_w blocked)",
    )
    parser.add_argument(
        "--rehearse-build",
        action="store_true",
        help="--rehearse, plus the real CUDA build for sm 9.0 in a copy of the "
        "tree, timed (minutes)",
    )
    args = parser.parse_args(argv)
    args.rehearse = args.rehearse or args.rehearse_build
    if args.rehearse and torch.cuda.is_available():
        parser.error("--rehearse is for machines without a GPU; here, run the check itself")
    if args.budget_s is None:
        args.budget_s = DEFAULT_BUDGET_S + (REHEARSE_BUILD_EXTRA_S if args.rehearse_build else 0)
    if args.budget_s <= 0 or args.step_batch < 2 or args.step_repeats < 1:
        parser.error("--budget-s must be > 0, --step-batch >= 2, --step-repeats >= 1")
    return args


def results_name(gpu: Gpu | None, kind: str, today: str, skip: Sequence[str]) -> str:
    """<gpu-slug>-<date>.json; a partial run (--skip) says which parts it holds, so that split
    runs write separate files."""
    possible = [p for p in GPU_PARTS if p != "scaling" or (gpu is not None and gpu.count > 1)]
    parts = [p for p in possible if p not in skip]
    on_gpu = kind in ("gpu", "rehearsal") and gpu is not None
    suffix = "" if not on_gpu or len(parts) == len(possible) else "-" + "-".join(parts)
    return (slug(gpu.name) if on_gpu else "cpu") + f"-{today}{suffix}.json"


def _status(info: dict | None) -> str:
    if info is None:
        return "-"
    if info.get("skip_reason"):
        return "skipped"
    if info.get("timed_out") or any(r.get("timed_out") for r in info.get("runs", [])):
        return "TIMED OUT"
    return "ok" if info.get("ok") else "FAILED"


def _note(name: str, info: dict, rehearse: bool) -> str:
    if rehearse and info.get("rehearsal"):
        return info["rehearsal"]
    if info.get("skip_reason"):
        return info["skip_reason"]
    if info.get("error"):
        return info["error"]
    if name == "build":
        if info.get("reused"):
            return f"installed build reused: {info.get('build_info')}"
        env = info.get("env") or {}
        return (
            f"rebuilt (TORCH_CUDA_ARCH_LIST={env.get('TORCH_CUDA_ARCH_LIST')}, MAX_JOBS="
            f"{env.get('MAX_JOBS')}): {info.get('build_info')}"
        )
    if name in ("cuda-tests",) and "tests" in info:
        return (
            f"{info['passed']} passed, {info['failed']} failed, {info['error']} errors, "
            f"{info['skipped']} skipped"
        )
    if name == "cuda-sanitizer" and info.get("runs"):
        return "; ".join(
            f"{r['backend']}: {r.get('memory_errors')} memory errors, {r.get('api_errors')} failed "
            "API calls"
            for r in info["runs"]
        )
    if name == "cuda-step" and info.get("rows"):
        return step_note(info["rows"])
    if name == "cuda-scaling" and info.get("rows"):
        return "; ".join(
            f"{r['model']}: {r['processes']} processes at {r['efficiency']:.0%} efficiency"
            for r in info["rows"]
        )
    if name == "cuda-ops" and info.get("goal"):
        met = info["goal"]["met"]
        return {
            True: "bandwidth goal met",
            False: "bandwidth goal NOT met",
            None: "nothing judged",
        }[met]
    if not info.get("ok") and info.get("log_tail"):
        return final_error(info["log_tail"])[1] or info["log_tail"][-1]
    return ""


def main(argv: Sequence[str] | None = None) -> int:  # noqa: C901, PLR0912, PLR0915
    args = parse_args(argv)
    rehearse = args.rehearse
    gpu = REHEARSAL_GPU if rehearse else detect_gpu()
    steps = plan(
        gpu,
        skip_build=args.skip_build,
        cpu_only=args.cpu_only,
        write_cpu=args.write_cpu,
        skip=args.skip,
        rehearse=rehearse,
        write=(args.out_dir is not None) if rehearse else None,
    )
    todo = [s.name for s in steps if s.run]
    if rehearse and "scaling" not in args.skip and "cuda-scaling" not in todo:
        todo.append("cuda-scaling")  # its command is checked even though one GPU skips it
    order = [n for n in ORDER if n in todo]
    used, since = (0.0, "now") if args.budget_from == "now" else command_age()
    if used >= args.budget_s:  # not the one-shot command it looked like
        used, since = 0.0, "now"
    budget = Budget(args.budget_s, used_s=used)
    kind = (
        "rehearsal"
        if rehearse
        else "gpu"
        if "build" in todo or any(n.startswith("cuda") for n in todo)
        else "cpu"
    )
    today = dt.date.today().isoformat()
    out_dir = args.out_dir or RESULTS
    path = out_dir / results_name(gpu, kind, today, args.skip)
    logs = path.with_suffix(".logs") if args.out_dir is not None else None

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ebjdat-gpu-check-") as tmp:
        workdir = Path(tmp)
        env = dict(os.environ, PYTHONUNBUFFERED="1", TRITON_INTERPRET="0")
        if rehearse:
            env = blocked_env(env, write_import_blocker(workdir / "blocker"))
        cuda_home = find_cuda_home()
        probe = probe_installed(env)
        versions = collect_versions(gpu, cuda_home, probe, rehearse)
        title = "rehearsal of the GPU check" if rehearse else "ebjdat GPU check"
        print(f"{title}: {versions_line(versions)}")
        print_versions(versions)
        _banner("plan")
        print(
            f"    budget {args.budget_s:.0f} s, counted from {since}"
            + (f" ({used:.0f} s ago)" if used else "")
            + f": {budget.left():.0f} s left"
        )
        for step in steps:
            print(f"    {'run ' if step.run else 'skip'}  {step.name:<16} {step.why}")
        if rehearse:
            print(
                f"    rehearsal: {gpu.name} simulated; imports of {', '.join(BLOCKED_IMPORTS)} "
                "blocked in every subprocess"
            )
        results: dict = {
            "kind": kind,
            "date": today,
            "gpu": None
            if gpu is None
            else {
                "name": gpu.name,
                "capability": gpu.arch,
                "count": gpu.count,
                "memory_gib": gpu.memory_gib,
            },
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "versions": versions,
            "budget": {
                "total_s": args.budget_s,
                "counted_from": since,
                "used_before_s": round(used, 1),
            },
            "steps": [asdict(step) for step in steps],
            "timeline": [],
            "complete": False,
        }

        def save() -> None:
            """Written after every step, so a run cut off by a time limit keeps what it
            finished."""
            if "write-results" in todo:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(results, indent=2) + "\n")

        save()
        ctx = Context(args, gpu, workdir, rehearse, env, cuda_home, probe, logs)
        ok = True
        built = True
        for i, name in enumerate(order):
            entry: dict = {"step": name}
            if name.startswith("cuda") and not built:
                info = {"ok": False, "skip_reason": "the build failed"}
            else:
                timeout, why = budget.timeout(name, order[i + 1 :])
                if timeout is None:
                    info = {"ok": TIMING[name].optional, "skip_reason": why}
                else:
                    entry["timeout_s"] = round(timeout)
                    _banner(f"{name} (up to {timeout:.0f} s; {budget.left():.0f} s left)")
                    start = time.monotonic()
                    try:
                        info = STEPS[name](ctx, timeout)
                    except Exception as err:  # noqa: BLE001 - a bug here must not end the check
                        trace = traceback.format_exc().splitlines()
                        print("\n".join("    " + line for line in trace))
                        info = {"ok": False, "traceback": trace[-TAIL_LINES:],
                                "error": f"gpu_check.py failed in this step: "
                                f"{type(err).__name__}: {err}"}  # fmt: skip
                    entry["seconds"] = round(time.monotonic() - start, 1)
            if info.get("skip_reason"):
                print(f"\n== {name}: skipped, {info['skip_reason']}")
            if name == "build" and not rehearse:
                built = bool(info.get("ok"))
            if name == "cpu-bench" and "bench" in info:
                results["bench"], results["step"] = info["bench"], info["step"]
            else:
                results[RESULT_KEY[name]] = info
                if name == "cuda-ops" and "goal" in info:
                    results["goal"] = info["goal"]
            entry.update(status=_status(info), note=_note(name, info, rehearse))
            results["timeline"].append(entry)
            ok = ok and bool(info.get("ok"))
            save()

    skipped = [s for s in steps if not s.run and s.name.startswith(("build", "cuda"))]
    _banner("rehearsal summary" if rehearse else "summary")
    print(f"    {versions_line(versions)}")
    _table(
        ["step", "status", "seconds", "timeout", "note"],
        [
            [
                e["step"],
                e["status"],
                _num(e.get("seconds"), "{:.1f}"),
                e.get("timeout_s", ""),
                e["note"][:200],
            ]
            for e in results["timeline"]
        ],
    )
    if skipped and not rehearse:
        print("    GPU parts skipped: " + "; ".join(f"{s.name} ({s.why})" for s in skipped))
    failed_tests = [
        c
        for c in results.get("tests", {}).get("cases", [])
        if c["outcome"] in ("failed", "error") and not rehearse
    ]
    for case in failed_tests:
        print(f"    {case['outcome']}: {case['name']}: {(case.get('message') or [''])[0][:160]}")
    total = time.monotonic() - started
    results.update(ok=ok, complete=True, seconds=round(total, 1))
    save()
    if "write-results" in todo:
        print(f"    wrote {path}" + (f" (logs in {logs})" if logs else ""))
    label = "rehearsal" if rehearse else "GPU check"
    print(f"{label} {'passed' if ok else 'FAILED'} in {total:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
