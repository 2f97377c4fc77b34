"""scripts/gpu_check.py on a machine without a GPU: its plan, its parsers (junit XML,
compute-sanitizer output), the time budget and the subprocess timeout, the import blocker that
simulates the GPU machine's packages, the CUDA-availability classifier, and a real rehearsal
(`--rehearse`, limited to some steps to stay fast). Nothing here builds."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GPU_CHECK = ROOT / "scripts" / "gpu_check.py"
# scripts/ is not a package; the check's modules are the package scripts/gpucheck/ in it.
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))

from gpucheck import (  # noqa: E402
    bench_steps,
    build,
    cli,
    config,
    cuda_tests,
    main,
    packages,
    parsing,
    plan,
    runner,
    steps,
    timing,
)


def _runs(steps: list) -> set[str]:
    return {s.name for s in steps if s.run}


# -- plan and names -------------------------------------------------------------------------


def test_plan() -> None:
    h100 = config.Gpu("NVIDIA H100 80GB HBM3", (9, 0))
    assert h100.arch == "9.0" and plan.slug(h100.name) == "nvidia-h100-80gb-hbm3"
    gpu_steps = {"cuda-tests", "cuda-sanitizer", "cuda-ops", "cuda-step", "cuda-ops-compile"}
    assert _runs(plan.plan(h100)) == {"build", *gpu_steps, "write-results"}
    assert _runs(plan.plan(h100, skip_build=True)) == {*gpu_steps, "write-results"}
    assert _runs(plan.plan(None)) == {"cpu-bench"}
    assert _runs(plan.plan(h100, cpu_only=True, write_cpu=True)) == {"cpu-bench", "write-results"}
    # Split over shorter runs: "tests" holds the CUDA tests and the sanitizer, "ops" both op
    # benchmark steps.
    split = plan.plan(h100, skip_build=True, skip=["tests", "ops"])
    assert _runs(split) == {"cuda-step", "write-results"}
    why = {s.name: s.why for s in split}
    assert why["cuda-ops"] == why["cuda-ops-compile"] == "--skip ops"
    assert why["cuda-sanitizer"] == "--skip tests"
    eight = config.Gpu("NVIDIA H100 80GB HBM3", (9, 0), count=8)
    assert "cuda-scaling" in _runs(plan.plan(eight))
    assert {s.name: s.why for s in plan.plan(h100)}["cuda-scaling"] == "fewer than 2 GPUs"
    # A rehearsal plans as on the GPU machine (whatever --cpu-only says) and writes results
    # only when asked.
    rehearsal = plan.plan(config.REHEARSAL_GPU, cpu_only=True, rehearse=True, write=False)
    assert _runs(rehearsal) == {"build", *gpu_steps}
    assert config.REHEARSAL_GPU.arch == "9.0" and config.REHEARSAL_GPU.count == 1


def test_results_names_are_stable() -> None:
    h100 = config.Gpu("NVIDIA H100 80GB HBM3", (9, 0))
    eight = config.Gpu("NVIDIA H100 80GB HBM3", (9, 0), count=8)
    day = "2026-11-25"
    assert plan.results_name(h100, "gpu", day, []) == "nvidia-h100-80gb-hbm3-2026-11-25.json"
    assert plan.results_name(h100, "gpu", day, ["tests", "ops"]) == (
        "nvidia-h100-80gb-hbm3-2026-11-25-step.json"
    )
    assert plan.results_name(eight, "gpu", day, ["scaling"]) == (
        "nvidia-h100-80gb-hbm3-2026-11-25-tests-ops-step.json"
    )
    assert plan.results_name(None, "cpu", day, []) == "cpu-2026-11-25.json"
    assert plan.results_name(config.REHEARSAL_GPU, "rehearsal", day, []) == (
        "rehearsal-h200-2026-11-25.json"
    )


def test_goal_verdict() -> None:
    copy = {"gbps": 100.0, "numel": 1 << 24}
    rows = [
        {"op": "a", "shape": [1 << 24], "dtype": "float32", "impl": "fused", "numel": 1 << 24,
         "gbps": 90.0},
        {"op": "b", "shape": [64], "dtype": "float32", "impl": "fused", "numel": 64, "gbps": 1.0},
        {"op": "a", "shape": [1 << 24], "dtype": "float32", "impl": "eager", "numel": 1 << 24,
         "gbps": 10.0},
    ]  # fmt: skip
    goal = bench_steps.bandwidth_goal({"machine": {"copy": copy}, "rows": rows})
    assert goal["met"] is True
    assert [c["judged"] for c in goal["cases"]] == [True, False]
    assert goal["cases"][0]["frac_of_copy"] == pytest.approx(0.9)
    rows[0]["gbps"] = 80.0
    assert bench_steps.bandwidth_goal({"machine": {"copy": copy}, "rows": rows})["met"] is False


# -- junit XML ------------------------------------------------------------------------------

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites name="pytest tests"><testsuite name="pytest" errors="1" failures="1" skipped="3"
tests="6" time="1.5">
<testcase classname="tests.test_a" name="test_ok[cuda]" time="0.25" />
<testcase classname="tests.test_a.TestK" name="test_fail" time="0.5"><failure
message="AssertionError: Tensor-likes are not close!&#10;Mismatched elements: 3 / 10">def t():
&gt;       torch.testing.assert_close(a, b)
E       AssertionError: Tensor-likes are not close!
E       Mismatched elements: 3 / 10
E       Greatest absolute difference: 0.5
E       Greatest relative difference: 1.0
E       line five
E       line six

tests/test_a.py:12: AssertionError</failure></testcase>
<testcase classname="tests.test_a" name="test_err" time="0.01"><error
message="failed on setup with &quot;RuntimeError: CUDA error: out of memory&quot;">@pytest.fixture
E   RuntimeError: CUDA error: out of memory

tests/test_a.py:4: RuntimeError</error></testcase>
<testcase classname="tests.test_a" name="test_skip" time="0.000"><skipped type="pytest.skip"
message="needs torchattacks">/x/tests/test_a.py:20: needs torchattacks</skipped></testcase>
<testcase classname="tests.test_a" name="test_xf" time="0.001"><skipped type="pytest.xfail"
message="known" /></testcase>
<testcase classname="" name="tests.test_b" time="0.000"><skipped message="collection skipped"
type="pytest.skip">
('/x/tests/test_b.py', 35, "Skipped: could not import 'tomli_w': No module named 'tomli_w'")
</skipped></testcase>
</testsuite></testsuites>
"""


