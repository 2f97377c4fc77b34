#!/usr/bin/env python
"""The GPU check: one command, run on a machine with a CUDA GPU, that

  1. rebuilds ebjdat._C for that GPU (pip install --no-build-isolation --no-deps -e . with
     EBJDAT_BUILD_CUDA=1, CUDA_HOME found, TORCH_CUDA_ARCH_LIST from the GPU's capability);
  2. runs the CUDA tests (pytest tests -m cuda);
  3. runs the op benchmarks on the GPU (ebjdat-bench ops, including 2**24-element cases) with
     the float32 device-to-device copy bandwidth as the reference, and checks each fused op
     against the goal: >= 85% of copy bandwidth at >= 2**24 elements;
  4. runs the training-iteration benchmark (ebjdat-bench step: official reference vs ebjdat,
     WRN-10-2 and WRN-28-10, every GPU variant: bf16, CUDA graphs) and, with more than one GPU,
     its data-parallel scaling over all of them (ebjdat-bench step --nproc N, NCCL);
  5. writes everything to <out-dir>/<gpu-name-slug>-<YYYY-MM-DD>.json, to be committed. The file
     is rewritten after every step ("complete": false until the end), so a run cut off by a
     time limit keeps what it finished.

Each step runs in a subprocess, so the tests and benchmarks load the freshly built extension.
`--skip tests ops step scaling` leaves parts out so that the check can be split over shorter runs
(the later ones with --skip-build); a partial run names its file after the parts it holds.
Without a GPU (or with --cpu-only) it runs the CPU-safe part, a quick CPU op and step benchmark,
says which GPU steps were skipped, and writes <out-dir>/cpu-<date>.json only with --write-cpu.

    python scripts/gpu_check.py [--skip-build] [--skip PART ...] [--quick] [--cpu-only]
                                [--write-cpu] [--out-dir D]

Exit status: 0 when every step that ran succeeded (missing the bandwidth goal is reported, not
a failure), 1 when a step failed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
GOAL_FRACTION = 0.85
GOAL_NUMEL = 1 << 24
TAIL_LINES = 60
GPU_PARTS = ("tests", "ops", "step", "scaling")


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int]
    count: int = 1  # visible GPUs (the scaling step needs two or more)

    @property
    def arch(self) -> str:
        """TORCH_CUDA_ARCH_LIST for exactly this GPU: the fastest build, nothing to spare."""
        return f"{self.capability[0]}.{self.capability[1]}"


@dataclass(frozen=True)
class Step:
    name: str
    run: bool
    why: str


def detect_gpu() -> Gpu | None:
    if not torch.cuda.is_available():
        return None
    return Gpu(torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0)),
               torch.cuda.device_count())


def plan(
    gpu: Gpu | None,
    *,
    skip_build: bool = False,
    cpu_only: bool = False,
    write_cpu: bool = False,
    skip: Sequence[str] = (),
) -> list[Step]:
    """What this invocation will do, and why each skipped step is skipped (printed first).
    `skip` names GPU parts to leave out ("tests", "ops", "step", "scaling"), so that the check
    can be split over several shorter runs (a device tool's per-command limit, say)."""
    on_gpu = gpu is not None and not cpu_only
    no_gpu = "--cpu-only" if gpu is not None else "no CUDA GPU visible to torch"

    def gpu_part(name: str, what: str) -> Step:
        run = on_gpu and name.removeprefix("cuda-") not in skip
        why = what if run else (f"--skip {name.removeprefix('cuda-')}" if on_gpu else no_gpu)
        return Step(name, run, why)

    return [
        Step("build", on_gpu and not skip_build,
             "rebuild ebjdat._C for this GPU" if on_gpu and not skip_build
             else "--skip-build" if on_gpu else no_gpu),
        gpu_part("cuda-tests", "pytest tests -m cuda"),
        gpu_part("cuda-ops", "op benchmarks and copy bandwidth on cuda"),
        gpu_part("cuda-step", "training-iteration benchmark on cuda (every GPU variant)"),
        gpu_part("cuda-scaling", f"data-parallel scaling over {gpu.count} GPUs (NCCL)")
        if gpu is not None and gpu.count > 1
        else Step("cuda-scaling", False, "fewer than 2 GPUs" if gpu is not None else no_gpu),
        Step("cpu-bench", not on_gpu,
             "quick CPU op benchmark (smoke test)" if not on_gpu else "a GPU is present"),
        Step("write-results", on_gpu or write_cpu,
             "results JSON under --out-dir, rewritten after every step" if on_gpu or write_cpu
             else "CPU results are written only with --write-cpu"),
    ]


# -- helpers ------------------------------------------------------------------------------------


def slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (stable file names)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def _toolkit_ok(root: str | os.PathLike | None) -> bool:
    return bool(root) and (Path(root) / "bin" / "nvcc").is_file() and (
        Path(root) / "include" / "cuda_runtime.h"
    ).is_file()


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


def run_logged(cmd: Sequence[str], *, env: dict[str, str] | None = None, echo: bool = True,
               log: Path | None = None) -> tuple[int, list[str], float]:
    """Runs `cmd` from the repository root, echoing its output live (when `echo`), keeping the
    whole log in `log` and the last lines for the results file. Returns (rc, tail, seconds)."""
    start = time.perf_counter()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with (
        open(log, "w") if log is not None else contextlib.nullcontext() as sink,
        subprocess.Popen(
            list(cmd), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1,
        ) as proc,
    ):
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            if sink is not None:
                sink.write(line)
            if echo:
                print("    " + line, end="", flush=True)
        rc = proc.wait()
    return rc, list(tail), time.perf_counter() - start


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


# -- steps --------------------------------------------------------------------------------------


def build(gpu: Gpu, arch: str | None, workdir: Path) -> dict:
    """pip install -e . for this GPU; --no-deps so pip never touches the installed torch."""
    cuda_home = find_cuda_home()
    if cuda_home is None:
        return {"ok": False, "error": "no CUDA toolkit found (set CUDA_HOME to a root with "
                "bin/nvcc and include/cuda_runtime.h)"}
    env = dict(os.environ, EBJDAT_BUILD_CUDA="1", CUDA_HOME=cuda_home,
               TORCH_CUDA_ARCH_LIST=arch or gpu.arch)
    cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-v",
           "-e", str(ROOT)]
    print(f"    CUDA_HOME={cuda_home} TORCH_CUDA_ARCH_LIST={env['TORCH_CUDA_ARCH_LIST']} "
          f"(full log: {workdir / 'build.log'})", flush=True)
    rc, tail, seconds = run_logged(cmd, env=env, echo=False, log=workdir / "build.log")
    nvcc = subprocess.run([str(Path(cuda_home) / "bin" / "nvcc"), "--version"],
                          capture_output=True, text=True, check=False).stdout.strip()
    info = {
        "ok": rc == 0, "rc": rc, "seconds": round(seconds, 1), "command": " ".join(cmd),
        "env": {k: env[k] for k in ("EBJDAT_BUILD_CUDA", "CUDA_HOME", "TORCH_CUDA_ARCH_LIST")},
        "nvcc": nvcc.splitlines()[-1] if nvcc else None,
    }
    if rc != 0:
        info["log_tail"] = tail
        print("\n".join("    " + line for line in tail[-25:]))
        return info
    # What the fresh process sees: the build kind and which ops have CUDA kernels.
    probe = (
        "import json, ebjdat; from ebjdat import _native; from ebjdat.ops import _library as L;"
        "print(json.dumps({'build_info': _native.build_info(), 'loaded': _native.load()[1] == '',"
        "'cuda_kernels': {op: L.has_native_kernel(op, 'CUDA') for op in L.ops()}}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         check=False)
    try:
        info.update(json.loads(out.stdout.strip().splitlines()[-1]))
    except (IndexError, json.JSONDecodeError):
        info.update(ok=False, error="the rebuilt package does not import: " + out.stderr[-2000:])
    if info.get("build_info", {}).get("kind") != "cuda":
        info.update(ok=False, error=info.get("error", "the build did not produce a CUDA extension"))
    return info


def cuda_tests(workdir: Path) -> dict:
    xml = workdir / "cuda-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "tests", "-m", "cuda", "-q", "-p", "no:cacheprovider",
           f"--junitxml={xml}"]
    rc, tail, seconds = run_logged(cmd)
    info: dict = {"rc": rc, "seconds": round(seconds, 1), "command": " ".join(cmd[2:])}
    if xml.exists():
        suites = ET.parse(xml).getroot()
        suite = suites if suites.tag == "testsuite" else suites.find("testsuite")
        if suite is not None:
            info.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors",
                                                            "skipped")})
    # 5: nothing selected, i.e. no test carries the cuda marker; worth a warning, not a failure.
    info["ok"] = rc in (0, 5)
    if rc == 5:
        info["warning"] = "no tests are marked cuda"
    if rc not in (0, 5):
        info["log_tail"] = tail
    return info


