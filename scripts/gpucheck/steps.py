"""What every step gets (Context: the arguments, the GPU, the environment, where logs go) and
the build step (step_build, and its rehearsal)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .build import (
    BUILD_ENV_KEYS,
    build_env,
    copy_tree,
    install_command,
    nvcc_version,
    probe_installed,
    rebuild_reason,
    wheel_build,
)
from .config import GRACE_S, Gpu
from .parsing import final_error, judge_cuda_stop
from .runner import Run, _cap_log, run_logged


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
