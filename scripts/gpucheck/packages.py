"""The package set: the import blocker that simulates the GPU machine's (a sitecustomize.py
put first on PYTHONPATH), and the versions of everything the check runs on, collected and
printed."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .build import find_sanitizer, nvcc_version
from .config import BLOCKED_IMPORTS, Gpu
from .runner import _banner

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
        "gpu": None if gpu is None else {**gpu.describe(), "simulated": rehearse},
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