def bench_ops(device: str, workdir: Path, *, quick: bool, dtypes: Sequence[str],
              sizes: Sequence[str]) -> dict:
    """ebjdat-bench ops in a fresh process (it must load the extension just built)."""
    out = workdir / f"ops-{device}.json"
    cmd = [sys.executable, "-m", "ebjdat.cli.bench", "ops", "--device", device, "--json", str(out),
           "--dtype", *dtypes]
    cmd += ["--quick"] if quick else ["--sizes", *sizes]
    return _run_bench(cmd, out)


def _run_bench(cmd: list[str], out: Path) -> dict:
    """Run an `ebjdat-bench ... --json out` command; its JSON, or the log tail on failure."""
    rc, tail, seconds = run_logged(cmd)
    info: dict = {"ok": rc == 0 and out.exists(), "rc": rc, "seconds": round(seconds, 1),
                  "command": " ".join(cmd[2:])}
    if info["ok"]:
        info.update(json.loads(out.read_text()))
    else:
        info["log_tail"] = tail
    return info


def bench_step(device: str, workdir: Path, *, quick: bool) -> dict:
    """ebjdat-bench step (official reference vs ebjdat, one training iteration), fresh process.
    On a GPU: WRN-28-10 at batch 64, the issue's target; --quick: the tiny smoke case."""
    out = workdir / f"step-{device}.json"
    cmd = [sys.executable, "-m", "ebjdat.cli.bench", "step", "--device", device, "--json",
           str(out)]
    cmd += ["--quick"] if quick else ["--models", "wrn-10-2", "wrn-28-10", "--repeats", "3"]
    if device == "cuda":  # every GPU switch, each its own row in the same run
        cmd += ["--variants", "default", "bf16", "cuda-graphs", "bf16-cuda-graphs"]
    return _run_bench(cmd, out)