def test_junit_becomes_a_per_test_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tests").mkdir()
    for name in ("test_a.py", "test_b.py"):
        (tmp_path / "tests" / name).write_text("")
    xml = tmp_path / "j.xml"
    xml.write_text(JUNIT)
    parsed = parsing.parse_junit(xml, root=tmp_path)
    assert (parsed["tests"], parsed["passed"], parsed["failed"], parsed["error"],
            parsed["skipped"]) == (6, 1, 1, 1, 3)  # fmt: skip
    ok, fail, err, skip, xfail, module = parsed["cases"]
    assert ok == {"name": "tests/test_a.py::test_ok[cuda]", "outcome": "passed", "seconds": 0.25}
    assert fail["name"] == "tests/test_a.py::TestK::test_fail" and fail["outcome"] == "failed"
    assert fail["message"] == [
        "AssertionError: Tensor-likes are not close!",
        "Mismatched elements: 3 / 10",
        "Greatest absolute difference: 0.5",
        "Greatest relative difference: 1.0",
        "line five",
    ]  # the first five distinct lines, the message's first
    assert fail["where"] == "tests/test_a.py:12: AssertionError"
    assert err["outcome"] == "error" and err["message"][-1] == (
        "RuntimeError: CUDA error: out of memory"
    )
    assert skip["outcome"] == "skipped" and skip["reason"] == "needs torchattacks"
    assert xfail["reason"] == "xfail: known"
    assert module["name"] == "tests/test_b.py"
    assert module["reason"] == "could not import 'tomli_w': No module named 'tomli_w'"
    parsing.print_tests(parsed)
    printed = capsys.readouterr().out
    assert "FAILED" in printed and "ERROR" in printed
    assert "at tests/test_a.py:12: AssertionError" in printed
    assert "1 passed, 1 failed, 1 errors, 3 skipped" in printed


def test_verbose_output_stands_in_for_a_missing_junit() -> None:
    text = (
        "collecting ... collected 3 items\n"
        "tests/test_cuda.py::test_a[x] PASSED                [ 33%]\n"
        "tests/test_cuda.py::test_b FAILED                   [ 66%]\n"
        "tests/test_cuda.py::test_c SKIPPED (needs a GPU)    [100%]\n"
    )
    parsed = parsing.parse_verbose(text)
    assert [(c["name"], c["outcome"]) for c in parsed["cases"]] == [
        ("tests/test_cuda.py::test_a[x]", "passed"),
        ("tests/test_cuda.py::test_b", "failed"),
        ("tests/test_cuda.py::test_c", "skipped"),
    ]
    assert parsed["failed"] == 1


