"""The benchmark steps, each with its ebjdat-bench command: cuda-ops (GB/s against the copy
bandwidth, judged against the goal), cuda-ops-compile, cuda-step (reduced), cuda-scaling and
the CPU smoke benchmark; their tables."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .config import GOAL_FRACTION, GOAL_NUMEL
from .parsing import final_error
from .runner import _banner, _num, _table
from .steps import Context, _failure, _rehearsed


def _bench(module_args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "ebjdat.cli.bench", *module_args]


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