def bench_scaling(nproc: int, workdir: Path, *, quick: bool) -> dict:
    """ebjdat-bench step --nproc N: WRN-28-10 at batch 64 per GPU in 1 and in N processes."""
    out = workdir / "scaling-cuda.json"
    cmd = [sys.executable, "-m", "ebjdat.cli.bench", "step", "--device", "cuda", "--nproc",
           str(nproc), "--json", str(out)]
    cmd += ["--quick"] if quick else ["--models", "wrn-28-10", "--batch", "64", "--repeats", "3"]
    return _run_bench(cmd, out)


def bandwidth_goal(bench: dict) -> dict:
    """Each fused op's GB/s as a fraction of copy bandwidth, judged at >= GOAL_NUMEL elements."""
    copy = bench.get("machine", {}).get("copy")
    rows = [r for r in bench.get("rows", []) if r["impl"] == "fused"]
    cases = []
    for r in rows:
        frac = r["gbps"] / copy["gbps"] if copy else None
        judged = r["numel"] >= GOAL_NUMEL and frac is not None
        cases.append({
            "op": r["op"], "shape": r["shape"], "dtype": r["dtype"], "numel": r["numel"],
            "backend": r.get("backend"), "gbps": r["gbps"], "frac_of_copy": frac,
            "judged": judged, "meets_goal": (frac >= GOAL_FRACTION) if judged else None,
        })
    judged = [c for c in cases if c["judged"]]
    return {
        "fraction": GOAL_FRACTION, "min_numel": GOAL_NUMEL, "copy": copy, "cases": cases,
        "met": all(c["meets_goal"] for c in judged) if judged else None,
    }


def print_goal(goal: dict) -> None:
    copy = goal["copy"]
    if not copy:
        print("    no copy bandwidth measured")
        return
    print(f"    copy bandwidth: {copy['gbps']:.1f} GB/s (float32 x{copy['numel']})")
    for c in goal["cases"]:
        if not c["judged"]:
            continue
        verdict = "ok" if c["meets_goal"] else "BELOW GOAL"
        shape = "x".join(map(str, c["shape"]))
        print(f"    {c['op']:<14} {shape:<15} {c['dtype']:<9} {c['backend'] or '':<7} "
              f"{c['gbps']:8.1f} GB/s  {c['frac_of_copy']:6.1%}  {verdict}")
    if goal["met"] is None:
        print(f"    (no case reaches {goal['min_numel']} elements; nothing judged)")


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Build, test and benchmark ebjdat on this machine's GPU, and write the "
        "results under bench/results/. Without a GPU, runs a quick CPU benchmark only.",
    )
    parser.add_argument("--skip-build", action="store_true",
                        help="use the installed extension as is (no pip install)")
    parser.add_argument("--quick", action="store_true",
                        help="benchmark tiny shapes only (a smoke test; no bandwidth verdict)")
    parser.add_argument("--cpu-only", action="store_true",
                        help="run only the CPU-safe part even when a GPU is present")
    parser.add_argument("--write-cpu", action="store_true",
                        help="without a GPU, still write bench/results/cpu-<date>.json")
    parser.add_argument("--out-dir", type=Path, default=RESULTS,
                        help="where results go (default: bench/results; on a lent machine whose "
                        "files come back from one folder, that folder)")
    parser.add_argument("--skip", nargs="+", default=[], choices=GPU_PARTS, metavar="PART",
                        help="GPU parts to leave out, to split the check over shorter runs: "
                        + ", ".join(GPU_PARTS) + " (with --skip-build on the later runs)")
    parser.add_argument("--dtype", nargs="+", default=["float32"],
                        choices=["float32", "bfloat16", "float16"],
                        help="dtypes for the GPU op benchmarks (default: float32)")
    parser.add_argument("--arch", help="TORCH_CUDA_ARCH_LIST to build for (default: this GPU's "
                        "capability, e.g. 9.0)")
    return parser.parse_args(argv)