# -- sanitizer output -----------------------------------------------------------------------

CLEAN = """========= COMPUTE-SANITIZER
call sgld_step: ok
call pgd_step l2: ok
all 2 calls ok (device cuda, backend cuda, float32)
========= ERROR SUMMARY: 0 errors
"""
DIRTY = """========= COMPUTE-SANITIZER
call sgld_step: ok
========= Invalid __global__ read of size 4 bytes
=========     at pgd_step_kernel(float*, int)+0x1a0
=========     by thread (31,0,0) in block (12,0,0)
=========     Address 0x7f00 is out of bounds
=========
call pgd_step l2: NOT FINITE
========= ERROR SUMMARY: 2 errors
"""


def test_sanitizer_output() -> None:
    clean = parsing.parse_sanitizer(CLEAN)
    assert clean["errors"] == 0 and clean["all_calls_ok"] and clean["first_reports"] == []
    assert clean["calls"] == ["sgld_step", "pgd_step l2"]
    dirty = parsing.parse_sanitizer(DIRTY)
    assert dirty["errors"] == 2 and not dirty["all_calls_ok"]
    assert dirty["first_reports"][0] == "========= Invalid __global__ read of size 4 bytes"
    assert len(dirty["first_reports"]) == 4
    assert dirty["calls"] == ["sgld_step"] and dirty["not_finite"] == ["pgd_step l2"]
    assert dirty["memory_errors"] == 2 and dirty["api_errors"] == 0
    api = parsing.parse_sanitizer(
        "========= Program hit cudaErrorInvalidValue (error 1) due to invalid argument on CUDA "
        "API call to cudaGetDriverEntryPoint.\n=========\n========= ERROR SUMMARY: 1 error\n"
    )
    assert (api["errors"], api["api_errors"], api["memory_errors"]) == (1, 1, 0)
    assert parsing.parse_sanitizer("Segmentation fault\n")["errors"] is None  # never got there
    assert parsing.parse_sanitizer("========= ERROR SUMMARY: 1 error\n")["errors"] == 1


def test_sanitizer_is_found_in_the_toolkit_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert build.find_sanitizer(str(tmp_path)) is None
    tool = tmp_path / "compute-sanitizer" / "compute-sanitizer"  # the older layout
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert build.find_sanitizer(str(tmp_path)) == str(tool)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "compute-sanitizer").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "compute-sanitizer").chmod(0o755)
    assert build.find_sanitizer(str(tmp_path)) == str(tmp_path / "bin" / "compute-sanitizer")
    cmd = cuda_tests.sanitizer_command("/t/compute-sanitizer", "triton")
    assert cmd[:3] == ["/t/compute-sanitizer", "--tool", "memcheck"]
    assert cmd[-4:] == ["--device", "cuda", "--backend", "triton"]


# -- time -----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_budget_holds_time_for_later_steps() -> None:
    clock = Clock()
    later = ["cuda-tests", "cuda-sanitizer", "cuda-ops", "cuda-step", "cuda-ops-compile"]
    budget = timing.Budget(540, used_s=100, clock=clock)  # a pip install took 100 s already
    assert budget.left() == pytest.approx(440)
    held = sum(config.TIMING[n].min_s for n in later if not config.TIMING[n].optional)
    timeout, why = budget.timeout("build", later)
    assert why == "" and timeout == pytest.approx(440 - held - config.MARGIN_S)
    # Capped steps never take more than their cap.
    timeout, _ = timing.Budget(10_000, clock=clock).timeout("cuda-tests", [])
    assert timeout == config.TIMING["cuda-tests"].cap_s
    # The last required step gets the rest; the optional one after it holds nothing back.
    clock.now += 200
    timeout, _ = budget.timeout("cuda-step", ["cuda-ops-compile"])
    assert timeout == pytest.approx(240 - config.MARGIN_S)
    # Too little left: skipped, with the reason.
    clock.now += 200
    timeout, why = budget.timeout("cuda-step", [])
    assert timeout is None
    assert "40 s of the 540 s budget left" in why and "cuda-step needs >= 90 s" in why


