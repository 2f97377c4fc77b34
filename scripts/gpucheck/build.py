"""The build: the CUDA toolkit and compute-sanitizer found, the installed package probed in a
fresh process, whether it must be rebuilt for this GPU, the build's environment and command,
the tree a device machine receives copied, a built wheel read."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

from .config import ROOT, Gpu


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