def results_name(gpu: Gpu | None, kind: str, today: str, skip: Sequence[str]) -> str:
    """<gpu-slug>-<date>.json; a partial run (--skip) says which parts it holds, so that split
    runs write separate files."""
    possible = [p for p in GPU_PARTS if p != "scaling" or (gpu is not None and gpu.count > 1)]
    parts = [p for p in possible if p not in skip]
    suffix = "" if kind != "gpu" or len(parts) == len(possible) else "-" + "-".join(parts)
    return (slug(gpu.name) if kind == "gpu" and gpu else "cpu") + f"-{today}{suffix}.json"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    gpu = detect_gpu()
    steps = plan(gpu, skip_build=args.skip_build, cpu_only=args.cpu_only,
                 write_cpu=args.write_cpu, skip=args.skip)
    print(f"ebjdat GPU check: {gpu.name + f' (sm {gpu.arch})' if gpu else 'no CUDA GPU'}, "
          f"torch {torch.__version__}")
    for step in steps:
        print(f"  {'run ' if step.run else 'skip'}  {step.name:<14} {step.why}")
    todo = {step.name for step in steps if step.run}
    on_gpu = bool(todo & {"build", "cuda-tests", "cuda-ops", "cuda-step", "cuda-scaling"})
    today = dt.date.today().isoformat()
    results: dict = {
        "kind": "gpu" if on_gpu else "cpu",
        "date": today,
        "gpu": None if gpu is None else {"name": gpu.name, "capability": gpu.arch},
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "steps": [asdict(step) for step in steps],
        "complete": False,
    }
    path = args.out_dir / results_name(gpu, results["kind"], today, args.skip)

    def save() -> None:
        """Written after every step, so a run cut off by a time limit keeps what it finished."""
        if "write-results" in todo:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=2) + "\n")

    ok = True
    save()
    with tempfile.TemporaryDirectory(prefix="ebjdat-gpu-check-") as tmp:
        workdir = Path(tmp)
        if "build" in todo:
            _banner("build")
            results["build"] = build(gpu, args.arch, workdir)
            ok = results["build"]["ok"]
            print(f"    build {'ok' if ok else 'FAILED'}: {results['build'].get('error', '')}")
            save()
        built = ok
        if built and "cuda-tests" in todo:
            _banner("CUDA tests: pytest tests -m cuda")
            results["tests"] = cuda_tests(workdir)
            ok = results["tests"]["ok"]
            save()
        if not built and todo & {"cuda-ops", "cuda-step", "cuda-scaling"}:
            print("\nbenchmarks skipped: the build failed")
        if built and "cuda-ops" in todo:
            _banner("op benchmarks on cuda")
            results["bench"] = bench_ops("cuda", workdir, quick=args.quick, dtypes=args.dtype,
                                         sizes=("training", "buffer", "large"))
            ok = ok and results["bench"]["ok"]
            if results["bench"]["ok"]:
                _banner(f"bandwidth goal: fused >= {GOAL_FRACTION:.0%} of copy at >= "
                        f"{GOAL_NUMEL} elements")
                results["goal"] = bandwidth_goal(results["bench"])
                print_goal(results["goal"])
            save()
        if built and "cuda-step" in todo:
            _banner("training-iteration benchmark on cuda")
            results["step"] = bench_step("cuda", workdir, quick=args.quick)
            ok = ok and results["step"]["ok"]
            save()
        if built and "cuda-scaling" in todo:
            _banner(f"data-parallel scaling over {gpu.count} GPUs")
            results["scaling"] = bench_scaling(gpu.count, workdir, quick=args.quick)
            ok = ok and results["scaling"]["ok"]
            save()
        if "cpu-bench" in todo:
            _banner("quick CPU op benchmark")
            results["bench"] = bench_ops("cpu", workdir, quick=True, dtypes=["float32"], sizes=())
            ok = ok and results["bench"]["ok"]
            _banner("quick CPU training-iteration benchmark")
            results["step"] = bench_step("cpu", workdir, quick=True)
            ok = ok and results["step"]["ok"]
    skipped = [s for s in steps if not s.run and s.name.startswith(("build", "cuda"))]
    if skipped:
        print("\nGPU parts skipped: " + "; ".join(f"{s.name} ({s.why})" for s in skipped))
    results["ok"] = ok
    results["complete"] = True
    save()
    if "write-results" in todo:
        print(f"wrote {path}")
    print("GPU check " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