def test_one_shot_commands() -> None:
    assert timing._one_shot(["bash", "-c", "pip install . && python x.py"])
    assert timing._one_shot(["/bin/sh", "-ec", "x"])
    assert timing._one_shot(["bash", "--norc", "-lc", "x"])
    assert timing._one_shot(["timeout", "600", "bash", "-c", "x"])
    assert not timing._one_shot(["-bash"])  # a login shell
    assert not timing._one_shot(["bash", "script.sh", "-c"])
    assert not timing._one_shot(["python", "-c", "x"])
    assert not timing._one_shot([])


def test_budget_counts_from_the_enclosing_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `sh -c "pip install ...; python gpu_check.py"` the install counts against the
    budget: the age of the one-shot shell, when it is the parent."""
    shell = subprocess.Popen(["bash", "-c", "sleep 1.5; sleep 30; true"])
    try:
        time.sleep(1.6)
        real_age = timing._process_age
        monkeypatch.setattr(
            timing, "_process_age", lambda pid: 0.5 if pid == "self" else real_age(pid)
        )
        monkeypatch.setattr(timing.os, "getppid", lambda: shell.pid)
        age, what = timing.command_age()
        assert age >= 1.5 and what == f"bash -c, pid {shell.pid}"
        monkeypatch.setattr(timing.os, "getppid", lambda: 1)  # not a one-shot command
        assert timing.command_age() == (0.5, "this process")
        assert real_age(shell.pid) >= 1.5 and real_age("self") > 0
    finally:
        shell.kill()
        shell.wait()


def _gone(pid: int) -> bool:
    """Dead: no such process, or a zombie nobody has reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_a_subprocess_over_its_time_is_killed_and_reported(tmp_path: Path) -> None:
    log = tmp_path / "sleep.log"
    child = tmp_path / "child.pid"
    code = (  # the grandchild must go too: the whole process group is signalled
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(child)!r}, 'w').write(str(p.pid)); "
        "print('started', flush=True); time.sleep(60)"
    )
    start = time.monotonic()
    run = runner.run_logged([sys.executable, "-c", code], echo=False, log=log, timeout=2, grace=2)
    assert time.monotonic() - start < 20
    assert run.timed_out and run.rc != 0
    assert run.tail[0] == "started" and "timed out after 2 s" in run.tail[-1]
    assert "KeyboardInterrupt" in log.read_text()  # SIGINT first: Python says where it was
    time.sleep(0.5)
    assert _gone(int(child.read_text()))
    # One that ignores SIGINT gets SIGKILL after the grace period.
    stubborn = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)"
    run = runner.run_logged([sys.executable, "-c", stubborn], echo=False, timeout=1, grace=1)
    assert run.timed_out and run.rc == -9
    # In time: not timed out, the exit code as is.
    run = runner.run_logged([sys.executable, "-c", "print('hi'); raise SystemExit(3)"], echo=False,
                        timeout=60)  # fmt: skip
    assert (run.rc, run.tail, run.timed_out) == (3, ["hi"], False)
    assert runner.run_logged(["/nonexistent/tool"], echo=False).rc is None


# -- the simulated package set --------------------------------------------------------------


def test_import_blocker(tmp_path: Path) -> None:
    blocker = packages.write_import_blocker(tmp_path / "blocker")
    env = packages.blocked_env(dict(os.environ, PYTHONPATH="/some/where"), blocker)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(blocker), "/some/where"]
    code = (
        "import importlib.metadata, importlib.util, json\n"
        "assert importlib.util.find_spec('tomli_w') is None\n"
        "assert importlib.util.find_spec('torch_fidelity') is None\n"
        "try:\n    import tomli_w\nexcept ModuleNotFoundError as err:\n    print('blocked', err)\n"
        "try:\n    importlib.metadata.version('tomli-w')\n"
        "except importlib.metadata.PackageNotFoundError:\n    print('no distribution')\n"
        "import pytest\nprint('json', json.dumps([1]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "blocked No module named 'tomli_w'",
        "no distribution",
        "json [1]",
    ]
    # Without the blocker the package imports here (the test is meaningless otherwise).
    if importlib.util.find_spec("tomli_w") is not None:
        bare = subprocess.run([sys.executable, "-c", "import tomli_w"], timeout=60, check=False)
        assert bare.returncode == 0


# -- judging a rehearsed command ------------------------------------------------------------

