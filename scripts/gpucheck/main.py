"""The GPU check's main(): the plan, the versions, every step in order within the budget, the
results rewritten after each, and the summary last."""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from .bench_steps import (
    step_cpu_bench,
    step_note,
    step_ops,
    step_ops_compile,
    step_scaling,
    step_step,
)
from .build import find_cuda_home, probe_installed
from .cli import parse_args
from .config import (
    BLOCKED_IMPORTS,
    ORDER,
    REHEARSAL_GPU,
    RESULT_KEY,
    RESULTS,
    TAIL_LINES,
    TIMING,
    detect_gpu,
)
from .cuda_tests import step_sanitizer, step_tests
from .packages import (
    blocked_env,
    collect_versions,
    print_versions,
    versions_line,
    write_import_blocker,
)
from .parsing import final_error
from .plan import plan, results_name
from .runner import _banner, _num, _table
from .steps import Context, step_build
from .timing import Budget, command_age

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
            "gpu": None if gpu is None else gpu.describe(),
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
