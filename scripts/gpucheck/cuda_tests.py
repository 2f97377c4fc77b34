"""The cuda-tests step (pytest -m cuda, a per-test table) and the cuda-sanitizer step
(compute-sanitizer memcheck over scripts/sanitizer_calls.py), each with its command."""

from __future__ import annotations

import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from .build import find_sanitizer
from .config import SANITIZER_CALLS
from .parsing import final_error, parse_junit, parse_sanitizer, parse_verbose, print_tests
from .runner import _banner, _table
from .steps import Context, _failure, _rehearsed


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