NO_DRIVER = """Traceback (most recent call last):
  File "scripts/sanitizer_calls.py", line 36, in calls
    torch.cuda.init()
RuntimeError: Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU
"""


@pytest.mark.parametrize(
    ("output", "kind"),
    [
        (NO_DRIVER, "cuda-unavailable"),
        ("AssertionError: Torch not compiled with CUDA enabled", "cuda-unavailable"),
        ("RuntimeError: No CUDA GPUs are available", "cuda-unavailable"),
        ("torch.AcceleratorError: CUDA error: CUDA driver version is insufficient for CUDA "
         "runtime version", "cuda-unavailable"),
        ("ebjdat-bench: error: --device cuda: no CUDA GPU is visible", "cuda-unavailable"),
        ("NameError: name 'resuts' is not defined", "error"),
        ("ModuleNotFoundError: No module named 'tomli_w'", "error"),
        ("TypeError: sgld_step() got an unexpected keyword argument 'noise_sd'", "error"),
        ("TypeError: CUDA is not available, but this is a TypeError", "error"),
        ("ebjdat-bench: error: step: argument --variants: invalid choice: 'bf61' (see --help)",
         "error"),
        ("usage: x.py [-h]\nx.py: error: unrecognized arguments: --devise", "error"),
        ("some output\nand nothing else", "none"),
    ],
)  # fmt: skip
def test_cuda_availability_classifier(output: str, kind: str) -> None:
    lines = output.splitlines()
    assert parsing.classify_failure(lines)[0] == kind
    verdict, why = parsing.judge_cuda_stop(runner.Run(1, lines, 1.0))
    assert verdict is (kind == "cuda-unavailable"), why
    if verdict:
        assert why.startswith("reached the first CUDA call")


def test_a_cuda_command_must_stop_at_the_first_cuda_call() -> None:
    ok, why = parsing.judge_cuda_stop(runner.Run(0, ["all done"], 1.0))
    assert not ok and "without a GPU" in why  # it ran, so it never touched CUDA
    ok, why = parsing.judge_cuda_stop(runner.Run(-9, NO_DRIVER.splitlines(), 9.0, timed_out=True))
    assert not ok and "timed out" in why


# -- the build decision ---------------------------------------------------------------------


def test_rebuild_reason(tmp_path: Path) -> None:
    (tmp_path / "csrc").mkdir()
    source = tmp_path / "csrc" / "k.cu"
    source.write_text("")
    (tmp_path / "setup.py").write_text("")
    os.utime(source, (1000, 1000))
    os.utime(tmp_path / "setup.py", (1000, 1000))
    h200 = config.Gpu("H200", (9, 0))
    kernels = dict.fromkeys(["energy_head", "pgd_init", "pgd_step", "sgld_step"], True)
    fresh = {"build_info": {"kind": "cuda", "cuda_arch_list": "9.0+PTX"}, "loaded": True,
             "cuda_kernels": kernels, "so": "/x/_C.so", "so_mtime": 2000.0}  # fmt: skip
    assert build.rebuild_reason(fresh, h200, tmp_path) is None
    visible = dict(fresh, build_info={"kind": "cuda", "cuda_arch_list": "(visible GPU)"})
    assert build.rebuild_reason(visible, h200, tmp_path) is None  # pip install on that machine
    cases = [
        ({"error": "ebjdat does not import: boom"}, "boom"),
        (dict(fresh, loaded=False, reason="undefined symbol"), "undefined symbol"),
        (dict(fresh, build_info={"kind": "cpu"}), "a cpu build"),
        (dict(fresh, cuda_kernels=dict(kernels, pgd_step=False)), "no CUDA kernel for pgd_step"),
        (dict(fresh, build_info={"kind": "cuda", "cuda_arch_list": "8.0;8.6+PTX"}), "not 9.0"),
        (dict(fresh, so_mtime=500.0), "csrc/k.cu is newer"),
    ]
    for probe, expected in cases:
        assert expected in build.rebuild_reason(probe, h200, tmp_path)
    env = build.build_env(h200, None, "/usr/local/cuda")
    assert env["TORCH_CUDA_ARCH_LIST"] == "9.0" and env["EBJDAT_BUILD_CUDA"] == "1"
    assert env["MAX_JOBS"] == str(os.cpu_count())


def test_tree_copy_holds_what_a_device_machine_receives(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "csrc").mkdir(parents=True)
    for name, text in [("setup.py", "x"), ("csrc/a.cu", "a"), ("csrc/gone.h", "g"),
                       (".gitignore", "*.so\n")]:  # fmt: skip
        (repo / name).write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=repo, check=True)
    (repo / "csrc" / "gone.h").unlink()  # deleted in the working tree: left out
    (repo / "csrc" / "new.h").write_text("n")  # untracked, not ignored: copied
    (repo / "csrc" / "_C.so").write_text("")  # ignored: left out
    assert build.tree_files(repo) == [".gitignore", "csrc/a.cu", "csrc/new.h", "setup.py"]
    assert build.copy_tree(tmp_path / "copy", repo) == 4
    assert (tmp_path / "copy" / "csrc" / "new.h").read_text() == "n"


def test_wheel_contents(tmp_path: Path) -> None:
    assert not build.wheel_build(tmp_path)["ok"]
    with zipfile.ZipFile(tmp_path / "ebjdat-0.1.0-cp312-cp312-linux_x86_64.whl", "w") as zf:
        zf.writestr("ebjdat/_C.cpython-312-x86_64-linux-gnu.so", b"")
        zf.writestr(
            "ebjdat/_build_info.py",
            "\"\"\"x\"\"\"\n\nBUILD = {'kind': 'cuda', 'cuda_arch_list': '9.0'}\n",
        )
    wheel = build.wheel_build(tmp_path)
    assert wheel["ok"] and wheel["extension"] == "ebjdat/_C.cpython-312-x86_64-linux-gnu.so"
    assert wheel["build_info"] == {"kind": "cuda", "cuda_arch_list": "9.0"}


# -- the rehearsal itself -------------------------------------------------------------------


def _rehearse(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(GPU_CHECK), "--rehearse", "--budget-from", "now", "--out-dir",
         str(out), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="a rehearsal needs a machine without a GPU")
def test_rehearsal(tmp_path: Path) -> None:
    """The GPU-only code paths up to their first CUDA call, with the GPU machine's packages: the
    CUDA tests collected and skipped, the sanitizer's op calls (for real on CPU, up to the
    first CUDA call on cuda). (The benchmark commands are left out to keep this fast; the next
    test rehearses the step one.)"""
    proc = _rehearse(tmp_path, "--skip", "ops", "step", "scaling")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    (written,) = tmp_path.glob("rehearsal-h200-*.json")
    results = json.loads(written.read_text())
    assert results["kind"] == "rehearsal" and results["complete"] and results["ok"]
    timeline = {e["step"]: e for e in results["timeline"]}
    assert list(timeline) == ["build", "cuda-tests", "cuda-sanitizer"]
    assert all(e["status"] == "ok" for e in timeline.values()), timeline
    assert "every one skipped with a reason" in timeline["cuda-tests"]["note"]
    assert any(c["name"].startswith("tests/test_cuda.py::") for c in results["tests"]["cases"])
    runs = {r["backend"]: r for r in results["sanitizer"]["runs"]}
    assert set(runs) == {"cpu", "cuda"} and len(runs["cpu"]["calls"]) == 8
    assert runs["cuda"]["rehearsal"].startswith("reached the first CUDA call")
    assert results["versions"]["gpu"]["simulated"] is True
    assert (tmp_path / written.name.replace(".json", ".logs") / "cuda-tests.log").exists()
    assert "rehearsal summary" in proc.stdout and "rehearsal passed" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a rehearsal needs a machine without a GPU")
def test_rehearsal_fails_on_what_would_fail_on_the_gpu(tmp_path: Path) -> None:
    """The rehearsed step benchmark with a model name that does not parse: ebjdat-bench checks
    its flags before the device, so the command stops before any CUDA call, and the rehearsal
    fails the step, naming the model."""
    args = cli.parse_args(["--rehearse", "--step-models", "wrn-28-10", "wrn-28-1O"])
    env = packages.blocked_env(
        dict(os.environ), packages.write_import_blocker(tmp_path / "blocker")
    )
    ctx = steps.Context(args, config.REHEARSAL_GPU, tmp_path, True, env, None)
    info = bench_steps.step_step(ctx, 120)
    assert not info["ok"]
    assert info["rehearsal"].startswith("exit 2 before any CUDA call: ebjdat-bench: error: ")
    assert "but the models do not parse" in info["rehearsal"] and "wrn-28-1O" in info["rehearsal"]
    assert "--models wrn-28-10 wrn-28-1O --batch 64" in info["command"]


# -- the GPU-only branches, with stand-ins for the GPU tools ---------------------------------

FAKE_BENCH = r"""
import json, sys
args = sys.argv[1:]
out = args[args.index("--json") + 1]
copy = {"numel": 1 << 24, "bytes": 1 << 27, "median_s": 3e-5, "gbps": 4000.0}
def op_rows(impls):
    rows = []
    for op, shape, numel in [("sgld_step", [64, 3, 32, 32], 196608),
                             ("sgld_step", [16384, 1024], 1 << 24),
                             ("energy_head", [65536, 256], 1 << 24)]:
        for impl in impls:
            gbps = {"eager": 900.0, "compile": 2500.0, "fused": 3600.0}[impl]
            rows.append({"op": op, "shape": shape, "dtype": "float32", "impl": impl,
                         "median_s": 1e-5, "gbps": gbps, "numel": numel, "backend": "cuda",
                         "speedup_vs_eager": 4.0 if impl == "fused" else None,
                         "speedup_vs_compile": 1.4 if impl == "fused" and "compile" in impls
                         else None})
    return rows
phases = {"sgld": 0.1, "adversarial": 0.05, "loss_forward": 0.02, "loss_backward": 0.03,
          "optimizer": 0.001}
if args[0] == "ops":
    impls = ["eager", "compile", "fused"] if "--compile" in args else ["eager", "fused"]
    data = {"machine": {"copy": copy, "device": "cuda"}, "rows": op_rows(impls)}
elif "--nproc" in args:
    data = {"machine": {}, "rows": [{"model": "wrn-28-10", "processes": 2, "backend": "nccl",
            "batch_per_process": 64, "per_rank_median_s": [0.2, 0.21], "one_process_s": 0.2,
            "n_process_s": 0.21, "speedup": 1.9, "efficiency": 0.95}]}
else:
    model = args[args.index("--models") + 1]
    batch = int(args[args.index("--batch") + 1])
    data = {"machine": {}, "rows": [
        {"impl": impl, "model": model, "batch": batch, "median_s": t, "phases": phases,
         "flops": 1e12, "tflops": 1e12 / t / 1e12, "floor_s": 0.01, "x_floor": t / 0.01,
         "cifar10_epoch_min": 782 * t / 60}
        for impl, t in [("official", 0.9), ("ebjdat", 0.3), ("ebjdat+bf16", 0.2)]]}
json.dump(data, open(out, "w"))
print("fake ebjdat-bench", " ".join(args[:1]))
"""

FAKE_TESTS = """
import pytest
def test_kernel_matches():
    pass
@pytest.mark.skip(reason="needs torchattacks")
def test_attack():
    pass
def test_broken():
    assert 1 + 1 == 3, "arithmetic is off"
"""


def _fake_sanitizer(path: Path, errors: int) -> str:
    report = "========= Invalid __global__ read of size 4 bytes\n" if errors else ""
    path.write_text(
        "#!/bin/sh\n"
        "echo '========= COMPUTE-SANITIZER'\n"
        "echo 'call sgld_step: ok'\n"
        f"printf '{report}'\n"
        "echo 'all 1 calls ok (device cuda)'\n"
        f"echo '========= ERROR SUMMARY: {errors} errors'\n"
    )
    path.chmod(0o755)
    return str(path)


def _stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: bool) -> None:
    """A machine with two GPUs as main() sees it, everything after the build a stand-in: a
    fresh CUDA build, an ebjdat-bench writing canned results, a small test file for
    `pytest -m cuda`, a compute-sanitizer printing a canned report."""
    bench = tmp_path / "fake_bench.py"
    bench.write_text(FAKE_BENCH)
    tests = tmp_path / "faketests" / "test_fake.py"
    tests.parent.mkdir()
    tests.write_text(FAKE_TESTS if broken else FAKE_TESTS.split("def test_broken")[0])
    tool = _fake_sanitizer(tmp_path / "compute-sanitizer", errors=2 if broken else 0)
    kernels = dict.fromkeys(["energy_head", "pgd_init", "pgd_step", "sgld_step"], True)
    probe = {"build_info": {"kind": "cuda", "cuda_arch_list": "(visible GPU)"}, "loaded": True,
             "cuda_kernels": kernels, "so": "/x/_C.so", "so_mtime": time.time() + 1e6,
             "ebjdat": "0.1.0"}  # fmt: skip
    monkeypatch.setattr(main, "detect_gpu", lambda: config.Gpu("Fake H200", (9, 0), 2, 139.8))
    for module in (main, steps):  # where probe_installed is looked up
        monkeypatch.setattr(module, "probe_installed", lambda env, timeout=120: probe)
    for module in (cuda_tests, packages):  # where find_sanitizer is looked up
        monkeypatch.setattr(module, "find_sanitizer", lambda cuda_home: tool)
    monkeypatch.setattr(bench_steps, "_bench", lambda args: [sys.executable, str(bench), *args])
    monkeypatch.setattr(
        cuda_tests, "pytest_command",
        lambda xml: [sys.executable, "-m", "pytest", str(tests), "-q", "-p", "no:cacheprovider",
                     f"--junitxml={xml}"],
    )  # fmt: skip


@pytest.mark.parametrize("broken", [False, True], ids=["clean", "broken"])
def test_gpu_branches_with_stand_ins(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    broken: bool,
) -> None:
    """main() on the stand-ins: the real result handling, tables and summary of every step that
    a rehearsal cannot reach, for a clean run and for one with a failing test and sanitizer
    errors."""
    _stand_ins(tmp_path, monkeypatch, broken)
    out = tmp_path / "out"
    rc = main.main(["--out-dir", str(out), "--budget-from", "now"])
    printed = capsys.readouterr().out
    (written,) = out.glob("fake-h200-*.json")
    results = json.loads(written.read_text())
    assert results["complete"] and results["kind"] == "gpu"
    status = {e["step"]: e["status"] for e in results["timeline"]}
    order = ["build", "cuda-tests", "cuda-sanitizer", "cuda-ops", "cuda-step", "cuda-scaling",
             "cuda-ops-compile"]  # fmt: skip
    assert list(status) == order
    assert results["build"]["reused"] is True
    assert results["goal"]["met"] is True and "bandwidth goal met" in printed
    assert [r["impl"] for r in results["step"]["rows"]] == ["official", "ebjdat", "ebjdat+bf16"]
    assert "x official" in printed and "3.00" in printed  # 0.9 s / 0.3 s
    note = {e["step"]: e["note"] for e in results["timeline"]}["cuda-step"]
    assert note == "wrn-28-10 batch 64: ebjdat 3.00x official, ebjdat+bf16 4.50x official"
    assert results["scaling"]["rows"][0]["efficiency"] == 0.95
    assert "x compile" in printed
    cases = {c["name"].rsplit("::", 1)[-1]: c for c in results["tests"]["cases"]}
    assert cases["test_attack"]["reason"] == "needs torchattacks"
    if not broken:
        assert rc == 0 and results["ok"] and set(status.values()) == {"ok"}, status
        assert results["sanitizer"]["runs"][0]["errors"] == 0
        return
    assert rc == 1 and not results["ok"]
    assert status["cuda-tests"] == status["cuda-sanitizer"] == "FAILED"
    assert status["cuda-step"] == "ok"  # a failure earlier does not stop the later steps
    assert cases["test_broken"]["message"][0] == "AssertionError: arithmetic is off"
    assert [r["errors"] for r in results["sanitizer"]["runs"]] == [2]
    summary = printed[printed.index("== summary") :]
    assert "failed: " in summary and "test_broken" in summary and "arithmetic is off" in summary
    assert "Invalid __global__ read" in printed
    assert "GPU check FAILED" in summary


def test_gpu_branches_with_stand_ins_survive_a_bug_in_a_step(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bug in one step of gpu_check.py itself is recorded as that step's failure, with its
    traceback, and the later steps still run."""
    _stand_ins(tmp_path, monkeypatch, broken=False)

    def boom(ctx: object, timeout: float) -> dict:
        return {}["rows"]

    monkeypatch.setitem(main.STEPS, "cuda-ops", boom)
    assert main.main(["--out-dir", str(tmp_path / "out"), "--budget-from", "now"]) == 1
    (written,) = (tmp_path / "out").glob("fake-h200-*.json")
    results = json.loads(written.read_text())
    timeline = {e["step"]: e for e in results["timeline"]}
    assert timeline["cuda-ops"]["status"] == "FAILED"
    assert "gpu_check.py failed in this step: KeyError: 'rows'" in timeline["cuda-ops"]["note"]
    assert any("boom" in line for line in results["bench"]["traceback"])
    assert timeline["cuda-step"]["status"] == "ok" and results["complete"]
    assert "Traceback" in capsys.readouterr().out
